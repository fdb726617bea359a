"""A cache's source files: the record a commit marker keeps of each (stat, sha256, header, window), the hash taken once
per process while a file is unchanged, and whether a file is still what was extracted (git's racy-clean rule, timed by
the file system's own clock, with the record refreshed after a re-hash finds the same bytes, as git refreshes its index:
a file is re-hashed at most once). Used by extraction (what to skip, what to take back), verify --sources and the trainer
reading `--audio none` caches."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

Clock = Callable[[], int]


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


def file_sha256_at(path: str, clock: Clock = time.time_ns, since: int | None = None) -> tuple[os.stat_result, str, int]:
    """file_sha256() and the time (ns, by `clock`: fs_clock()'s for a record) its hash began: what a source record keeps
    as `taken_ns` (see racy()). `since`: a memo of a hash begun before it is not used, the file is read again (a racily
    clean file's memo is as racy as its record); one begun since is (the segments of one recording, checked in a pass)."""
    st = os.stat(path)
    key = _key(path, st)
    with _memo_lock:
        if since is not None and key in _digests and _digests[key][1] < since:
            _digests.pop(key)
        if key in _digests:
            _digests.move_to_end(key)
            return (st, *_digests[key])
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # threads decoding segments of one file wait for a single hash
        try:
            with _memo_lock:
                if key in _digests:
                    return (st, *_digests[key])
            began = clock()
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


def fs_clock(directory: str) -> Clock:
    """The file system's clock at `directory`: the mtime it gives a file this process writes there (`.clock`, one byte).

    Why not time.time_ns(): the files' timestamps come from the file server's clock, and a server lagging this host by
    more than RACY_NS makes a file rewritten in the tick it was read look long unchanged (racy() compares the two). A
    write then a stat per hash, far cheaper than the hash; concurrent writers only move the stamp later by the time
    between two writes, well inside RACY_NS. Where nothing can be written (an object store's cache: its sources are
    the workers' local files), this host's clock."""
    from store import fs

    if fs.is_remote(directory):
        return time.time_ns
    name = os.path.join(directory, ".clock")

    def now() -> int:
        try:
            with open(name, "wb") as f:
                f.write(b"\n")
            return os.stat(name).st_mtime_ns
        except OSError:  # a read-only cache (verify): this host's clock
            return time.time_ns()

    return now


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
    """git's racy-clean rule: a file written not earlier than the moment its content was read, less one timestamp tick,
    may have been written again within that tick unseen, so its stat proves nothing and it is hashed again. "Written"
    is the earlier of mtime and ctime: a future mtime (`touch -d`, a skewed writer) with a ctime long past is not racy,
    since any later change moves the ctime, which no user can set, past the record's (else such a file would be
    re-hashed on every run, for ever). Records from before `taken_ns` was kept cannot tell and are trusted as before."""
    taken = record.get("taken_ns")
    stamps = [t for t in (record.get("mtime_ns"), record.get("ctime_ns")) if type(t) is int]
    return type(taken) is int and bool(stamps) and min(stamps) >= taken - RACY_NS


def same_stat(st: os.stat_result, record: dict) -> bool:
    """Whether a file's stat is the one recorded: size, mtime, and ctime and inode, which no `cp -p`, `rsync -a` or
    `touch -d` can set back. A record without ctime (an older cache) never matches, nor does a racily clean one
    (racy()): their files are hashed."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == stat_key(record) and not racy(record)


def check_sources(records: Iterable[tuple[str, dict]], clock: Clock,
                  part_of: Callable[[str], str]) -> tuple[dict[str, str], dict[str, dict[str, dict]]]:
    """check_source of many (uid, record) in one pass: uid -> why its file changed, and part -> uid -> the refreshed
    record of each file re-hashed and found unchanged (what store.index.refresh_sources keeps). A file behind several
    records (the segments of one recording) is hashed once in the pass."""
    since = clock()
    changed: dict[str, str] = {}
    fresh: dict[str, dict[str, dict]] = {}
    for uid, record in records:
        why, new = check_source(record, clock, since)
        if why:
            changed[uid] = why
        elif new:
            fresh.setdefault(part_of(uid), {})[uid] = new
    return changed, fresh


def check_source(record: dict | None, clock: Clock = time.time_ns, since: int | None = None) -> tuple[str | None, dict | None]:
    """(why the file changed or None, the record refreshed or None). A file whose stat did not prove it unchanged is
    hashed (really read: a hash this process began before `since`, by default now, is not trusted); when its bytes are
    the recorded ones, the refreshed record (its stat now, `taken_ns` by `clock`, the file system's: fs_clock()) is what
    the caller keeps, so that the next check trusts the stat: a file is re-hashed once, not on every run (git refreshes
    its index the same way)."""
    if not record:
        return None, None
    path = record["path"]
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}: source file is gone", None
    if same_stat(st, record):
        return None, None
    try:
        st, digest, taken = file_sha256_at(path, clock, clock() if since is None else since)
    except OSError:
        return f"{path}: source file cannot be read", None
    if digest != record["sha256"]:
        return f"{path}: source file changed since it was extracted", None
    fresh = {**record, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
             "taken_ns": int(taken)}
    return None, fresh


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
        return None  # an unreadable file is check_source's to report
    found = [int(info.samplerate), int(info.frames), int(info.channels)]
    if header != found:
        return (f"{record['path']}: the cache's record of its header ({header}) is not the file's ({found}): the record was "
                "edited or damaged; re-run extract-features with --repair (windows are planned from the file)")
    return None
