"""lhotse manifests, read with lhotse itself (optional: pip install 'distilcache[lhotse]').

`--corpus` may be a CutSet (`cuts.jsonl.gz`), a RecordingSet (whole recordings), or a directory with one
`*recordings*.jsonl.gz` and optionally one `*supervisions*.jsonl.gz` (one utterance per supervision, as
`CutSet.from_manifests(...).trim_to_supervisions()` makes them). Ids are the cut ids; offsets, durations and
channels are honoured; the held-out split keeps a recording's cuts together.
"""

from __future__ import annotations

import glob
import os

from extract.corpora.entries import BadFile, Entry, absolute, bad_times
from extract.errors import ExtractError

SUFFIXES = (".jsonl.gz", ".jsonl")


def accepts(corpus: str) -> bool:
    if os.path.isfile(corpus):
        return corpus.endswith(SUFFIXES)
    return os.path.isdir(corpus) and bool(glob.glob(os.path.join(corpus, "*recordings*.jsonl*")))


def _lhotse(corpus: str):
    try:
        import lhotse
    except ImportError:
        raise ExtractError(f"--corpus {corpus} is a lhotse manifest: install lhotse with pip install 'distilcache[lhotse]'") from None
    return lhotse


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__


def _load(lhotse, path: str):
    try:
        return lhotse.load_manifest(path)
    except Exception as e:  # noqa: BLE001 - lhotse raises many types for a file that is not its manifest
        raise ExtractError(f"{path}: not a readable lhotse manifest ({_why(e)})") from None


def _one(corpus: str, pattern: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(corpus, pattern)))
    if len(hits) > 1:
        raise ExtractError(f"--corpus {corpus}: {len(hits)} files match {pattern} ({', '.join(map(os.path.basename, hits[:3]))}); "
                           "give one cuts manifest, or a directory with one recordings (+ supervisions) pair")
    return hits[0] if hits else None


def _orphan_supervisions(corpus: str) -> list[BadFile]:
    """Supervisions whose recording is not in the recordings manifest: lhotse drops them silently; they are bad input."""
    if not os.path.isdir(corpus):
        return []
    lhotse = _lhotse(corpus)
    recs, sups = _one(corpus, "*recordings*.jsonl*"), _one(corpus, "*supervisions*.jsonl*")
    if not sups or not recs:
        return []
    known = set(_load(lhotse, recs).ids)
    return [BadFile(f"{sups} supervision '{s.id}'", f"its recording '{s.recording_id}' is not in {os.path.basename(recs)}")
            for s in _load(lhotse, sups) if s.recording_id not in known]


def cuts_of(corpus: str):
    lhotse = _lhotse(corpus)
    if os.path.isdir(corpus):
        recs, sups = _one(corpus, "*recordings*.jsonl*"), _one(corpus, "*supervisions*.jsonl*")
        cuts = lhotse.CutSet.from_manifests(recordings=_load(lhotse, recs), supervisions=_load(lhotse, sups) if sups else None)
        return cuts.trim_to_supervisions(keep_overlapping=False) if sups else cuts
    m = _load(lhotse, corpus)
    if isinstance(m, lhotse.RecordingSet):
        return lhotse.CutSet.from_manifests(recordings=m)
    if isinstance(m, lhotse.CutSet):
        return m
    raise ExtractError(f"--corpus {corpus}: a lhotse {type(m).__name__}; give a CutSet or RecordingSet, or a directory with "
                       "the recordings and supervisions manifests")


def _entry(corpus: str, cut) -> Entry | BadFile:
    from lhotse import MonoCut

    where = f"{corpus} cut '{cut.id}'"
    if not isinstance(cut, MonoCut) or cut.recording is None:
        return BadFile(where, f"a {type(cut).__name__} without one recording (mixed, padded or multi-channel cuts are not "
                              "supported); give mono cuts of recordings")
    rec = cut.recording
    if rec.transforms:
        return BadFile(where, "its recording has transforms (resampling, speed or volume perturbation); give the plain recording")
    sources = [s for s in rec.sources if cut.channel in s.channels]
    if not sources:
        return BadFile(where, f"channel {cut.channel} is in none of recording '{rec.id}''s sources")
    src = sources[0]
    if src.type != "file":
        return BadFile(where, f"audio source type '{src.type}' is not supported (files only); write the audio to files")
    if bad_times(cut.start, cut.duration):
        return BadFile(where, bad_times(cut.start, cut.duration))
    if cut.duration <= 0 or cut.start < 0:
        return BadFile(where, f"negative or zero duration (start {cut.start} s, duration {cut.duration} s)")
    channel = None if len(src.channels) == 1 else src.channels.index(cut.channel)
    return Entry(cut.id, absolute(src.source, os.getcwd()), where, offset=float(cut.start), duration=float(cut.duration),
                 channel=channel, recording=rec.id)


def read(corpus: str) -> tuple[str, list[Entry], list[BadFile]]:
    root = os.path.abspath(corpus if os.path.isdir(corpus) else os.path.dirname(corpus) or ".")
    try:
        results = [_entry(corpus, cut) for cut in cuts_of(corpus)] + _orphan_supervisions(corpus)
    except ExtractError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed manifest line surfaces while iterating
        raise ExtractError(f"--corpus {corpus}: cannot read its cuts ({_why(e)})") from None
    return root, [r for r in results if isinstance(r, Entry)], [r for r in results if isinstance(r, BadFile)]
