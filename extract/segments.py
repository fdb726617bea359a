"""Long recordings become fixed windows (`--segment-seconds S --segment-overlap O`).

Windows are S seconds long and start every S - O seconds; the last one is placed to end exactly at the
end of the utterance (it overlaps its neighbour more than O), so every segment has the same length and
no audio is dropped. Utterances no longer than S stay whole, with their own id. A window's id names its
source and its sample range at the file's own rate: `talks/day1@480000-730000`.
"""

from __future__ import annotations

import re

from extract.corpora import to_samples
from extract.corpus import Utterance
from extract.errors import ExtractError

PLACEMENT = "every S-O seconds, the last window ends at the end"  # recorded in the spec
WINDOW_ID = re.compile(r"^(?P<uid>.+)@(?P<start>\d+)-(?P<stop>\d+)$")


def window_starts(n: int, width: int, hop: int) -> list[int]:
    """Starts of the windows covering n samples: every hop, the last one ending at n."""
    if n <= width:
        return [0]
    starts = list(range(0, n - width, hop))
    return starts + [n - width]


def check(seconds: float, overlap: float, rate: int, min_samples: int) -> None:
    if seconds * rate < min_samples:
        raise ExtractError(f"--segment-seconds {seconds:g}: shorter than the teacher's {min_samples}-sample window; give more")
    if not 0 <= overlap < seconds:
        raise ExtractError(f"--segment-overlap {overlap:g}: must be at least 0 and less than --segment-seconds {seconds:g}")


def segment(utts: list[Utterance], seconds: float, overlap: float = 0.0) -> list[Utterance]:
    """Every utterance longer than `seconds`, cut into windows; the rest unchanged."""
    lookalikes = [u.uid for u in utts if WINDOW_ID.match(u.uid)]
    if lookalikes:  # 'a@0-24000' from the corpus and the same id cut from 'a' would be one id for two windows
        raise ExtractError(f"id '{lookalikes[0]}' ({len(lookalikes)} such) has the form of a window id (ID@START-STOP) that "
                           "--segment-seconds makes; rename those files or entries, or extract without --segment-seconds")
    out = []
    for u in utts:
        width = to_samples(seconds, u.sample_rate)
        if u.samples <= width:
            out.append(u)
            continue
        hop = width - to_samples(overlap, u.sample_rate)
        out.extend(u._replace(uid=f"{u.uid}@{a}-{a + width}", start=u.start + a, samples=width, whole=False,
                              recording=u.recording or u.uid)
                   for a in window_starts(u.samples, width, hop))
    return out


def parent(uid: str) -> str:
    """The id a window was cut from (the uid itself when it is not a window)."""
    m = WINDOW_ID.match(uid)
    return m["uid"] if m else uid
