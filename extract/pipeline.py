"""One part, end to end: decode (threads) → exact batched teacher forward → write (a thread).

The three stages overlap: decoding runs ahead by a few batches and writing trails by one, so
the teacher waits on neither.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import soundfile as sf

from extract.audio import load_audio
from extract.batching import plan_batches
from extract.corpus import PlanItem
from extract.errors import ExtractError
from extract.teacher import Teacher
from store import Layout, PartWriter
from store.modes import STORABLE_MAX, TARGET_MODES
from store.reader import read_meta, read_stats
from store.source_files import Clock, file_sha256_at, fs_clock, source_record, unchanged_since

LOOKAHEAD = 3  # batches decoded ahead of the teacher
GPU_BATCH_SECONDS = 200.0  # padded audio per batch on a GPU


def auto_batch_seconds(value: float | None, teacher: Teacher) -> float:
    """None: 200 s on a GPU; 0 (one utterance per forward) on a CPU, where batching was measured
    1.5x slower than single utterances (bigger activations, padding; docs/benchmarks.md)."""
    if value is not None:
        return value
    return GPU_BATCH_SECONDS if teacher.device.type == "cuda" else 0.0


def decode_item(teacher: Teacher, item: PlanItem, clock: Clock = time.time_ns) -> tuple[np.ndarray, dict] | str:
    """(wave, source record), or the reason the utterance cannot be used.

    The file is hashed for the commit marker (a changed file is noticed later; once per process for the segments
    of one recording), its window decoded alone, and the file must be the same one (inode, size, mtime, ctime)
    after decoding as when hashed: the hash is of what the teacher heard. `clock`: when the hash began, for the record
    (the cache's file system's: store.source_files.fs_clock)."""
    path, window = item.path, item.window
    try:
        st, digest, taken = file_sha256_at(path, clock)
        info = sf.info(path)  # recorded: a re-run recognises the file from its stat and reads no header (extract.corpus.scan)
        wave = load_audio(path, teacher.sample_rate, window["start"], window["samples"], window["channel"])
        if not unchanged_since(path, st):
            return "changed while being read; re-run extract-features"
    except Exception as e:  # noqa: BLE001 - corrupt files raise many types; they become a reason
        return f"cannot decode ({str(e).splitlines()[0][:120]})"
    if len(wave) < teacher.window:
        return f"too short: {len(wave)} samples at {teacher.sample_rate} Hz, the teacher needs at least {teacher.window}"
    if not np.isfinite(wave).all():
        return "contains NaN or infinite samples"
    return wave, source_record(path, st, digest, window, (int(info.samplerate), int(info.frames), int(info.channels)), taken)


def _skip(uid: str, path: str, reason: str) -> dict:
    """A skipped file, with what it was when skipped: it is retried once it changes."""
    try:
        st = os.stat(path)
        return {"uid": uid, "path": path, "reason": reason, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    except OSError:
        return {"uid": uid, "path": path, "reason": reason}


def extract_part(cache: str, part: dict, teacher: Teacher, spec: dict, layout: Layout, batch_seconds: float | None,
                 on_error: str = "fail", on_batch: Callable[[int, int], None] | None = None,
                 decode_threads: int = 4) -> dict:
    """Write and commit one planned part; returns its commit marker."""
    items = part["items"]
    layers = spec["layers"]
    stats = read_stats(cache, read_meta(cache)) if TARGET_MODES[spec["storage_dtype"]].needs_stats else None
    writer = PartWriter(cache, part["name"], layers, spec["dim"], spec["storage_dtype"], layout, stats, spec.get("audio", "float32"),
                        part.get("corpus"))
    batches = plan_batches([it.samples for it in items], int(auto_batch_seconds(batch_seconds, teacher) * teacher.sample_rate))
    skipped: list[dict] = []
    paths = {it.uid: it.path for it in items}
    clock = fs_clock(cache)
    with ThreadPoolExecutor(decode_threads) as decoders, ThreadPoolExecutor(1) as write_thread:
        ahead: deque[list[Future]] = deque()
        writes: deque[Future] = deque()
        try:
            for b in range(len(batches)):
                while len(ahead) < LOOKAHEAD and b + len(ahead) < len(batches):
                    ahead.append([decoders.submit(decode_item, teacher, items[i], clock) for i in batches[b + len(ahead)]])
                decoded = [f.result() for f in ahead.popleft()]
                good = []
                for i, res in zip(batches[b], decoded, strict=True):
                    if isinstance(res, str):
                        if on_error != "skip":
                            raise ExtractError(f"{items[i][1]}: {res} (use --on-error skip to cache the rest)")
                        skipped.append(_skip(items[i][0], items[i][1], res))
                    else:
                        good.append((items[i][0], *res))
                feats = teacher.forward([w for _, w, _ in good], layers) if good else []
                good, feats = _finite_only(good, feats, on_error, skipped, paths, spec["storage_dtype"])
                writes.append(write_thread.submit(_write_batch, writer, good, feats))
                while len(writes) > 1:
                    writes.popleft().result()  # surfaces a write error (disk full) promptly
                if on_batch:
                    on_batch(len(batches[b]), sum(items[i][2] for i in batches[b]))
            while writes:
                writes.popleft().result()
        except BaseException:
            for f in writes:
                f.cancel()
            write_thread.shutdown(wait=True)
            writer.abort()
            raise
    return writer.commit(skipped)


def _finite_only(good: list, feats: list[dict], on_error: str, skipped: list[dict], paths: dict[str, str],
                 storage: str = "float32") -> tuple[list, list]:
    """Refuse non-finite targets per utterance (fp16 overflow, NaN from bf16 compute), and targets the storage dtype
    cannot hold (|x| > 65504 in float16 becomes inf): never stored silently."""
    limit = STORABLE_MAX.get(storage)
    keep_good, keep_feats = [], []
    for (uid, wave, record), f in zip(good, feats, strict=True):
        bad = [k for k, x in f.items() if not np.isfinite(x).all()]
        big = [k for k, x in f.items() if limit and not bad and np.abs(x).max() > limit]
        if not bad and not big:
            keep_good.append((uid, wave, record))
            keep_feats.append(f)
            continue
        reason = (f"the teacher's layer {bad[0]} output is not finite (NaN or inf; with --dtype float16 an overflow: "
                  "try --dtype bfloat16 or float32)" if bad else
                  f"the teacher's layer {big[0]} output reaches {np.abs(f[big[0]]).max():.3g}, beyond what --storage {storage} "
                  f"holds ({limit:g}); store as bfloat16 or float32")
        if on_error != "skip":
            raise ExtractError(f"{paths[uid]}: {reason} (use --on-error skip to cache the rest)")
        skipped.append(_skip(uid, paths[uid], reason))
    return keep_good, keep_feats


def _write_batch(writer: PartWriter, good: list[tuple[str, np.ndarray, dict]], feats: list[dict]) -> None:
    for (uid, wave, record), f in zip(good, feats, strict=True):
        writer.add(uid, f, wave, record)
