"""File operations for a cache on a local disk or behind any fsspec URL (s3://, gs://, file://).

Local paths keep POSIX guarantees (write-then-rename, fsync, flock); on object stores a single PUT
is already atomic, so a marker is written in one request. Everything else goes through fsspec.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from store.errors import CacheError
from store.oneline import AT_SIGTERM


class StoreAccessError(CacheError, OSError):
    """The store cannot be reached or refuses us (credentials, endpoint, bucket)."""


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> str:
    """Absolute local path, or the URL without a trailing slash."""
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(path.removeprefix("file://"))


def filesystem(path: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(path)[0]
    except ImportError as e:
        raise StoreAccessError(f"{path}: {e}; for s3:// install distilcache[s3] (s3fs)") from None


@contextmanager
def remote_errors(path: str) -> Iterator[None]:
    """Turn a store's many exception types into one line that names the path."""
    try:
        yield
    except CacheError:
        raise
    except FileNotFoundError as e:
        if is_remote(path) and "bucket" in str(e).lower():
            bucket = path.split("://", 1)[1].split("/", 1)[0]
            raise StoreAccessError(f"{path}: the bucket {bucket} does not exist; create it first (e.g. aws s3 mb "
                                   f"{path.split('://')[0]}://{bucket}) or check the name") from None
        raise
    except Exception as e:  # noqa: BLE001 - botocore, aiohttp, gcsfs... all mean "cannot use this store"
        if not is_remote(path):
            raise
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise StoreAccessError(f"{path}: cannot use this store ({type(e).__name__}: {msg}); check the URL, the "
                               "credentials (AWS_* variables or ~/.aws) and AWS_ENDPOINT_URL") from None


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    with remote_errors(path):
        return filesystem(path).exists(path)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    with remote_errors(path):
        return filesystem(path).isdir(path)


def listdir(path: str) -> list[str]:
    """Sorted entry names; empty when the directory does not exist."""
    if not is_remote(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    with remote_errors(path):
        fs = filesystem(path)
        if not fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True))


def check_bucket(path: str) -> None:
    """On an object store, a root that does not exist is fine, a bucket that does not exist is one line."""
    if not is_remote(path):
        return
    scheme, rest = path.split("://", 1)
    bucket = rest.split("/", 1)[0]
    with remote_errors(path):
        if not filesystem(path).exists(f"{scheme}://{bucket}"):
            raise StoreAccessError(f"{path}: the bucket {bucket} does not exist; create it first (e.g. aws s3 mb "
                                   f"{scheme}://{bucket}) or check the name")


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)  # object stores have no directories to make


def rmtree(path: str) -> None:
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with remote_errors(path):
        fs = filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def open_file(path: str, mode: str = "rb"):
    if not is_remote(path):
        return open(path, mode)
    # no read-ahead: chunk reads are exact byte ranges (s3fs would otherwise fetch 50 MB blocks)
    return filesystem(path).open(path, mode, cache_type="none") if "r" in mode else filesystem(path).open(path, mode)


def file_stamp(path: str) -> list[int] | None:
    """(inode, size, mtime, ctime) of a local file, None if it is missing: what changes whenever the file is written or
    replaced (a rename gives a new inode), so an equal stamp stands for an unchanged file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_range(path: str, start: int, stop: int | None = None) -> bytes:
    """Bytes start:stop of a file; start < 0 with stop None: its last -start bytes. On an object store one ranged GET
    (a suffix range needs no HEAD for the size): what the reader's coalesced chunk reads are made of."""
    if not is_remote(path):
        with open(path, "rb") as f:
            f.seek(start, os.SEEK_END if start < 0 else os.SEEK_SET)
            return f.read() if stop is None else f.read(stop - start)
    with remote_errors(path):
        return filesystem(path).cat_file(path, start=start, end=stop)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (new files, renames) durable: POSIX does not promise it otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Durable once this returns: fsync of the file and its directory locally, a completed PUT remotely.
    durable=False: not yet, locally; make_durable() then makes many such files durable at once."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            fsync_dir(os.path.dirname(path))
        return
    with remote_errors(path):
        filesystem(path).pipe_file(path, data)


@functools.cache
def _syncfs():
    """libc's syncfs(2) on Linux, or None: Python's os module has sync() for every filesystem, not this one's. Looked up
    on first use (find_library runs ldconfig: not for every process that imports the store)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    for name in ("libc.so.6", ctypes.util.find_library("c")):
        try:
            libc = ctypes.CDLL(name, use_errno=True) if name else None
        except OSError:
            continue
        if libc is not None and hasattr(libc, "syncfs"):
            return libc.syncfs
    return None


def fsync_files(files: list[str], directory: str) -> None:
    """Each of `files` and `directory` fsynced: our own files' data only."""
    for name in files:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def make_durable(files: list[str], directory: str) -> None:
    """Files written with durable=False (and their entries in `directory`) durable now: one syncfs(2) of their
    filesystem where there is one (281k FLAC files fsynced one by one cost ~5 minutes), else an fsync each."""
    if not files or is_remote(directory):
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        syncfs = _syncfs()
        if syncfs is not None and syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    fsync_files(files, directory)  # no syncfs, or it failed (it reports writeback errors since Linux 5.8): one by one, raising


_TMP = re.compile(r".+\.tmp-(\d{1,10})-[0-9a-f]{8}")
_in_flight: set[str] = set()  # this process's temp files not yet renamed: removed at exit, SIGTERM included


def is_temp_of(name: str, base: str) -> bool:
    """Whether `name` is one of our temp files of `base` (_tmp_name's exact pattern), not any name holding '.tmp-'."""
    return re.fullmatch(re.escape(base) + r"\.tmp-\d{1,10}-[0-9a-f]{8}", name) is not None


def _tmp_name(path: str) -> str:
    import uuid

    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_temp_files() -> None:
    """Remove this process's temp files in flight: called at exit and by the SIGTERM handler (store.oneline), which
    ends the process at once (a consolidation of a LibriSpeech-sized index writes tens of MB to one)."""
    for tmp in list(_in_flight):
        remove_quietly(tmp)


atexit.register(remove_temp_files)
AT_SIGTERM.append(remove_temp_files)  # os._exit in the SIGTERM handler runs no atexit


def remove_stale_temp_files(directory: str) -> None:
    """Temp files a killed process left in `directory` (our names only, of a process not alive on this machine).
    kill -9 runs no handler, so the next writer of the directory removes them."""
    if is_remote(directory):
        return
    for name in listdir(directory):
        m = _TMP.fullmatch(name)
        if m and not pid_alive(int(m.group(1))):
            remove_quietly(os.path.join(directory, name))


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine holds `pid` (this one included): its temp files are not stale."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's live process
        pass
    return True


def write_json_atomic(path: str, obj: object) -> None:
    """A reader sees the old file or the new one, never half of one; a failed or interrupted write leaves no temp file."""
    write_bytes_atomic(path, json.dumps(obj, separators=(",", ":")).encode())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """write_json_atomic of bytes already made."""
    if is_remote(path):
        write_bytes(path, data)  # one PUT: atomic on object stores
        return
    tmp = _tmp_name(path)
    _in_flight.add(tmp)
    try:
        write_bytes(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    finally:
        _in_flight.discard(tmp)
    fsync_dir(os.path.dirname(path))


def publish_json(path: str, obj: object) -> bool:
    """Write `path` only if it does not exist yet (the commit of a part); False when someone else published first.

    Locally a hard link is atomic create-if-absent. On an object store, a conditional PUT (`If-None-Match: *`,
    fsspec's mode="create"): the store itself refuses the second writer, so no cached listing can let two commit."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    if is_remote(path):
        with remote_errors(path):
            store = filesystem(path)
            try:
                store.pipe_file(path, data, mode="create")
            except FileExistsError:  # s3fs: 412 PreconditionFailed
                store.invalidate_cache(path)  # our listing predates the winner's marker: the next read must see it
                # botocore retries a PUT whose reply was lost: the retry's 412 may be about our own first try, which
                # landed. A marker names its attempt (a fresh token), so equal bytes mean it is ours, and it stands.
                return store.cat_file(path) == data
        return True
    tmp = _tmp_name(path)
    _in_flight.add(tmp)  # a SIGTERM between write and link: removed by the handler (store.oneline), as every temp file
    try:
        write_bytes(tmp, data)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        remove_quietly(tmp)
        _in_flight.discard(tmp)
    fsync_dir(os.path.dirname(path))
    return True


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_file(path: str) -> None:
    if not is_remote(path):
        remove_quietly(path)
        return
    with remote_errors(path):
        fs = filesystem(path)
        if fs.exists(path):
            fs.rm(path)


def read_json(path: str) -> dict:
    if not is_remote(path):
        with open(path) as f:
            return json.load(f)
    with remote_errors(path):  # a range from 0: s3fs asks a whole-file read its size first, by a HEAD
        return json.loads(filesystem(path).cat_file(path, start=0))


def disk_usage(path: str) -> int:
    if not is_remote(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    with remote_errors(path):
        return int(filesystem(path).du(path))
