"""A Kaldi data directory: `wav.scp` (`<recording-id> <path>`) and, optionally, `segments`
(`<utterance-id> <recording-id> <start-seconds> <end-seconds>`, end -1: to the end of the file).

Ids are the utterance ids (the recording ids without `segments`). Paths only: a piped command
(`... |`) is refused, since its output cannot be hashed, re-read for training, or trusted to be
the same twice. Relative paths are taken from the current directory, as Kaldi recipes do.
"""

from __future__ import annotations

import os

from extract.corpora.entries import BadFile, Entry, absolute, bad_times
from extract.errors import ExtractError


def accepts(corpus: str) -> bool:
    return os.path.isdir(corpus) and os.path.isfile(os.path.join(corpus, "wav.scp"))


def _lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [(n, ln.strip()) for n, ln in enumerate(f, start=1) if ln.strip()]
    except UnicodeDecodeError as e:
        raise ExtractError(f"{path}: not a UTF-8 text file (byte {e.start}); Kaldi data files are text") from None


def recordings(scp: str) -> tuple[dict[str, tuple[str, str]], list[BadFile]]:
    """recording id -> (absolute path, how to name its line)."""
    found: dict[str, tuple[str, str]] = {}
    bad = []
    for n, line in _lines(scp):
        cols = line.split(maxsplit=1)
        where = f"{scp} line {n} ({cols[0]})"
        if len(cols) != 2:
            bad.append(BadFile(f"{scp} line {n}", f"expected '<recording-id> <path>', got {line[:80]!r}"))
        elif cols[1].endswith("|") or cols[1].startswith("|"):
            raise ExtractError(f"{where}: is a piped command; distilcache reads audio files only, so write the command's "
                               "output to files once and list their paths in wav.scp")
        elif cols[0] in found:
            bad.append(BadFile(where, f"recording id '{cols[0]}' is also on {found[cols[0]][1]}; ids must be unique"))
        else:
            found[cols[0]] = (absolute(cols[1], os.getcwd()), where)
    return found, bad


def read(corpus: str) -> tuple[str, list[Entry], list[BadFile]]:
    root = os.path.abspath(corpus)
    recs, bad = recordings(os.path.join(root, "wav.scp"))
    segments = os.path.join(root, "segments")
    if not os.path.isfile(segments):
        return root, [Entry(rid, path, where) for rid, (path, where) in recs.items()], bad
    entries = []
    for n, line in _lines(segments):
        cols = line.split()
        where = f"{segments} line {n}" + (f" ({cols[0]})" if cols else "")
        if len(cols) != 4:
            bad.append(BadFile(where, f"expected '<utterance-id> <recording-id> <start> <end>', got {line[:80]!r}"))
            continue
        uid, rid = cols[:2]
        try:
            start, end = float(cols[2]), float(cols[3])
        except ValueError:
            bad.append(BadFile(where, f"start and end must be seconds, got {cols[2]!r} {cols[3]!r}"))
            continue
        if bad_times(start, end):
            bad.append(BadFile(where, bad_times(start, end)))
        elif rid not in recs:
            bad.append(BadFile(where, f"recording '{rid}' is not in wav.scp"))
        elif start < 0 or end != -1 and end <= start:
            bad.append(BadFile(where, f"negative or zero duration ({cols[2]} to {cols[3]} s)"))
        else:
            entries.append(Entry(uid, recs[rid][0], where, offset=start, end=None if end == -1 else end, recording=rid))
    return root, entries, bad
