"""A cache's source files: the record a commit marker keeps of each (stat, sha256, header, window), the hash taken once
per process while a file is unchanged, and whether a file is still what was extracted (git's racy-clean rule). Used by
extraction (what to skip, what to take back), verify --sources and the trainer reading `--audio none` caches."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict


def _key(path: str, st: os.stat_result) -> tuple:
    """A file's identity for the digest memo: any write changes its ctime, which no user can set back."""
    return path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


_digests: OrderedDict[tuple, tuple[str, int]] = OrderedDict()  # file identity -> (sha256, when its hash began)
_locks: dict[tuple, threading.Lock] = {}
_memo_lock = threading.Lock()


def file_sha256(path: str) -> tuple[os.stat_result, str]:
    """(stat, sha256) of a file, hashed in 1 MiB blocks (memory flat in file size) and once per process while the
    file is unchanged: the 720 segments of a 3-hour recording hash it once, not 720 times. Raises OSError."""
    st, digest, _ = file_sha256_at(path)
    return st, digest


def file_sha256_at(path: str) -> tuple[os.stat_result, str, int]:
    """file_sha256() and the time (ns) its hash began: what a source record keeps as `taken_ns` (see racy())."""
    st = os.stat(path)
    key = _key(path, st)
    with _memo_lock:
        if key in _digests:
            _digests.move_to_end(key)
            return (st, *_digests[key])
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # threads decoding segments of one file wait for a single hash
        try:
            with _memo_lock:
                if key in _digests:
                    return (st, *_digests[key])
            began = time.time_ns()
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            if _key(path, os.stat(path)) != key:
                raise OSError(f"{path} changed while being hashed")
            with _memo_lock:
                _digests[key] = (h.hexdigest(), began)
                while len(_digests) > 4096:
                    _digests.popitem(last=False)
                return (st, *_digests[key])
        finally:  # a failed hash (unreadable, changed) must not leave its lock behind
            with _memo_lock:
                _locks.pop(key, None)


def unchanged_since(path: str, st: os.stat_result) -> bool:
    try:
        return _key(path, os.stat(path)) == _key(path, st)
    except OSError:
        return False


def source_record(path: str, st: os.stat_result, sha256: str, window: dict | None = None,
                  header: tuple[int, int, int] | None = None, taken_ns: int | None = None) -> dict:
    """What a commit marker keeps of a source: enough to notice the file changed (size/mtime first, then sha256), and
    for a window of a file (a segment) where it is: start/stop at the file's own rate, channel and recording.
    `header` (rate, frames, channels of the whole file) lets a re-run skip reading the header of an unchanged file;
    `taken_ns`, when its content was read, tells a racily clean stat (racy())."""
    record = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
              "sha256": sha256}
    if taken_ns is not None:
        record["taken_ns"] = int(taken_ns)
    if header:
        record["header"] = list(header)
    if window and (window.get("samples") is not None or window.get("start") or window.get("channel") is not None):
        record.update(start=window["start"], stop=None if window.get("samples") is None else window["start"] + window["samples"],
                      sample_rate=window["rate"])
        if window.get("channel") is not None:
            record["channel"] = window["channel"]
    if window and window.get("recording"):
        record["recording"] = window["recording"]
    return record


def stat_key(record: dict) -> tuple:
    """What same_stat compares, as a record holds it."""
    return record.get("size"), record.get("mtime_ns"), record.get("ctime_ns", -1), record.get("ino", -1)


#: How far a file's timestamp may lag the clock: filesystems stamp files from a coarse clock, at 1 s on ext4 with small
#: inodes and some network filesystems, 2 s on FAT. A file written this close to the moment it was read may be
#: rewritten within the same tick, same size, after the read: its stat would then match the record's and hide it.
RACY_NS = 2_000_000_000


def racy(record: dict) -> bool:
    """git's racy-clean rule: a file whose mtime is not older than the moment its content was read (less one timestamp
    tick) may have changed within that tick unseen, so its stat proves nothing and it is hashed again. Records from
    before `taken_ns` was kept cannot tell and are trusted as before."""
    taken, mtime = record.get("taken_ns"), record.get("mtime_ns")
    return type(taken) is int and type(mtime) is int and mtime >= taken - RACY_NS


def same_stat(st: os.stat_result, record: dict) -> bool:
    """Whether a file's stat is the one recorded: size, mtime, and ctime and inode, which no `cp -p`, `rsync -a` or
    `touch -d` can set back. A record without ctime (an older cache) never matches, nor does a racily clean one
    (racy()): their files are hashed."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == stat_key(record) and not racy(record)


def source_changed(record: dict | None) -> str | None:
    """Why the file behind `record` is no longer what was extracted, or None. A source is its content (sha256); the
    stat only spares the hash when nothing about the file moved (same_stat)."""
    if not record:
        return None
    path = record["path"]
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}: source file is gone"
    if same_stat(st, record):
        return None
    try:
        digest = file_sha256(path)[1]
    except OSError:
        return f"{path}: source file cannot be read"
    return None if digest == record["sha256"] else f"{path}: source file changed since it was extracted"


def header_key(record: dict) -> str:
    """A record's file and recorded header: what lying_headers checks once (the windows of one recording share both)."""
    return f"{record['path']}\0{record.get('header')}"


def lying_headers(records) -> dict[str, str]:
    """header_key -> why, for the records whose header (rate, frames, channels) is not their file's; each distinct file and
    header read once."""
    distinct = {header_key(r): r for r in records}
    return {key: why for key, r in distinct.items() if (why := header_lies(r))}


def header_lies(record: dict) -> str | None:
    """Why a record's header (rate, frames, channels) is not its file's, or None (no header recorded, or it agrees)."""
    import soundfile as sf

    header = record.get("header")
    if header is None:
        return None
    try:
        info = sf.info(record["path"])
    except (RuntimeError, OSError):
        return None  # an unreadable file is source_changed's to report
    found = [int(info.samplerate), int(info.frames), int(info.channels)]
    if header != found:
        return (f"{record['path']}: the cache's record of its header ({header}) is not the file's ({found}): the record was "
                "edited or damaged; re-run extract-features with --repair (windows are planned from the file)")
    return None
