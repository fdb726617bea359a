"""The read API (DESIGN.md): open a cache, read any frame range of any utterance.

A Cache holds only paths and the index; array handles are opened lazily per process, so a
Cache can be handed to DataLoader workers (pickled or forked) and each opens its own.
"""

from __future__ import annotations

import json
import os

import numpy as np
import zarr

from store import fs
from store.chunks import ShardedRows
from store.errors import CacheNotFoundError, FormatVersionError, MissingDataError, NotACacheError
from store.layout import Layout, from_storage, layer_key, part_path, plan_path, read_json
from store.spec import FORMAT_VERSION


def check_format(path: str, version) -> None:
    """One line for a cache of another format: what it is and what to do."""
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise FormatVersionError(f"{path}: cache format {version} is newer than this distilcache reads ({FORMAT_VERSION}); "
                                 "upgrade distilcache")
    raise FormatVersionError(f"{path}: cache format {version} was written by an older distilcache (this one reads "
                             f"{FORMAT_VERSION}); re-run extract-features to build a format-{FORMAT_VERSION} cache, then remove "
                             "this one with feature-cache rm")


def default_cache_dir() -> str:
    return os.environ.get("DISTILCACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "distilcache")


class Cache:
    """A committed view of one cache directory (call refresh() to see parts committed since)."""

    def __init__(self, path: str):
        self.path = fs.resolve(path)
        meta_file = os.path.join(self.path, "zarr.json")
        if not fs.exists(meta_file):
            raise NotACacheError(f"{path}: not a distilcache cache (no zarr.json); list caches with: feature-cache ls")
        try:
            meta = read_json(meta_file).get("attributes", {}).get("distilcache")
        except (OSError, json.JSONDecodeError) as e:
            raise NotACacheError(f"{meta_file}: unreadable ({e}); remove the cache with feature-cache rm") from None
        if not meta:
            raise NotACacheError(f"{path}: a zarr group, but not a distilcache cache")
        check_format(path, meta.get("format_version"))
        self.fingerprint: str = meta["fingerprint"]
        self.spec: dict = meta["spec"]
        self.provenance: dict = meta.get("provenance", {})
        self.layout = Layout(**meta["layout"])
        self.layers: list[int] = list(self.spec["layers"])
        self.refresh()

    def refresh(self) -> None:
        """Load the index of every committed part."""
        self._where: dict[str, tuple[str, int, int, int, int]] = {}
        self.parts: list[str] = []
        self._skipped_in_parts: list[dict] = []
        commits = os.path.join(self.path, "commits")
        for name in fs.listdir(commits):
            if not name.endswith(".json"):
                continue
            marker = read_json(os.path.join(commits, name))
            part = marker["part"]
            self.parts.append(part)
            self._skipped_in_parts.extend(marker.get("skipped", []))
            f0 = s0 = 0
            for uid, nf, ns in zip(marker["ids"], marker["frames"], marker["samples"], strict=True):
                self._where[uid] = (part, f0, nf, s0, ns)
                f0, s0 = f0 + nf, s0 + ns
        self.utterance_ids: list[str] = sorted(self._where)
        self._handles: dict = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # no file handle crosses a process boundary
        return state

    def __contains__(self, uid: str) -> bool:
        return uid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _locate(self, uid: str) -> tuple[str, int, int, int, int]:
        try:
            return self._where[uid]
        except KeyError:
            raise MissingDataError(f"{self.path}: utterance '{uid}' is not in this cache ({len(self)} utterances)") from None

    def num_frames(self, uid: str) -> int:
        return self._locate(uid)[2]

    def num_samples(self, uid: str) -> int:
        return self._locate(uid)[4]

    @property
    def total_frames(self) -> int:
        return sum(w[2] for w in self._where.values())

    @property
    def total_samples(self) -> int:
        return sum(w[4] for w in self._where.values())

    def _rows(self, part: str, key: str):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if (part, key) not in self._handles:
            array_dir = os.path.join(part_path(self.path, part), key)
            try:
                handle = ShardedRows(array_dir, read_json(os.path.join(array_dir, "zarr.json")), fs.open_file)
            except (ValueError, KeyError):  # not our codec chain: let zarr read it
                handle = zarr.open_array(array_dir, mode="r")
            self._handles[(part, key)] = handle
        return self._handles[(part, key)]

    def _read(self, part: str, key: str, start: int, stop: int) -> np.ndarray:
        handle = self._rows(part, key)
        return handle.read(start, stop) if isinstance(handle, ShardedRows) else handle[start:stop]

    @staticmethod
    def _bounds(uid: str, what: str, n: int, start: int, stop: int | None) -> tuple[int, int]:
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise MissingDataError(f"'{uid}': {what} {start}:{stop} is out of range (it has {n})")
        return start, stop

    def read(self, uid: str, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """[frames, dim] targets of one layer; reads only the chunks that hold start:stop."""
        if layer not in self.layers:
            raise MissingDataError(
                f"{self.path}: layer {layer} is not in this cache (it has {', '.join(map(str, self.layers))}); "
                f"run extract-features with --layers {layer}"
            )
        part, f0, nf, _, _ = self._locate(uid)
        start, stop = self._bounds(uid, "frames", nf, start, stop)
        return from_storage(self._read(part, layer_key(layer), f0 + start, f0 + stop), self.spec["storage_dtype"])

    def read_audio(self, uid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 mono samples at the teacher's rate: exactly the teacher's input for this utterance."""
        part, _, _, s0, ns = self._locate(uid)
        start, stop = self._bounds(uid, "samples", ns, start, stop)
        return self._read(part, "audio", s0 + start, s0 + stop)

    def _plan(self) -> dict | None:
        """plan.json, read only when asked: at LibriSpeech scale it lists 281k files, and opening a cache
        (every training run, every `feature-cache ls`) does not need it."""
        path = plan_path(self.path)
        return read_json(path) if fs.exists(path) else None

    @property
    def skipped(self) -> list[dict]:
        """Every file left out, with its reason: refused up front (plan.json), then while decoding (markers)."""
        plan = self._plan()
        return (plan.get("skipped", []) if plan else []) + self._skipped_in_parts

    def planned_parts(self) -> list[str]:
        plan = self._plan()
        return [p["name"] for p in plan["parts"]] if plan else list(self.parts)

    def __repr__(self) -> str:
        return f"Cache({self.fingerprint}, layers={self.layers}, utterances={len(self)}, path={self.path!r})"


def open_cache(path_or_fingerprint: str, cache_dir: str | None = None) -> Cache:
    """Open by path, or by fingerprint (or a unique prefix of one) under the cache dir."""
    if fs.isdir(path_or_fingerprint):
        return Cache(path_or_fingerprint)
    if fs.is_remote(path_or_fingerprint) or os.sep in path_or_fingerprint:
        raise CacheNotFoundError(f"{path_or_fingerprint}: no such cache; list caches with: feature-cache ls")
    root = cache_dir or default_cache_dir()
    key = str(path_or_fingerprint)
    hits = [d for d in fs.listdir(root) if d.startswith(key) and not d.startswith(".")]
    if len(hits) == 1 and key:
        return Cache(os.path.join(root, hits[0]))
    if len(hits) > 1:
        raise CacheNotFoundError(f"'{key}' matches {len(hits)} caches under {root}; give more of the fingerprint")
    raise CacheNotFoundError(f"'{key}': no such cache path, nor fingerprint under {root}; list caches with: feature-cache ls")
