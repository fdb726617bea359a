"""What to extract: a corpus (any input extract.corpora reads) as a list of utterances, from headers only.

Like lhotse's manifests, this says *what* (ids, files, windows, lengths); the store decides where it lives.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import soundfile as sf

from extract.audio import resampled_length
from extract.corpora import BadFile, Entry, read_corpus, to_samples
from extract.errors import ExtractError
from store.progress import tracked
from store.source_table import NONE, SourceTable

__all__ = ["BadFile", "KnownFiles", "MIN_SAMPLES", "PlanItem", "Utterance", "scan"]

MIN_SAMPLES = 400  # HuBERT/wav2vec2's first conv kernel; overridden from the teacher's config


class Utterance(NamedTuple):  # a NamedTuple, not a frozen dataclass: 281k of those cost a LibriSpeech scan 0.8 s
    uid: str  # corpus-relative path without extension ('/' separators), or the manifest's id
    path: str  # absolute
    samples: int  # length at the file's own rate (header)
    sample_rate: int
    channels: int
    start: int = 0  # first sample in the file, at its own rate
    whole: bool = True  # the whole file (read to its end); else the window start:start+samples
    channel: int | None = None  # one channel; None: the mean of all channels
    recording: str | None = None  # what the held-out split keeps together; None: this uid

    def samples_at(self, rate: int) -> int:
        """Its length once resampled to `rate`: what extract.audio's soxr gives, n * rate / sr rounded half up (checked
        against soxr in tests/extract/test_forecast.py; a floor here made the dry-run a frame short of the run)."""
        return resampled_length(self.samples, self.sample_rate, rate)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    @property
    def window(self) -> dict:
        """Where in its file this utterance is: what the pipeline reads and the commit marker records (start and
        samples at the file's own rate; samples None: to the end of the file)."""
        return {"start": self.start, "samples": None if self.whole else self.samples, "rate": self.sample_rate,
                "channel": self.channel, "recording": self.recording}

    def item(self, rate: int) -> PlanItem:
        return PlanItem(self.uid, self.path, self.samples_at(rate), self.window)


class PlanItem(NamedTuple):
    """One utterance of a planned part, as the pipeline (and a dask worker) gets it."""

    uid: str
    path: str
    samples: int  # at the teacher's rate: what batching and progress count
    window: dict  # Utterance.window


class Header(NamedTuple):
    """What the scan needs of an audio file's header."""

    samplerate: int
    frames: int
    channels: int


class KnownFiles:
    """A cache's records of its source files (a store.source_table.SourceTable, or uid -> record). The scan takes an
    unchanged file's header from its record (one stat, no open: a LibriSpeech-sized re-run opens no known file), comparing
    every file's stat with the records' columns at once, and remembers which records it saw unchanged, so that the check
    for changed sources (extract.retake) need not stat those files again."""

    def __init__(self, records: Mapping[str, dict] | None = None):
        if not isinstance(records, SourceTable):
            records = SourceTable.from_entries({"": {"dir": "", "ids": list(records or {}), "sources": list((records or {}).values())}})
        self.table = records
        self._seen = np.zeros(records.rows(), bool)  # rows whose file's stat now is the recorded one (not racy)
        paths, self._first, self._of_row = np.unique(records.cols["path"], return_index=True, return_inverse=True)
        self._unique = {p: i for i, p in enumerate(np.char.decode(paths).tolist()) if p}

    def headers(self, paths: list[str]) -> dict[str, Header]:
        """path -> header of every file of `paths` a record holds unchanged, with a sane header (three counts in range)."""
        h = self.table.cols["header"]
        asked = [(p, i) for p in paths if (i := self._unique.get(p)) is not None]
        first = self._first[np.fromiter((i for _, i in asked), np.int64, len(asked))]
        sane = (h[first, 0] > 0) & (h[first, 0] <= 10**6) & (h[first, 1] >= 0) & (h[first, 2] > 0) & (h[first, 2] <= 4096)
        # the unique path index has a row for "" too (records without a path): never looked at, never unchanged
        observed = np.full((len(self._unique) + 1, 4), NONE, np.int64)
        looked = [(p, i) for (p, i), ok in zip(asked, sane.tolist(), strict=True) if ok]  # else retake stats it (no header)
        for p, i in looked:
            try:
                st = os.stat(p)
            except OSError:
                continue
            observed[i] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if len(self._of_row):
            self._seen = self.table.unchanged_rows(observed[self._of_row])
        rows = first[sane]
        good = self._seen[rows]
        return dict(zip([p for (p, _), g in zip(looked, good.tolist(), strict=True) if g], map(Header._make, h[rows[good]].tolist()),
                        strict=True))

    def seen(self, table: SourceTable) -> np.ndarray:
        """The rows of `table` seen unchanged by headers(): by row for the same table, else (the cache was refreshed in
        between) by uid and recorded stat."""
        if table is self.table:
            return self._seen
        seen = {self.table.uid(r): tuple(self.table.cols["stat"][r]) for r in np.flatnonzero(self._seen)}
        return np.array([seen.get(table.uid(r)) == tuple(table.cols["stat"][r]) for r in range(table.rows())], bool)


TAIL = 4096  # samples decoded at a new file's end before any teacher work: a truncated file whose header is whole is caught


def _info(path: str) -> Header | BadFile:
    """The file's header, and whether its data reaches the end the header promises: its last TAIL samples are decoded
    (a partial copy whose header is whole fails here, before any teacher work, not at decode after it)."""
    try:
        f = sf.SoundFile(path)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for unreadable files
        reason = "no such file" if not os.path.exists(path) else f"not readable as audio ({str(e).splitlines()[0][:120]})"
        return BadFile(path, reason)
    with f:
        header = Header(int(f.samplerate), int(f.frames), int(f.channels))
        try:
            f.seek(max(0, header.frames - TAIL))
            whole = len(f.read(TAIL, dtype="int16")) >= min(TAIL, header.frames)
        except Exception:  # noqa: BLE001 - a seek or decode past the data's end
            whole = False
    if not whole:
        return BadFile(path, f"truncated: its header says {header.frames} samples, its data ends before them (a partial copy "
                             "or download?); copy it again")
    return header


def _bad(e: Entry, reason: str) -> BadFile:
    """A bad entry that knows its id and file: a Kaldi segment or lhotse cut is named by its manifest line or cut id,
    and its cached targets (of a file rewritten into garbage, say) are found again by id, not by that name."""
    return BadFile(e.where, reason, e.uid, e.path)


def _resolve(e: Entry, info, rate: int, min_samples: int, max_seconds: float) -> Utterance | BadFile:
    """The entry's window in samples, checked against its file's header."""
    if isinstance(info, BadFile):
        return _bad(e, info.reason if e.where == e.path else f"{e.path}: {info.reason}")
    sr, total = int(info.samplerate), int(info.frames)
    if e.whole and e.channel is None and total * rate // sr >= max(min_samples, 1) and not (max_seconds and total / sr > max_seconds):
        return Utterance(e.uid, e.path, total, sr, int(info.channels), recording=e.recording)  # a whole file that passes
    start = to_samples(e.offset, sr)
    stop = total if e.end is None and e.duration is None else to_samples(e.end, sr) if e.end is not None \
        else start + to_samples(e.duration, sr)
    if stop > total and not e.whole:
        return _bad(e, f"ends at {stop / sr:.3f} s, past the end of {e.path} ({total / sr:.3f} s)")
    if e.channel is not None and e.channel >= info.channels:
        return _bad(e, f"channel {e.channel}, but {e.path} has {info.channels}")
    utt = Utterance(e.uid, e.path, stop - start, sr, int(info.channels), start, e.whole, e.channel, e.recording)
    if utt.samples <= 0:
        return _bad(e, "empty (0 samples)")
    if utt.samples_at(rate) < min_samples:
        return _bad(e, f"too short: {utt.samples_at(rate)} samples at {rate} Hz, the teacher needs at least {min_samples}")
    if max_seconds and utt.seconds > max_seconds:
        return _bad(e, f"{utt.seconds:.1f} s is longer than --max-seconds {max_seconds:g}; raise it, or cut long "
                       "recordings with --segment-seconds")
    return utt


def scan(corpus: str, rate: int, min_samples: int = MIN_SAMPLES, max_seconds: float = 0,
         known: KnownFiles | None = None, check_known: bool = False,
         include: tuple[str, ...] = ()) -> tuple[str, list[Utterance], list[BadFile]]:
    """Read every header once per file (threads: it is I/O) and sort the corpus into good and bad entries.

    `known`: a cache's records of files; an unchanged file's header is taken from its record (same size, mtime, ctime
    and inode: store.source_files.same_stat), so only new or changed files are opened. `check_known`: the records' headers
    are read back from disk (untrusted) and windows are about to be planned from them (--segment-seconds: a forged
    rate or length makes new, wrong windows), so each is checked against the file's own header, which wins."""
    root, entries, bad = read_corpus(corpus, include)
    if not entries and not bad:
        raise ExtractError(f"--corpus {corpus}: no audio files found (formats: {', '.join(sorted(sf.available_formats()))})")
    paths = sorted({e.path for e in entries})
    infos = (known or KnownFiles()).headers(paths)  # one stat each, no thread hand-off
    todo = [p for p in paths if p not in infos]
    if check_known:
        todo = paths
    with ThreadPoolExecutor(16) as pool:
        read = dict(zip(todo, tracked(pool.map(_info, todo), len(todo), "reading audio headers", "file"), strict=True))
    lying = [p for p, h in infos.items() if not isinstance(read[p], BadFile) and h != read[p]] if check_known else []
    if lying:
        h, f = infos[lying[0]], read[lying[0]]
        print(f"{len(lying)} source record(s) of the cache disagree with their file's header, which is used instead (first: "
              f"{lying[0]}: recorded {h.samplerate} Hz, {h.frames} frames, {h.channels} ch; the file has {f.samplerate} Hz, "
              f"{f.frames} frames, {f.channels} ch): the records were edited or damaged, the files are fine", file=sys.stderr)
    infos.update(read)
    results = [_resolve(e, infos[e.path], rate, min_samples, max_seconds) for e in entries]
    return root, [r for r in results if isinstance(r, Utterance)], bad + [r for r in results if isinstance(r, BadFile)]
