"""One writer at a time: an advisory lock (flock) on a cache or a run directory.

flock is released by the kernel when the holder dies (kill -9 included), so a crash never leaves a
stale lock behind. Object stores have no locks: there, running one writer per cache is up to you
(docs/scale-out.md).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from store import fs
from store.errors import CacheError
from store.oneline import AT_SIGTERM


class LockedError(CacheError):
    """Another process holds the directory."""


_held: dict[int, int] = {}  # fd -> the pid that took the lock on it


def release_all() -> None:
    """Unlock every lock this process took: the SIGTERM handler (store.oneline) calls it before it exits. Forked children
    (DataLoader workers) share the lock's open file and would hold it until they die, seconds later, refusing a
    `--resume` started at once; LOCK_UN from the taker frees it for all of them. A child never unlocks its parent's."""
    for fd, pid in list(_held.items()):
        if pid == os.getpid():
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass


AT_SIGTERM.append(release_all)  # before the handler ends the children: they share the lock's file


def is_locked(directory: str) -> bool:
    """Whether some process holds `directory` now (without taking it)."""
    if fs.is_remote(directory) or not os.path.exists(os.path.join(directory, ".lock")):
        return False
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@contextmanager
def exclusive(directory: str, what: str = "another extract-features or import is running on this cache; wait for it to finish"
              ) -> Iterator[None]:
    if fs.is_remote(directory):
        yield
        return
    try:
        fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LockedError(f"{directory}: cannot lock it ({e.strerror}); check the path and its permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{directory}: {what}") from None
        _held[fd] = os.getpid()
        yield
    finally:
        _held.pop(fd, None)
        os.close(fd)
