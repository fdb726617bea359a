"""A directory of audio files (recursive): ids are paths relative to it, without extension."""

from __future__ import annotations

import os
import stat
import sys

import soundfile as sf

from extract.corpora import BadFile, Entry


def accepts(corpus: str) -> bool:
    return os.path.isdir(corpus)


def audio_extensions() -> set[str]:
    return {f".{fmt.lower()}" for fmt in sf.available_formats()} | {".oga", ".opus", ".aif", ".aiff"}


def walk(root: str) -> list[str]:
    """Regular audio files under root, following symlinks, each real file once (directory loops end).

    A file reached twice (a link to a file or directory of the corpus, a link added later, a hard link) keeps the id of
    its real path, never the link's: a link sorting before its target must not re-cache the file under a new id.
    Hand-written because os.walk(followlinks=True) repeats linked trees and offers no identity of files."""
    exts = audio_extensions()
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    by_file: dict[tuple[int, int], list[tuple[bool, str]]] = {}
    order: list[tuple[int, int] | str] = []
    for d, subdirs, files in os.walk(root, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen_dirs:
            subdirs[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        # a linked directory whose target is inside the corpus is walked at its real place
        subdirs[:] = sorted(s for s in subdirs if not (os.path.islink(os.path.join(d, s))
                                                      and _inside(os.path.realpath(os.path.join(d, s)), real_root)))
        for f in sorted(files):
            path = os.path.join(d, f)
            if os.path.splitext(f)[1].lower() not in exts or not _regular(path):
                continue
            rel = os.path.relpath(path, root)
            try:
                fst = os.stat(path)
                key: tuple[int, int] | str = (fst.st_dev, fst.st_ino)
            except OSError:
                key = rel  # a dangling link: let the header read name it as a missing file
            via_link = os.path.realpath(path) != os.path.join(real_root, rel)
            if key not in by_file:
                order.append(key)
            by_file.setdefault(key, []).append((via_link, rel))
    found, links = [], []
    for key in order:
        names = sorted(by_file[key])  # the real path first, then the first by name
        found.append(names[0][1])
        links += [(rel, names[0][1]) for _, rel in names[1:]]
    if links:
        rel, target = links[0]
        print(f"{root}: {len(links)} file(s) are links to files already in the corpus, each cached once under its real "
              f"path's id (first: {rel} is {target})", file=sys.stderr)
    return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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
