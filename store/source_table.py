"""The consolidated source records (sources.npz, format 3): one table of columns, what a re-run with nothing to do reads.

As JSON (sources.json, format 2) a LibriSpeech cache's 281k records were 78 MB of text parsed into 281k dicts on every
re-run: seconds and hundreds of MB before any file was looked at. Here each field is a numpy column, a record becomes a
dict only when asked (the table is a Mapping uid -> record), and the re-run compares every file's stat with the columns
at once (`unchanged_rows`). One compressed .npz (numpy's own zip of arrays, no pickle: `allow_pickle=False`; zipfile checks
each column's CRC-32, so a damaged file is refused, never misread): written by hand because zarr would make it a
directory of arrays, which cannot be replaced atomically as one file is, and the table is rewritten whole under the lock.

A record's fields that fit a column (path, size, mtime_ns, ctime_ns, ino, taken_ns, sha256 as 32 bytes, header) are
stored there; anything else (a window's start/stop/sample_rate/channel/recording, or a value of an unexpected type) is
kept as JSON in `extra`, so that `table[uid]` is exactly the record the marker held (tested)."""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping

import numpy as np

from store import source_files

NONE = np.iinfo(np.int64).min  # an absent integer field
STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")
PRESENT, HASHED = 1, 2  # flags: the utterance has a record; the record's sha256 is in the `sha256` column
TABLE_VERSION = 1
_HEX = re.compile("[0-9a-f]{64}")
_PER_PART = {"part": "S", "dir": "S", "skipped": "S"}
_PER_ROW = {"uid": ("S", ()), "flags": ("u1", ()), "path": ("S", ()), "stat": ("i8", (4,)), "taken_ns": ("i8", ()),
            "header": ("i8", (3,)), "sha256": ("u1", (32,)), "extra": ("S", ())}


def _int(v) -> bool:
    return type(v) is int and NONE < v < 1 << 63


def _split(record) -> tuple:
    """(flags, path, stat, taken_ns, header, sha256 bytes, extra JSON) of one record (None: no record)."""
    if not isinstance(record, dict):
        return 0, "", (NONE,) * 4, NONE, (NONE,) * 3, b"\0" * 32, ""
    rest = dict(record)
    path = rest.pop("path") if isinstance(rest.get("path"), str) and rest["path"] and "\0" not in rest["path"] else ""
    stat = tuple(rest.pop(k) if _int(rest.get(k)) else NONE for k in STAT_FIELDS)
    taken = rest.pop("taken_ns") if _int(rest.get("taken_ns")) else NONE
    h = rest.get("header")
    header = tuple(rest.pop("header")) if type(h) is list and len(h) == 3 and all(map(_int, h)) else (NONE,) * 3
    sha = rest.get("sha256")
    hashed = isinstance(sha, str) and _HEX.fullmatch(sha) is not None
    digest = bytes.fromhex(rest.pop("sha256")) if hashed else b"\0" * 32
    return PRESENT | (HASHED if hashed else 0), path, stat, taken, header, digest, json.dumps(rest) if rest else ""


def strings(values: list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=bytes) if values else np.zeros(0, "S1")


class SourceTable(Mapping):
    """uid -> source record, for the utterances of some parts (rows grouped by part, in each part's id order)."""

    def __init__(self, cols: dict[str, np.ndarray]):
        self.cols = cols
        self.parts = [p.decode() for p in cols["part"]]
        self.dirs = [d.decode() for d in cols["dir"]]
        self._rows: dict[str, int] | None = None

    @classmethod
    def from_entries(cls, entries: dict[str, dict]) -> SourceTable:
        """From format 2's sources.json-shaped entries: part -> {dir, ids, sources, skipped} (store.index.sources_entry)."""
        start, rows, uids = [0], [], []
        for e in entries.values():
            records = e.get("sources") if isinstance(e.get("sources"), list) else []
            uids += e["ids"]
            rows += [_split(r) for r in records[: len(e["ids"])]] + [_split(None)] * max(0, len(e["ids"]) - len(records))
            start.append(len(uids))
        flags, paths, stat, taken, header, digests, extra = zip(*rows, strict=True) if rows else ((),) * 7
        n = len(uids)
        cols = {"part": strings(list(entries)), "dir": strings([e["dir"] for e in entries.values()]),
                "skipped": strings([json.dumps(e.get("skipped", [])) for e in entries.values()]),
                "start": np.array(start, np.int64), "uid": strings(uids), "flags": np.array(flags, np.uint8),
                "path": strings(list(paths)), "stat": np.array(stat, np.int64).reshape(n, 4),
                "taken_ns": np.array(taken, np.int64), "header": np.array(header, np.int64).reshape(n, 3),
                "sha256": np.frombuffer(b"".join(digests), np.uint8).reshape(n, 32), "extra": strings(list(extra))}
        return cls(cols)

    def __len__(self) -> int:
        return len(self._row_of())

    def __iter__(self) -> Iterator[str]:
        return iter(self._row_of())

    def __getitem__(self, uid: str) -> dict:
        return self.record(self._row_of()[uid])

    def __contains__(self, uid) -> bool:
        return uid in self._row_of()

    def _row_of(self) -> dict[str, int]:
        """uid -> row of each utterance with a record (built on first use: the re-run's vectorised path never needs it)."""
        if self._rows is None:
            present = np.flatnonzero(self.cols["flags"] & PRESENT)
            self._rows = dict(zip(np.char.decode(self.cols["uid"][present]).tolist(), present.tolist(), strict=True))
        return self._rows

    def rows_of(self, uids: list[str]) -> np.ndarray:
        """The row of each uid's record, -1 for none."""
        rows = self._row_of()
        return np.fromiter((rows.get(u, -1) for u in uids), np.int64, len(uids))

    def at_path(self, rows: np.ndarray, paths: list[str]) -> np.ndarray:
        """Whether each row (-1: none) records the whole of exactly that file: no window or anything else in `extra`."""
        if not self.rows():
            return np.zeros(len(rows), bool)
        r = np.where(rows >= 0, rows, 0)
        return (rows >= 0) & (self.cols["path"][r] == strings(paths)) & (self.cols["extra"][r] == b"")

    def rows(self) -> int:
        return len(self.cols["uid"])

    def uid(self, row: int) -> str:
        return self.cols["uid"][row].decode()

    def part_rows(self, part: int) -> range:
        return range(int(self.cols["start"][part]), int(self.cols["start"][part + 1]))

    def record(self, row: int) -> dict:
        """The record of one row, as the marker held it."""
        c = self.cols
        if not c["flags"][row] & PRESENT:
            raise KeyError(row)
        r: dict = {"path": c["path"][row].decode()} if c["path"][row] else {}
        r.update((k, int(v)) for k, v in zip(STAT_FIELDS, c["stat"][row], strict=True) if v != NONE)
        if c["flags"][row] & HASHED:
            r["sha256"] = c["sha256"][row].tobytes().hex()
        if c["taken_ns"][row] != NONE:
            r["taken_ns"] = int(c["taken_ns"][row])
        if c["header"][row][0] != NONE:
            r["header"] = [int(v) for v in c["header"][row]]
        if c["extra"][row]:
            try:
                extra = json.loads(c["extra"][row])
            except ValueError:
                extra = None
            if not isinstance(extra, dict):  # past zip's CRC-32 only by a deliberate edit: loud, never a record without it
                from store.errors import CorruptDataError

                raise CorruptDataError(f"sources.npz: the record of {self.uid(row)} is malformed; remove the cache's "
                                       "sources.npz (its commit markers rebuild it on the next extract-features)")
            r.update(extra)
        return r

    def entry(self, part: int) -> dict:
        """A part's entry, shaped as in format 2's sources.json (store.index.sources_entry): what consolidate() keeps or replaces."""
        rows = self.part_rows(part)
        return {"dir": self.dirs[part], "ids": [self.uid(i) for i in rows],
                "sources": [self.record(i) if self.cols["flags"][i] & PRESENT else None for i in rows],
                "skipped": json.loads(self.cols["skipped"][part])}

    def select(self, parts: list[int]) -> SourceTable:
        """The rows of these parts (positions in self.parts), in this order."""
        start = self.cols["start"]
        rows = np.concatenate([np.arange(start[p], start[p + 1]) for p in parts]) if parts else np.zeros(0, np.int64)
        cols = {k: self.cols[k][rows] for k in _PER_ROW}
        cols.update({k: self.cols[k][parts] if parts else self.cols[k][:0] for k in _PER_PART})
        cols["start"] = np.concatenate([[0], np.cumsum([start[p + 1] - start[p] for p in parts], dtype=np.int64)]).astype(np.int64)
        return SourceTable(cols)

    def racy(self) -> np.ndarray:
        """store.source_files.racy() of every row at once."""
        c = self.cols
        stamps = np.where(c["stat"][:, 1:3] == NONE, np.iinfo(np.int64).max, c["stat"][:, 1:3]).min(1)
        return (c["taken_ns"] != NONE) & (stamps != np.iinfo(np.int64).max) & (stamps >= c["taken_ns"] - source_files.RACY_NS)

    def unchanged_rows(self, observed: np.ndarray) -> np.ndarray:
        """store.source_files.same_stat() of every row at once: `observed` holds each row's file's (size, mtime_ns,
        ctime_ns, ino) now, NONE where it was not looked at."""
        c = self.cols
        return (c["flags"] & PRESENT).astype(bool) & (c["stat"] == observed).all(1) & (observed[:, 0] != NONE) & ~self.racy()

    def to_bytes(self) -> bytes:
        """np.savez_compressed's layout (np.load reads it), but with a fixed timestamp on every member: the same records
        give the same bytes on every run, as the rest of a cache does (savez stamps each member with the time)."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, array in {"table_version": np.array(TABLE_VERSION), **self.cols}.items():
                member = zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0))
                member.compress_type = zipfile.ZIP_DEFLATED
                with z.open(member, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)
        return buf.getvalue()


def concat(tables: list[SourceTable]) -> SourceTable:
    """One table of the rows of several (each part once: callers never pass a part twice)."""
    cols = {k: np.concatenate([t.cols[k] for t in tables]) for k in (*_PER_ROW, *_PER_PART)}
    offsets = np.cumsum([0] + [t.rows() for t in tables[:-1]])
    cols["start"] = np.concatenate([[0]] + [t.cols["start"][1:] + o for t, o in zip(tables, offsets, strict=True)]).astype(np.int64)
    return SourceTable(cols)


def table_from_bytes(data: bytes) -> SourceTable | None:
    """The table in a sources.npz, or None when it is not one this code wrote (damaged, truncated, hand-made): untrusted
    like every file read back, and the markers are the truth, so the caller rebuilds from them."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            cols = {k: npz[k] for k in ("table_version", "start", *_PER_PART, *_PER_ROW)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if cols.pop("table_version").tolist() != TABLE_VERSION or not _well_formed(cols):
        return None
    return SourceTable(cols)


def _well_formed(cols: dict[str, np.ndarray]) -> bool:
    start = cols["start"]
    parts = len(cols["part"])
    if start.dtype != np.int64 or start.shape != (parts + 1,) or start[0] != 0 or (np.diff(start) < 0).any():
        return False
    n = int(start[-1])
    if any(cols[k].dtype.kind != kind or cols[k].shape != (parts,) for k, kind in _PER_PART.items()):
        return False
    return all((cols[k].dtype.kind == "S" if t == "S" else cols[k].dtype == np.dtype(t)) and cols[k].shape == (n, *shape)
               for k, (t, shape) in _PER_ROW.items())
