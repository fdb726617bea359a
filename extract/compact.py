"""Statistics for compact storage (int8/int4): fitted on a sample of the corpus before the one teacher pass,
and the reconstruction error measured on held-out utterances, kept in the cache's provenance.

The sample is chosen by id hash (stable when the corpus grows), and a cache that already exists for the same
spec keeps its statistics: growing a corpus adds parts to the same cache instead of refitting into a new one.
"""

from __future__ import annotations

import hashlib
import sys

from extract.audio import load_audio
from store.modes import fidelity, fit_stats, stats_from_json
from store.spec import differences

FIT_UTTERANCES = 32  # ~20k frames of LibriSpeech: plenty for a mean and a std per channel
HELD_OUT = 16


def _by_hash(utts: list) -> list:
    return sorted(utts, key=lambda u: hashlib.sha1(u.uid.encode()).hexdigest())


def existing_stats(cache_root: str, spec: dict):
    """(stats, fidelity) of a cache that differs from `spec` only by its fitted statistics, or None.

    Reads each cache's root metadata only (not its index): this runs before every int8/int4 extraction."""
    import os

    from store import fs
    from store.reader import read_meta

    for name in fs.listdir(cache_root):
        try:
            meta = read_meta(os.path.join(cache_root, name))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a cache (or not readable): not ours to judge here
        stats = stats_from_json(meta.get("stats")) if isinstance(meta, dict) else None
        if stats and _only_stats_differ(meta["spec"], spec):
            return stats, meta.get("provenance", {}).get("fidelity")
    return None


def _only_stats_differ(a: dict, b: dict) -> bool:
    def strip(s: dict) -> dict:
        return {k: v for k, v in s.items() if k != "storage_stats"}

    return not differences(strip(a), strip(b), layer_subset=False)


def fit_and_measure(teacher, utts: list, layers: list[int], mode: str) -> tuple[dict, dict]:
    """One teacher forward per sampled utterance: statistics from the first FIT_UTTERANCES, error on the next HELD_OUT."""
    sample = _by_hash(utts)[: FIT_UTTERANCES + HELD_OUT]
    fit, held = sample[:FIT_UTTERANCES], sample[FIT_UTTERANCES:] or sample[:FIT_UTTERANCES]
    print(f"fitting {mode} statistics on {len(fit)} utterances, measuring on {len(held)} held out", file=sys.stderr)
    feats = {u.uid: teacher.forward([load_audio(u.path, teacher.sample_rate)], layers, dtype="float32")[0] for u in sample}
    stats = {k: fit_stats([feats[u.uid][k] for u in fit]) for k in layers}
    measured = {str(k): fidelity(mode, stats[k], [feats[u.uid][k] for u in held]) for k in layers}
    return stats, {"held_out_utterances": len(sample) - len(fit), "measured_on": len(held), "layers": measured}
