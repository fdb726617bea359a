"""Derived caches: another storage mode from an existing cache, without running the teacher again.

The derived cache's identity chains onto its source's, like datasets' fingerprints: its spec is the
source's with the new modes, plus `derived_from` = {source fingerprint, transform name@version}. Parts
keep their source's utterances and so their names: a killed conversion resumes where it stopped.
"""

from __future__ import annotations

import os

import numpy as np

from store.audio_modes import AUDIO_MODES
from store.errors import CacheError
from store.fidelity import fit_and_measure
from store.index import consolidate
from store.layout import plan_path, write_json_atomic
from store.lock import exclusive
from store.modes import TARGET_MODES, stats_digest
from store.reader import Cache
from store.writer import PartWriter, create_cache

TRANSFORM = "convert@1"  # bump when the bytes a conversion writes for the same arguments would change


def check_convertible(src: Cache, storage: str, audio: str | None, layers: list[int] | None = None) -> str:
    """The audio mode the derived cache gets, or one line saying why `src` cannot give it (before any progress bar)."""
    audio = audio or src.audio_mode
    missing = sorted(set(layers or ()) - set(src.layers))
    if missing:
        raise CacheError(f"--layers {','.join(map(str, layers))}: {src.path} has layers {','.join(map(str, src.layers))}, not "
                         f"{','.join(map(str, missing))}; choose among them")
    if storage not in TARGET_MODES or audio not in AUDIO_MODES:
        raise CacheError(f"--storage {storage} / --audio {audio}: choose from {', '.join(TARGET_MODES)} and {', '.join(AUDIO_MODES)}")
    if src.audio_mode == "none" and audio != "none":
        raise CacheError(f"{src.path}: keeps no audio (--audio none), so it cannot give --audio {audio}; convert its targets with "
                         "--audio none, or re-extract with --audio " + audio)
    if src.pending()["parts"]:
        raise CacheError(f"{src.path}: its extraction is unfinished; finish it with extract-features, then convert")
    return audio


def convert_cache(src_path: str, storage: str, audio: str | None = None, cache_dir: str | None = None, progress=None,
                  layers: list[int] | None = None) -> Cache:
    """Write (or finish) the cache derived from `src_path` with targets as `storage` and audio as `audio`; `layers`: only
    those of the source's (a 13-layer --layers all cache converted for a student that trains on 3 fits and stores 3)."""
    src = Cache(src_path)
    audio = check_convertible(src, storage, audio, layers)
    keep = sorted(set(layers)) if layers else list(src.layers)
    spec = {k: v for k, v in src.spec.items() if k != "storage_stats"} | {"storage_dtype": storage, "audio": audio, "layers": keep}
    spec["derived_from"] = {"fingerprint": src.fingerprint, "transform": TRANSFORM}  # the layers are in the spec itself
    stats, measured = None, None
    if TARGET_MODES[storage].needs_stats:
        stats, measured = fit_and_measure(storage, keep, src.utterance_ids,
                                          lambda u: {k: src.read(u, k).astype(np.float32) for k in keep})
        measured["against"] = f"source cache {src.fingerprint} ({src.spec['storage_dtype']})"
        spec["storage_stats"] = stats_digest(stats)
    provenance = {**src.provenance, "derived_from": src.path, "fidelity": measured}
    dst = Cache(create_cache(cache_dir or os.path.dirname(src.path), spec, provenance, src.layout, stats))
    return write_derived(src, dst, stats, audio, progress=progress)


def write_derived(src: Cache, dst: Cache, stats: dict | None, audio: str, targets=None, progress=None) -> Cache:
    """Write (or finish) `dst`, a cache derived from `src` part by part (the source's part names: same utterances, same
    name), under its lock; `targets(uid)` gives each utterance's {layer: float32 rows} (default: the source's own).
    Returns `dst` refreshed."""
    targets = targets or (lambda uid: {k: src.read(uid, k).astype(np.float32) for k in dst.layers})
    with exclusive(dst.path):
        dst.refresh()
        parts = src.ids_by_part()
        # what this conversion will commit, before it commits any: a killed conversion is unfinished, never complete
        write_json_atomic(plan_path(dst.path), {"parts": [{"name": p, "utterances": len(ids)} for p, ids in parts.items()],
                                                "skipped": src.plan()["skipped"]})
        for part, ids in parts.items():
            if part not in dst.part_dirs:
                _convert_part(src, dst, part, ids, stats, audio, targets)
            if progress:
                progress(part)
        consolidate(dst.path)
    dst.refresh()
    return dst


def _convert_part(src: Cache, dst: Cache, name: str, ids: list[str], stats: dict | None, audio: str, targets) -> None:
    writer = PartWriter(dst.path, name, dst.layers, src.spec["dim"], dst.spec["storage_dtype"], dst.layout, stats, audio,
                        src.part_corpus.get(name))
    try:
        for uid in ids:
            wave = src.read_audio(uid) if src.audio_mode != "none" else None  # none: the sources stay the audio
            writer.add(uid, targets(uid), wave, src.source(uid), src.num_samples(uid))
    except BaseException:
        writer.abort()
        raise
    writer.commit()
