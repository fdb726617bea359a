"""Know before you run: what an extraction will do, how big its cache gets and how long it takes, before any teacher
work (`extract-features --dry-run`, and the first line of every run).

Sizes are the bytes before the codec (rows x width x dtype, audio samples x bytes), which the codecs then shrink a
little (fp16 targets by about 10% with blosc-zstd, docs/benchmarks.md): an upper bound, so a refusal for lack of
space is never a false "it fits". The ETA comes from one timed forward of 10 s of audio on the chosen device.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from store import fs
from store.modes import AUDIO_MODES, TARGET_MODES
from store.registry import human_bytes

AUDIO_BYTES = {"float32": 4, "int16": 2, "flac": 2, "none": 0}  # per sample, before the codec (FLAC: at most int16's)


def row_bytes(storage: str, dim: int) -> int:
    """Bytes of one frame of one layer in `storage`."""
    return sum(width * np.dtype(spec.dtype).itemsize for spec, width in TARGET_MODES[storage].arrays(dim).values())


def sizes(frames: int, samples: int, layers: int, dim: int) -> dict:
    """Expected bytes of every storage and audio mode for these frames and samples."""
    return {"targets": {m: frames * layers * row_bytes(m, dim) for m in TARGET_MODES},
            "audio": {m: samples * AUDIO_BYTES[m] for m in AUDIO_MODES}}


def free_bytes(root: str) -> int | None:
    """Free space under the cache root (its nearest existing parent); None on object stores, which have no such limit."""
    if fs.is_remote(root):
        return None
    path = os.path.abspath(root)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def seconds_per_audio_second(teacher, layers: list[int], seconds: float = 10.0) -> float:
    """One warm-up and one timed forward of `seconds` of noise: the teacher's speed on this device."""
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * teacher.sample_rate))).astype(np.float32)
    teacher.forward([wave[: teacher.sample_rate]], layers)
    t = time.perf_counter()
    teacher.forward([wave], layers)
    return (time.perf_counter() - t) / seconds


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def forecast(teacher, spec: dict, utts: list, cache_root: str, part_seconds: float, fingerprint: str | None, cache=None) -> dict:
    """What an extraction of `utts` into the cache of `spec` under `cache_root` will do, writing nothing. `cache`: the
    existing cache of that spec, opened (None: there is none yet). `fingerprint` None: a compact cache whose
    statistics are not fitted yet (new)."""
    from extract.plan import group_parts

    path = os.path.join(cache_root, fingerprint) if fingerprint else None
    rate = teacher.sample_rate
    todo = [u for u in utts if cache is None or u.uid not in cache]
    return {"cache": path, "exists": cache is not None, "cached_utterances": len(cache) if cache else 0,
            "utterances": len(utts), "windows": sum(1 for u in utts if not u.whole),
            "hours": round(sum(u.samples_at(rate) for u in utts) / rate / 3600, 4),
            **todo_figures(teacher, spec, [u.samples_at(rate) for u in todo], len(group_parts(todo, rate, part_seconds))),
            "free_bytes": free_bytes(cache_root)}


def todo_figures(teacher, spec: dict, samples: list[int], parts: int) -> dict:
    """What is left to extract (utterances of `samples` at the teacher's rate, in `parts` parts) and its size."""
    frames = sum(teacher.num_frames(n) for n in samples)
    expected = sizes(frames, sum(samples), len(spec["layers"]), spec["dim"])
    need = expected["targets"][spec["storage_dtype"]] + expected["audio"][spec.get("audio", "float32")]
    return {"todo_utterances": len(samples), "todo_hours": round(sum(samples) / teacher.sample_rate / 3600, 4), "todo_frames": frames,
            "parts": parts, "expected_bytes": expected, "need_bytes": need}


def first_line(f: dict) -> str:
    where = f["cache"] or "a new cache (its statistics are fitted first)"
    state = f"existing, {f['cached_utterances']} utterances cached" if f["exists"] else "new"
    free = "" if f["free_bytes"] is None else f"; {human_bytes(f['free_bytes'])} free"
    return (f"{where} ({state}): {f['todo_utterances']} of {f['utterances']} utterances to extract ({f['todo_hours']:.3f} h) "
            f"in {f['parts']} part(s), about {human_bytes(f['need_bytes'])} before the codec{free}")


def check_space(f: dict, cache_root: str, storage: str, audio: str) -> None:
    from extract.errors import ExtractError

    if f["free_bytes"] is not None and f["need_bytes"] > f["free_bytes"]:
        t = f["expected_bytes"]
        need, free = human_bytes(f["need_bytes"]), human_bytes(f["free_bytes"])
        raise ExtractError(f"--cache-dir {cache_root}: this extraction needs about {need} ({storage} targets "
                           f"{human_bytes(t['targets'][storage])}, {audio} audio {human_bytes(t['audio'][audio])}) but {free} is free; "
                           "free space, choose another --cache-dir, or smaller storage (int8 targets: "
                           f"{human_bytes(t['targets']['int8'])}, --audio none)")
