"""Know before you run: what an extraction will do, how big its cache gets and how long it takes, before any teacher
work (`extract-features --dry-run`, and the first line of every run).

Sizes per storage mode are the bytes before the codec (rows x width x dtype, audio samples x bytes), which the codecs
then shrink a little (fp16 targets by about 10% with blosc-zstd, docs/benchmarks.md). What the run is checked against
is a true upper bound of the disk it takes (disk_bound): padded edge chunks, the codec's worst case, crc32c, shard
indexes, zarr.json files, markers and the consolidated index, every file and directory rounded up to the filesystem's
block, so a refusal for lack of space is never a false "it fits". The ETA comes from one timed forward of 10 s of audio.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from store import fs
from store.audio_modes import AUDIO_MODES
from store.layout import index_path, sources_path
from store.modes import TARGET_MODES
from store.registry import human_bytes

AUDIO_BYTES = {"float32": 4, "int16": 2, "flac": 2, "none": 0}  # per sample, before the codec (FLAC: at most int16's)


def row_bytes(storage: str, dim: int) -> int:
    """Bytes of one frame of one layer in `storage`."""
    return sum(width * np.dtype(spec.dtype).itemsize for spec, width in TARGET_MODES[storage].arrays(dim).values())


def sizes(frames: int, samples: int, layers: int, dim: int) -> dict:
    """Expected bytes of every storage and audio mode for these frames and samples."""
    return {"targets": {m: frames * layers * row_bytes(m, dim) for m in TARGET_MODES},
            "audio": {m: samples * AUDIO_BYTES[m] for m in AUDIO_MODES}}


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def _worst_codec(raw: int) -> int:
    """The most one chunk of `raw` bytes can take encoded, with zarr's 4-byte crc32c: at least zstd's compressBound
    (raw + raw/256, plus at most 64 bytes for inputs under 128 KB) and blosc's raw + 16 (it stores incompressible
    data as is)."""
    return raw + (raw >> 8) + 128 + 4


def _array_bound(rows: int, row_bytes: int, chunk: int, shard: int, ndim: int, block: int) -> int:
    """Disk for one zarr array of `rows` rows written as store.chunks writes it: whole padded chunks, each shard with its
    index (16 bytes per chunk + crc32c), one file per shard, zarr.json, the array's directories."""
    total = 3 * block  # zarr.json (~1 KB), the array's directory and its c/ directory
    for first in range(0, rows, shard):
        chunks = _ceil(min(shard, rows - first), chunk)
        total += _ceil(chunks * _worst_codec(chunk * row_bytes) + (shard // chunk) * 16 + 4, block) * block
        total += block if ndim == 2 else 0  # c/<i>/ of a 2-D array
    return total


def _json_bound(uid: str, path: str) -> int:
    """The most one utterance adds to a JSON file (marker, group attributes, index.json, sources.npz, plan.json): its id
    (twice: ids, recordings), path, and a source record of fixed keys whose numbers have at most 20 digits."""
    return 1024 + 4 * len(uid.encode()) + 2 * len(path.encode())


def disk_bound(parts: list[list], spec: dict, layout, frames, block: int, consolidated: int = 0) -> int:
    """A true upper bound of the disk an extraction of `parts` (lists of PlanItem) takes; `frames(samples)` the teacher's
    frame count. `consolidated`: the bytes of the cache's index.json + sources.npz now (a consolidation writes the new
    ones beside them before the rename)."""
    from store.modes import part_arrays

    audio = spec.get("audio", "float32")
    arrays = part_arrays(spec["layers"], spec["dim"], spec["storage_dtype"], audio, layout)
    total, meta = 0, 0
    for items in parts:
        n_frames, n_samples = sum(frames(it.samples) for it in items), sum(it.samples for it in items)
        for key, (dtype, tail, chunk, shard) in arrays.items():
            rows = n_samples if key == "audio" else n_frames
            total += _array_bound(rows, int(np.prod(tail or (1,))) * np.dtype(dtype).itemsize, chunk, shard, 1 + len(tail), block)
        if audio == "flac":  # at most verbatim int16 plus frame headers, one file each, in their own directory
            total += block + sum(_ceil(2 * it.samples + it.samples // 64 + 8192, block) * block for it in items)
        json_bytes = sum(_json_bound(it.uid, it.path) for it in items)
        meta += json_bytes
        total += 2 * block + 2 * (_ceil(json_bytes, block) + 1) * block  # attempt dir + lease; group zarr.json, marker
    stats = len(spec["layers"]) * (256 * spec["dim"] * 4 + 64 * spec["dim"]) if TARGET_MODES[spec["storage_dtype"]].needs_stats else 0
    # index.json + sources.npz (+ plan.json), each written beside its old copy first; checked.json and commits/ entries
    return total + stats + 2 * (consolidated + 3 * meta) + 6 * block + len(parts) * 256


def block_size(root: str) -> int:
    """The filesystem's allocation unit under `root` (4 KiB where it cannot be known: object stores)."""
    if fs.is_remote(root):
        return 4096
    path = os.path.abspath(root)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return max(512, os.statvfs(path).f_frsize or 4096)


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


def forecast(teacher, spec: dict, utts: list, cache_root: str, part_seconds: float, fingerprint: str | None, layout,
             cache=None) -> dict:
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
            **todo_figures(teacher, spec, group_parts(todo, rate, part_seconds), layout, cache_root, cache),
            "free_bytes": free_bytes(cache_root)}


def todo_figures(teacher, spec: dict, parts: list[list], layout, cache_root: str, cache=None) -> dict:
    """What is left to extract (`parts`: lists of PlanItem, at the teacher's rate), its size per mode before the codec
    and the upper bound of the disk it takes (need_bytes)."""
    samples = [it.samples for items in parts for it in items]
    frames = sum(teacher.num_frames(n) for n in samples)
    expected = sizes(frames, sum(samples), len(spec["layers"]), spec["dim"])
    consolidated = 0
    if cache is not None and not fs.is_remote(cache.path):
        consolidated = sum(os.path.getsize(p) for p in (index_path(cache.path), sources_path(cache.path)) if os.path.exists(p))
    need = disk_bound(parts, spec, layout, teacher.num_frames, block_size(cache_root), consolidated) if parts else 0
    return {"todo_utterances": len(samples), "todo_hours": round(sum(samples) / teacher.sample_rate / 3600, 4), "todo_frames": frames,
            "parts": len(parts), "expected_bytes": expected, "need_bytes": need}


def first_line(f: dict) -> str:
    where = f["cache"] or "a new cache (its statistics are fitted first)"
    state = f"existing, {f['cached_utterances']} utterances cached" if f["exists"] else "new"
    free = "" if f["free_bytes"] is None else f"; {human_bytes(f['free_bytes'])} free"
    return (f"{where} ({state}): {f['todo_utterances']} of {f['utterances']} utterances to extract ({f['todo_hours']:.3f} h) "
            f"in {f['parts']} part(s), at most {human_bytes(f['need_bytes'])} on disk{free}")


def check_space(f: dict, cache_root: str, storage: str, audio: str) -> None:
    from extract.errors import ExtractError

    if f["free_bytes"] is not None and f["need_bytes"] > f["free_bytes"]:
        t = f["expected_bytes"]
        need, free = human_bytes(f["need_bytes"]), human_bytes(f["free_bytes"])
        raise ExtractError(f"--cache-dir {cache_root}: this extraction needs about {need} ({storage} targets "
                           f"{human_bytes(t['targets'][storage])}, {audio} audio {human_bytes(t['audio'][audio])}) but {free} is free; "
                           "free space, choose another --cache-dir, or smaller storage (int8 targets: "
                           f"{human_bytes(t['targets']['int8'])}, --audio none)")
