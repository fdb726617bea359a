"""A directory of audio files (recursive): ids are paths relative to it, without extension."""

from __future__ import annotations

import os
import stat

import soundfile as sf

from extract.corpora import BadFile, Entry


def accepts(corpus: str) -> bool:
    return os.path.isdir(corpus)


def audio_extensions() -> set[str]:
    return {f".{fmt.lower()}" for fmt in sf.available_formats()} | {".oga", ".opus", ".aif", ".aiff"}


def walk(root: str) -> list[str]:
    """Regular audio files under root, following symlinks but each real directory once (loops end, no repeats)."""
    exts = audio_extensions()
    seen: set[tuple[int, int]] = set()
    found = []
    for d, subdirs, files in os.walk(root, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            subdirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs.sort()
        for f in sorted(files):
            path = os.path.join(d, f)
            if os.path.splitext(f)[1].lower() in exts and _regular(path):
                found.append(os.path.relpath(path, root))
    return found


def _regular(path: str) -> bool:
    """Only regular files are audio: a FIFO or device named x.wav would block a reader forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # a dangling link: let the header read name it as a missing file


def file_entries(root: str, rels: list[str]) -> list[Entry]:
    """Whole files, id = relative path without extension, '/' separators (directory and TSV inputs)."""
    out = []
    for rel in rels:
        path = os.path.join(root, rel)
        out.append(Entry(os.path.splitext(rel)[0].replace(os.sep, "/"), path, path))
    return out


def read(corpus: str) -> tuple[str, list[Entry], list[BadFile]]:
    root = os.path.abspath(corpus)
    return root, file_entries(root, walk(root)), []
