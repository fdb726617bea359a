"""A directory of audio files (recursive): ids are paths relative to it, without extension."""

from __future__ import annotations

import os
import stat
import sys

import soundfile as sf

from extract.corpora.entries import BadFile, Entry


def accepts(corpus: str) -> bool:
    return os.path.isdir(corpus)


def audio_extensions() -> set[str]:
    return {f".{fmt.lower()}" for fmt in sf.available_formats()} | {".oga", ".opus", ".aif", ".aiff"}


def walk(root: str, unreadable: list[tuple[str, str]] | None = None) -> list[str]:
    """Regular audio files under root, following symlinks, each real file once (directory loops end).

    A file reached twice (a link to a file or directory of the corpus, a link added later, a hard link) keeps the id of
    its real path, never the link's: a link sorting before its target must not re-cache the file under a new id.
    Hand-written because os.walk(followlinks=True) repeats linked trees and offers no identity of files; on os.scandir,
    whose listing gives a plain file's type and inode without a stat (a realpath per file was a third of a LibriSpeech re-run's
    scan). A directory that cannot be listed is added to `unreadable` as (path, why): never passed over in silence."""
    exts = audio_extensions()
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    first: dict[tuple[int, int] | str, tuple[bool, str]] = {}  # a file -> (reached through a link, its first name)
    more: dict[tuple[int, int] | str, list[tuple[bool, str]]] = {}  # the other names of files reached twice

    def visit(d: str, rel_d: str) -> None:
        try:
            st = os.stat(d)
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            if unreadable is not None:
                unreadable.append((d, e.strerror or type(e).__name__))
            return
        if (st.st_dev, st.st_ino) in seen_dirs:
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        at_real_place = os.path.realpath(d) == (os.path.join(real_root, rel_d) if rel_d else real_root)
        prefix = f"{rel_d}{os.sep}" if rel_d else ""
        subdirs = []
        for e in entries:
            name = e.name
            if _is_dir(e):
                # a linked directory whose target is inside the corpus is walked at its real place
                if not (e.is_symlink() and _inside(os.path.realpath(e.path), real_root)):
                    subdirs.append((e.path, prefix + name))
                continue
            dot = name.rfind(".")
            if dot < 0 or name[dot:].lower() not in exts:
                continue
            link = e.is_symlink()
            if not link:  # its type and inode come with the listing: no stat per file
                if not e.is_file(follow_symlinks=False):  # only regular files are audio: a FIFO named x.wav would block a reader
                    continue
                key: tuple[int, int] | str = (st.st_dev, e.inode())
            else:
                try:
                    fst = e.stat()
                    key = (fst.st_dev, fst.st_ino)
                except OSError:
                    key = prefix + name  # a dangling link: let the header read name it as a missing file
                else:
                    if not stat.S_ISREG(fst.st_mode):
                        continue
            if key in first:
                more.setdefault(key, []).append((link or not at_real_place, prefix + name))
            else:
                first[key] = (link or not at_real_place, prefix + name)
        for path, rel in subdirs:
            visit(path, rel)

    visit(root, "")
    found, links = [], []
    for key, name in first.items():  # in the order found
        if key not in more:
            found.append(name[1])
            continue
        names = sorted([name, *more[key]])  # the real path first, then the first by name
        found.append(names[0][1])
        links += [(rel, names[0][1]) for _, rel in names[1:]]
    if links:
        rel, target = links[0]
        print(f"{root}: {len(links)} file(s) are links to files already in the corpus, each cached once under its real "
              f"path's id (first: {rel} is {target})", file=sys.stderr)
    return found


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows links, as os.walk(followlinks=True)
    except OSError:
        return False


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def file_entries(root: str, rels: list[str]) -> list[Entry]:
    """Whole files, id = relative path without extension, '/' separators (directory and TSV inputs)."""
    prefix = root.rstrip(os.sep) + os.sep
    return [Entry(os.path.splitext(rel)[0].replace(os.sep, "/"), prefix + rel, prefix + rel) for rel in rels]


def read(corpus: str) -> tuple[str, list[Entry], list[BadFile]]:
    root = os.path.abspath(corpus)
    unreadable: list[tuple[str, str]] = []
    entries = file_entries(root, walk(root, unreadable))
    return root, entries, [BadFile(d, f"a directory of the corpus that cannot be listed ({why}): its files are not seen; fix "
                                      "its permissions, or move it out of the corpus") for d, why in unreadable]
