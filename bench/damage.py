"""The quality bench's positive control: a cache whose targets are deliberately wrong, so a student distilled from it
must come out worse. A bench that cannot separate it from the float16 student cannot rule on storage either.

The damage: every utterance's targets are another utterance's (a fixed derangement of the ids), tiled or cut to its
own frame count. Each target is still a real target of this teacher, at its scale and statistics, so nothing but
the pairing of audio and target is wrong: what a student learns from the pairing is what the control removes.
Written as a derived cache (spec `derived_from` = {source, "bench.damage.shuffled@1"}): its own fingerprint, never
found by `--cache` for the source's spec, and `feature-cache rm` takes it like any cache.
"""

from __future__ import annotations

import os

import numpy as np

TRANSFORM = "bench.damage.shuffled@1"


def derangement(ids: list[str], seed: int = 0) -> dict[str, str]:
    """uid -> the uid whose targets it gets: a cyclic shift of a seeded shuffle, so no utterance keeps its own."""
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return {u: order[(i + 1) % len(order)] for i, u in enumerate(order)}


def fitted(x: np.ndarray, frames: int) -> np.ndarray:
    """x's rows tiled (or cut) to `frames` rows."""
    return np.resize(x, (frames, x.shape[1])) if len(x) != frames else x


def shuffled_cache(src_path: str, cache_dir: str | None = None, seed: int = 0):
    """The derived cache of `src_path` (a float mode) with shuffled targets; made once (its parts are skipped when
    committed), returns the opened cache."""
    from store import Cache, create_cache
    from store.convert import write_derived

    src = Cache(src_path)
    if src.mode.needs_stats:
        raise SystemExit(f"{src_path}: the damage control is made from a float cache (it is {src.spec['storage_dtype']})")
    spec = {**src.spec, "derived_from": {"fingerprint": src.fingerprint, "transform": TRANSFORM, "seed": seed}}
    dst = Cache(create_cache(cache_dir or os.path.dirname(src.path), spec, {**src.provenance, "derived_from": src.path}, src.layout))
    partner = derangement(sorted(src.utterance_ids), seed)
    return write_derived(src, dst, None, dst.audio_mode, lambda uid: {
        k: fitted(src.read(partner[uid], k).astype(np.float32), src.num_frames(uid)) for k in dst.layers})
