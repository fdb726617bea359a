"""Statistics for compact storage (int8/int4): fitted on a sample of the corpus before the one teacher pass,
and the reconstruction error measured on held-out utterances, kept in the cache's provenance.

The sample is chosen by id hash (stable when the corpus grows), and a cache that already exists for the same
spec keeps its statistics: growing a corpus adds parts to the same cache instead of refitting into a new one.
"""

from __future__ import annotations

import os
import sys

from extract.errors import ExtractError
from extract.pipeline import decode_item
from store import fs
from store.fidelity import finite_stats, fit_and_measure, stats_sample
from store.modes import TARGET_MODES
from store.reader import read_meta, read_stats
from store.spec import differences


def existing_stats(cache_root: str, spec: dict):
    """(stats, fidelity) of a cache that differs from `spec` only by its fitted statistics, or None.

    Reads each cache's root metadata only (not its index): this runs before every int8/int4 extraction."""
    for name in fs.listdir(cache_root):
        try:
            meta = read_meta(os.path.join(cache_root, name))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a cache (or not readable): not ours to judge here
        if isinstance(meta, dict) and meta.get("stats") and _only_stats_differ(meta["spec"], spec):
            stats = read_stats(os.path.join(cache_root, name), meta)
            if not finite_stats(stats):  # poisoned by an older distilcache: never code new rows with them, refit
                print(f"{os.path.join(cache_root, name)}: its {spec['storage_dtype']} statistics are not finite; fitting new ones "
                      "(remove that cache with feature-cache rm)", file=sys.stderr)
                continue
            return stats, meta.get("provenance", {}).get("fidelity")
    return None


def _only_stats_differ(a: dict, b: dict) -> bool:
    def strip(s: dict) -> dict:
        return {k: v for k, v in s.items() if k != "storage_stats"}

    return not differences(strip(a), strip(b), layer_subset=False)


def fit_with_teacher(teacher, utts: list, layers: list[int], mode: str) -> tuple[dict, dict]:
    """One fp32 teacher forward per sampled utterance (store.fidelity.stats_sample), then store.fidelity.fit_and_measure."""
    by_id = {u.uid: u for u in utts}
    fit, held = stats_sample(list(by_id))
    frames = sum(teacher.num_frames(by_id[u].samples_at(teacher.sample_rate)) for u in fit)
    need = getattr(TARGET_MODES[mode], "CENTROIDS", 0)
    if frames < need:  # known from the headers: say so before any teacher work
        raise ExtractError(f"--storage {mode} fits {need} centroids per channel group, but the fitting sample holds {frames} frames; "
                           f"use a corpus of more than {need * 0.02:.0f} s of audio, or int8")
    print(f"fitting {mode} statistics on {len(fit)} utterances, measuring on {len(held) or len(fit)}"
          f"{' held out' if held else ' of them (too few to hold any out)'}", file=sys.stderr)

    def features(uid: str) -> dict | None:
        """The utterance's exact targets, or None where the pipeline would skip it (the same check: decode_item)."""
        u = by_id[uid]
        decoded = decode_item(teacher, u.item(teacher.sample_rate))
        return None if isinstance(decoded, str) else teacher.forward([decoded[0]], layers, dtype="float32")[0]

    return fit_and_measure(mode, layers, list(by_id), features)
