"""What every corpus reader produces: entries (an id, a file, a window, a channel) and bad entries, with the helpers the
readers share. The readers import this module, never the package, so extract.corpora can import them: no circle."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple


class Entry(NamedTuple):  # a NamedTuple, not a frozen dataclass: one per file of a corpus, built on every run
    uid: str  # the cache's id for it: a corpus-relative path, a Kaldi utterance id, a lhotse cut id
    path: str  # absolute path of the audio file
    where: str  # how errors name this entry: the file itself, or 'manifest line N (id)'
    offset: float = 0.0  # seconds into the file
    end: float | None = None  # seconds into the file (Kaldi); None: offset + duration, or the end of the file
    duration: float | None = None  # seconds (lhotse)
    channel: int | None = None  # one channel of the file; None: the mean of all its channels
    recording: str | None = None  # entries of one recording stay on one side of the held-out split; None: uid

    @property
    def whole(self) -> bool:
        return self.offset == 0 and self.end is None and self.duration is None


@dataclass(frozen=True)
class BadFile:
    path: str  # the audio file, or the manifest entry ('segments line 3 (utt-7)')
    reason: str
    uid: str | None = None  # the entry's id, once known: a cached utterance that is now bad input is matched by it
    file: str | None = None  # the entry's audio file (absolute), once known

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


NUL_PATH = "its path holds a NUL byte, which no file name can; fix the entry"  # a bad entry (os.stat raises on one)


def to_samples(seconds: float, rate: int) -> int:
    """Seconds to a sample count, rounding half up after 8 decimals: lhotse's rule (lhotse.utils.compute_num_samples),
    written out here so that Kaldi inputs, which do not need lhotse installed, round the same way."""
    if seconds == 0:  # every whole file's offset: 281k Decimals cost a LibriSpeech re-run 1 s
        return 0
    return int(Decimal(round(seconds * rate, ndigits=8)).quantize(0, rounding=ROUND_HALF_UP))


MAX_SECONDS = 1e7  # 116 days: no recording is longer; larger (or nan, inf) times in a manifest are typos or hostile


def bad_times(*seconds: float) -> str | None:
    """Why manifest times cannot be used (not finite, negative, or absurdly large), or None."""
    for t in seconds:
        if not (isinstance(t, (int, float)) and math.isfinite(t) and -1 <= t <= MAX_SECONDS):
            return f"time {t!r} s is not a finite number of seconds between 0 and {MAX_SECONDS:g}"
    return None


def absolute(path: str, base: str) -> str:
    """Kaldi and lhotse manifests hold paths relative to where the recipe runs (the current directory)."""
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base, path))


def duplicates(entries: list[Entry]) -> tuple[list[Entry], list[BadFile]]:
    """Drop entries whose id was already used, naming both."""
    seen: dict[str, Entry] = {}
    keep, bad = [], []
    for e in entries:
        if e.uid in seen:
            bad.append(BadFile(e.where, f"id '{e.uid}' is also used by {seen[e.uid].where}; ids must be unique"))
        else:
            seen[e.uid] = e
            keep.append(e)
    return keep, bad
