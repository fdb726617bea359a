"""Training data: random frame-aligned crops with their cached targets, in length-bucketed batches.

Every random choice is a function of (seed, epoch, index), so the data a step sees does not
depend on the number of loader workers, and a resumed run sees exactly what it would have.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from store import Cache, fs

#: The student sees crops of the waveform exactly as cached (before any teacher-side normalisation);
#: its exported preprocessor_config.json says so (train.export.student).
STUDENT_INPUT_NORMALIZED = False


def crop_start(n_samples: int, max_samples: int, hop: int, rng: np.random.Generator) -> int:
    """A frame index k: the crop starts at sample hop*k, so its targets start at frame k (DESIGN invariant 2)."""
    if n_samples <= max_samples:
        return 0
    return int(rng.integers(0, (n_samples - max_samples) // hop + 1))


def split_ids(ids: list[str], valid_fraction: float, recording=None, fallback: bool = True) -> tuple[list[str], list[str]]:
    """Deterministic held-out split by the hash of each id's recording (`recording(uid)`; default: the id itself):
    a pure function of the recording id, so stable when the cache grows, and the segments of one recording never
    straddle it (no train/held-out leakage). `fallback`: a small set whose hashes all miss the fraction holds out its
    lowest-hash recording; that one depends on the set, so a set that grows during a run (--follow) goes without."""
    def bucket(key: str) -> float:
        return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32

    group = {u: recording(u) for u in ids} if recording else {u: u for u in ids}
    buckets = {g: bucket(g) for g in set(group.values())}
    held_groups = {g for g, b in buckets.items() if b < valid_fraction}
    if fallback and valid_fraction > 0 and not held_groups and len(buckets) > 1:
        held_groups = {min(buckets, key=buckets.__getitem__)}
    valid = [u for u in ids if group[u] in held_groups]  # sets, not lists: a list per id made this quadratic
    train = [u for u in ids if group[u] not in held_groups]
    return train, valid


class CachedCrops(Dataset):
    """Items are (epoch, index) pairs from BucketBatches; returns (wave, targets [N, F, D])."""

    def __init__(self, cache: Cache, ids: list[str], layers: list[int], max_samples: int, seed: int, random_crop: bool = True,
                 ship_stored: bool = True):
        self.cache, self.ids, self.layers, self.ship_stored = cache, ids, layers, ship_stored
        self.max_samples, self.seed, self.random_crop = max_samples, seed, random_crop
        self.hop = cache.layout.hop
        self.window = cache.spec.get("frame", {}).get("window", 400)

    def __len__(self) -> int:
        return len(self.ids)

    def with_ids(self, ids: list[str]) -> CachedCrops:
        """The same crops over other ids (--follow: each epoch's)."""
        other = copy.copy(self)
        other.ids = ids
        return other

    def lengths(self) -> list[int]:
        return [min(self.cache.num_samples(u), self.max_samples) for u in self.ids]

    def crop(self, key: tuple[int, int]) -> tuple[str, int, int]:
        epoch, i = key
        uid = self.ids[i]
        n = self.cache.num_samples(uid)
        rng = np.random.default_rng([self.seed, epoch, i])
        k = crop_start(n, self.max_samples, self.hop, rng) if self.random_crop else 0
        return uid, k, min(n - k * self.hop, self.max_samples)

    def __getitem__(self, key: tuple[int, int]):
        uid, k, length = self.crop(key)
        frames = (length - self.window) // self.hop + 1
        stored_form = self.ship_stored and self.cache.mode.needs_stats
        read = self.cache.read_stored if stored_form else self.cache.read

        def audio() -> np.ndarray:
            if self.cache.audio_mode == "none":  # the cache keeps no audio: the source file, if it is still what was extracted
                return source_audio(self.cache, uid)[k * self.hop : k * self.hop + length]
            return self.cache.read_audio(uid, k * self.hop, k * self.hop + length)

        jobs = [audio, *(functools.partial(read, uid, layer, k, k + frames) for layer in self.layers)]
        if fs.is_remote(self.cache.path):  # each array is a request or two: fetch them side by side, not one after another
            wave, *rows = _fetcher().map(lambda job: job(), jobs)
        else:
            wave, *rows = (job() for job in jobs)
        if stored_form:  # int8/int4: ship the stored form, the step decodes it on its device
            stored = rows
            codes = torch.from_numpy(np.stack([s[""] for s in stored]))
            scales = torch.from_numpy(np.stack([s["_scale"] for s in stored])) if "_scale" in stored[0] else None  # pq: none
            return torch.from_numpy(wave), (codes, scales)
        return torch.from_numpy(wave), torch.from_numpy(np.stack(rows))


_FETCHER: tuple[int, ThreadPoolExecutor] | None = None


def _fetcher() -> ThreadPoolExecutor:
    """One small thread pool per process (a DataLoader worker makes its own after the fork)."""
    global _FETCHER
    if _FETCHER is None or _FETCHER[0] != os.getpid():
        _FETCHER = (os.getpid(), ThreadPoolExecutor(8, thread_name_prefix="crop-fetch"))
    return _FETCHER[1]


def source_audio(cache: Cache, uid: str) -> np.ndarray:
    """The teacher's input for `uid`, decoded again from its window of its source file; refused if the file changed
    since extraction. The file is hashed once per process while it stays unchanged (store.source_files.file_sha256)."""
    from extract.audio import load_audio
    from store import CorruptDataError
    from store.source_files import file_sha256

    record = cache.source(uid)
    if not record:
        raise CorruptDataError(f"{cache.path}: keeps no audio and records no source file for '{uid}'; re-extract with --audio float32")
    try:
        digest = file_sha256(record["path"])[1]
    except OSError as e:
        raise CorruptDataError(f"{record['path']}: source of '{uid}' cannot be read ({e.strerror or e}); this cache keeps no audio "
                               "(--audio none), so its corpus must stay in place") from None
    if digest != record["sha256"]:
        raise CorruptDataError(f"{record['path']}: changed since it was extracted (sha256 differs); re-run extract-features "
                               "on the corpus to re-extract it")
    start, stop = record.get("start", 0), record.get("stop")
    wave = load_audio(record["path"], cache.spec["preprocessing"]["sample_rate"], start, None if stop is None else stop - start,
                      record.get("channel"))
    if len(wave) != cache.num_samples(uid):
        raise CorruptDataError(f"{record['path']}: decodes to {len(wave)} samples, the cache says {cache.num_samples(uid)}")
    return wave


class BucketBatches:
    """An endless, deterministic stream of length-bucketed batches of (epoch, index) keys."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket_batches: int = 50, min_batch: int = 1):
        if not lengths:
            raise ValueError("no training utterances")
        self.lengths, self.batch_size, self.seed, self.bucket = lengths, batch_size, seed, bucket_batches
        self.min_batch = min_batch  # DDP: every rank needs at least one utterance of every batch

    def epoch(self, e: int) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, e, 7])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.bucket
        batches = []
        for start in range(0, len(order), span):  # sort within buckets so a batch holds similar lengths
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [[(e, int(i)) for i in chunk[j : j + self.batch_size]] for j in range(0, len(chunk), self.batch_size)
                        if len(chunk[j : j + self.batch_size]) >= self.min_batch]
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_length(self, e: int) -> int:
        """Batches in epoch e without building it: only bucket sizes matter, and they do not depend on e, so resume
        skips epochs in O(buckets) (building each epoch twice cost 5.5 s per 100k steps at LibriSpeech size)."""
        span, n = self.batch_size * self.bucket, 0
        for start in range(0, len(self.lengths), span):
            c = min(span, len(self.lengths) - start)
            rem = c % self.batch_size
            n += c // self.batch_size + (1 if rem and rem >= self.min_batch else 0)
        return n

    def from_step(self, step: int):
        """Batches for steps step, step+1, ... (skipping ahead costs no data reads)."""
        e, offset = 0, step
        while offset >= (n := self.epoch_length(e)):  # epochs may differ in length when small batches are dropped
            offset -= n
            e += 1
        while True:
            yield from self.epoch(e)[offset:]
            e, offset = e + 1, 0


def collate(items: list[tuple[torch.Tensor, torch.Tensor | tuple | None]]) -> dict[str, torch.Tensor]:
    """Zero-pad waves and targets (or compact codes and scales, decoded later on the device); masks say what is real."""
    lengths = torch.tensor([w.shape[0] for w, _ in items])
    wave = torch.zeros(len(items), int(lengths.max()))
    for i, (w, _) in enumerate(items):
        wave[i, : w.shape[0]] = w
    out = {"wave": wave, "lengths": lengths}
    if isinstance(items[0][1], tuple):
        out["codes"], out["frames"] = _pad([c for _, (c, _) in items])
        if items[0][1][1] is not None:
            out["scales"], _ = _pad([s for _, (_, s) in items])
    elif items[0][1] is not None:
        out["targets"], out["frames"] = _pad([t for _, t in items])
    return out


def _pad(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [N, F_i, ...] tensors into [B, N, max F, ...], zero-padded along frames; returns it and the F_i."""
    frames = torch.tensor([t.shape[1] for t in tensors])
    out = torch.zeros(len(tensors), tensors[0].shape[0], int(frames.max()), *tensors[0].shape[2:], dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, :, : t.shape[1]] = t
    return out, frames


class CorpusCrops(CachedCrops):
    """Online-teacher mode: the same crops, decoded from the audio files (targets come from the teacher)."""

    def __init__(self, utts: list, rate: int, hop: int, window: int, max_samples: int, seed: int, random_crop: bool = True,
                 sample_offsets: bool = False):
        self.sample_offsets = sample_offsets  # --recipe s3prl: crops at any sample offset, not only at frame boundaries
        self.utts = {u.uid: u for u in utts}
        self.ids, self.rate, self.hop, self.window = sorted(self.utts), rate, hop, window
        self.max_samples, self.seed, self.random_crop = max_samples, seed, random_crop
        self._lengths: dict[str, int] = {}

    def lengths(self) -> list[int]:
        return [min(self.utts[u].samples_at(self.rate), self.max_samples) for u in self.ids]

    def full_lengths(self) -> list[int]:
        return [self.utts[u].samples_at(self.rate) for u in self.ids]

    def __getitem__(self, key: tuple[int, int]):
        from extract.audio import load_utterance

        uid = self.ids[key[1]]
        wave = load_utterance(self.utts[uid], self.rate)
        rng = np.random.default_rng([self.seed, key[0], key[1]])
        if self.random_crop and self.sample_offsets and len(wave) > self.max_samples:  # s3prl: any sample offset
            start = int(rng.integers(0, len(wave) - self.max_samples + 1))
        else:
            start = self.hop * (crop_start(len(wave), self.max_samples, self.hop, rng) if self.random_crop else 0)
        return torch.from_numpy(wave[start : start + self.max_samples].copy()), None
