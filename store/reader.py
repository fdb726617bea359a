"""The read API (DESIGN.md): open a cache, read any frame range of any utterance.

A Cache holds only paths and the index; array handles are opened lazily per process, so a
Cache can be handed to DataLoader workers (pickled or forked) and each opens its own.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict

import numpy as np
import zarr

from store import fs
from store.audio_modes import FLAC_DIR, decode_audio, read_flac
from store.chunks import ShardedRows, meta_problem
from store.committed import Location, committed_parts
from store.errors import CacheNotFoundError, CorruptDataError, FormatVersionError, MissingDataError, NotACacheError
from store.index import covering, list_markers, marker_problem, read_index, read_markers, read_sources
from store.layout import Layout, commit_path, index_path, layer_key, part_path, plan_path, read_json
from store.modes import TARGET_MODES, part_arrays, stats_from_json
from store.remote_rows import remote_rows
from store.source_table import SourceTable
from store.spec import FORMAT_VERSION, UPGRADABLE

_HANDLES_LOCK = threading.Lock()
MAX_OPEN_ARRAYS = 64  # per process: ~16 parts' layers and audio


def check_format(path: str, version, current: int = FORMAT_VERSION, what: str = "cache") -> None:
    """One line for a cache (or an export: `current` TARGETS_VERSION) of another format: what it is and what to do."""
    if version == current:
        return
    if isinstance(version, int) and version > current:
        raise FormatVersionError(f"{path}: {what} format {version} is newer than this distilcache reads ({current}); "
                                 "upgrade distilcache")
    if what == "cache" and version in UPGRADABLE:
        raise FormatVersionError(f"{path}: cache format {version} is older than this distilcache reads ({current}); run "
                                 f"`feature-cache upgrade {path}` (rewrites its metadata in place, seconds; targets untouched)")
    raise FormatVersionError(f"{path}: {what} format {version} was written by an older distilcache (this one reads "
                             f"{current}); re-run extract-features to build a format-{current} cache, then remove "
                             "this one with feature-cache rm")


def read_meta(path: str) -> dict:
    """The root attributes of the cache at `path` (spec, layout, stats), without loading its index."""
    return read_json(os.path.join(fs.resolve(path), "zarr.json"))["attributes"]["distilcache"]


def read_stats(path: str, meta: dict) -> dict | None:
    """A lossy cache's per-layer statistics: mean and std from the root attributes, and a codebook mode's codebooks
    from their arrays (`codebooks/layer_K`). None for float modes."""
    stats = stats_from_json(meta.get("stats"))
    if stats and TARGET_MODES[meta["spec"]["storage_dtype"]].codebooks:
        for k in stats:
            name = os.path.join(fs.resolve(path), "codebooks", f"layer_{k}")
            try:
                stats[k]["codebooks"] = np.asarray(zarr.open_array(name, mode="r")[...], np.float32)
            except (FileNotFoundError, KeyError, ValueError, OSError) as e:
                raise CorruptDataError(f"{name}: codebooks missing or unreadable ({type(e).__name__}); the cache cannot be "
                                       "decoded: re-create it (feature-cache rm, then convert or extract again)") from None
    return stats


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
        except (OSError, ValueError, UnicodeDecodeError, AttributeError) as e:
            raise NotACacheError(f"{meta_file}: unreadable ({type(e).__name__}); remove the cache with feature-cache rm") from None
        if not meta or not isinstance(meta, dict):
            raise NotACacheError(f"{path}: a zarr group, but not a distilcache cache")
        check_format(path, meta.get("format_version"))
        try:
            self.fingerprint: str = meta["fingerprint"]
            self.spec: dict = meta["spec"]
            self.provenance: dict = meta.get("provenance", {})
            self.layout = Layout(**meta["layout"])
            self.layers: list[int] = list(self.spec["layers"])
            self.mode = TARGET_MODES[self.spec["storage_dtype"]]
            self._suffixes = tuple(self.mode.arrays(self.spec["dim"]))  # the arrays each layer keeps; asked on every read
            self.audio_mode: str = self.spec.get("audio", "float32")
            self._stats_json = meta.get("stats")
        except (KeyError, TypeError, ValueError) as e:
            raise NotACacheError(f"{meta_file}: damaged cache metadata ({type(e).__name__}: {e}); remove the cache with "
                                 "feature-cache rm and re-extract") from None
        self.refresh()

    def _stat_key(self, path: str) -> list[int] | None:
        """fs.file_stamp of a file of this cache; None on object stores (there a refresh always reloads)."""
        return None if fs.is_remote(self.path) else fs.file_stamp(path)

    def _stamp(self, names: list[str], index_key: tuple | None, direct: list[str]) -> tuple | None:
        """What a refresh saw, cheaply comparable later (local caches): the marker names, index.json's stat and the stats
        of the markers read directly, each taken before the file was read (a change during the read shows later)."""
        if fs.is_remote(self.path):
            return None
        return tuple(names), index_key, tuple(self._stat_key(commit_path(self.path, p)) for p in direct)

    def refresh_if_changed(self) -> bool:
        """refresh() unless nothing was committed, uncommitted or consolidated since the last one (a LibriSpeech-sized
        index takes seconds to load; its stamp, a listing and a few stats). Returns whether it reloaded."""
        names = list_markers(self.path)
        if self._seen is not None and self._stamp(names, self._stat_key(index_path(self.path)), self._seen[1]) == self._seen[0]:
            return False
        self.refresh()
        return True

    @property
    def consolidated(self) -> bool:
        """Whether index.json (and sources.npz, once read) cover exactly the committed parts: consolidate() would
        rewrite them unchanged."""
        return self._index_exact and self._sources_exact is not False

    def refresh(self) -> None:
        """Load the index of every committed part: the consolidated index plus the markers it does not cover."""
        names = list_markers(self.path)
        index_key = self._stat_key(index_path(self.path))
        index = read_index(self.path)
        markers = {p: index[p] for p in names if p in index and marker_problem(p, index[p]) is None}
        direct = [p for p in names if p not in markers]
        stamp = self._stamp(names, index_key, direct)
        markers.update(read_markers(self.path, direct))  # a bad index entry: its marker decides
        self._index_exact = not direct and len(index) == len(markers)
        self._sources_exact: bool | None = None  # known once sources() has read sources.npz
        self._seen = None if stamp is None else (stamp, direct)
        self.__dict__.update(vars(committed_parts(self.path, self.spec, self.provenance, markers)))
        self._part_of_dir = {d: p for p, d in self.part_dirs.items()}
        self.utterance_ids: list[str] = sorted(self._where)
        self._handles: OrderedDict = OrderedDict()
        self._shards: OrderedDict = OrderedDict()  # part dir -> its arrays' chunk sizes (store.remote_rows.part_shards)
        self._shard_bytes = 0
        self._pid = os.getpid()
        self._sources: SourceTable | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # no file handle crosses a process boundary (and the LRU stays an LRU)
        state["_shards"], state["_shard_bytes"] = OrderedDict(), 0
        return state

    def __contains__(self, uid: str) -> bool:
        return uid in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _locate(self, uid: str) -> Location:
        try:
            d, i = self._where[uid]
        except KeyError:
            raise MissingDataError(f"{self.path}: utterance '{uid}' is not in this cache ({len(self)} utterances)") from None
        frames, samples, first_frames, first_samples = self._rows_by_dir[d]
        return Location(d, first_frames[i], frames[i], first_samples[i], samples[i])

    def ids_by_part(self) -> dict[str, list[str]]:
        """Every committed part's utterance ids, in the order the part holds them."""
        return {p: self.part_uids(p) for p in self.parts}

    def part_uids(self, part: str) -> list[str]:
        return list(self._ids_by_dir.get(self.part_dirs[part], []))

    def part_of(self, uid: str) -> str:
        """The committed part holding `uid`."""
        return self._part_of_dir[self._locate(uid).dir]

    def num_frames(self, uid: str) -> int:
        return self._locate(uid).frames

    def num_samples(self, uid: str) -> int:
        return self._locate(uid).samples

    def _rows(self, part_dir: str, key: str):
        """An open array, kept in a small LRU: at full size a worker touches every part each epoch, and
        unbounded handles (with their shard indexes) grew ~0.3 GB per DataLoader worker per epoch."""
        if self._pid != os.getpid():
            self._handles, self._pid = OrderedDict(), os.getpid()
        with _HANDLES_LOCK:  # a crop's arrays may be fetched by several threads at once (remote caches: train.data)
            handle = self._handles.get((part_dir, key))
            if handle is not None:
                self._handles.move_to_end((part_dir, key))
        if handle is None and fs.is_remote(self.path):
            handle = remote_rows(self, part_dir, key)
        if handle is None:
            array_dir = os.path.join(part_path(self.path, part_dir), key)
            try:
                meta = read_json(os.path.join(array_dir, "zarr.json"))
            except (OSError, ValueError) as e:
                raise CorruptDataError(f"{array_dir}: missing or unreadable array metadata ({type(e).__name__}); "
                                       "run feature-cache verify, then extract-features --repair to redo the part") from None
            part = self._part_of_dir.get(part_dir)
            frames, samples = self.part_rows.get(part, (0, 0))
            expected = self._expected_arrays().get(key)
            problem = ("not an array of this cache's spec" if expected is None or part is None
                       else meta_problem(array_dir, meta, expected, samples if key == "audio" else frames, self.layout.codec))
            if problem:  # never decode with hand-edited metadata: the values would be wrong, silently
                raise CorruptDataError(f"{problem}; run feature-cache verify, then extract-features --repair to redo the part")
            handle = ShardedRows(array_dir, meta)
        with _HANDLES_LOCK:
            self._handles[(part_dir, key)] = handle
            while len(self._handles) > MAX_OPEN_ARRAYS:
                self._handles.popitem(last=False)
        return handle

    def _expected_arrays(self) -> dict:
        if not hasattr(self, "_arrays_expected"):
            self._arrays_expected = part_arrays(self.layers, self.spec["dim"], self.spec["storage_dtype"], self.audio_mode, self.layout)
        return self._arrays_expected

    def _read(self, part: str, key: str, start: int, stop: int) -> np.ndarray:
        return self._rows(part, key).read(start, stop)

    @staticmethod
    def _bounds(uid: str, what: str, n: int, start: int, stop: int | None) -> tuple[int, int]:
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise MissingDataError(f"'{uid}': {what} {start}:{stop} is out of range (it has {n})")
        return start, stop

    def read_stored(self, uid: str, layer: int, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """The stored form of read(): the arrays the storage mode keeps ({"": codes, "_scale": ...} for int8/int4),
        for a loader that ships them as they are and decodes on the training device (decode())."""
        if layer not in self.layers:
            raise MissingDataError(
                f"{self.path}: layer {layer} is not in this cache (it has {', '.join(map(str, self.layers))}); "
                f"run extract-features with --layers {layer}"
            )
        at = self._locate(uid)
        start, stop = self._bounds(uid, "frames", at.frames, start, stop)
        key = layer_key(layer)
        return {sfx: self._read(at.dir, key + sfx, at.first_frame + start, at.first_frame + stop) for sfx in self._suffixes}

    @functools.cached_property
    def stats(self) -> dict | None:
        """Per-layer statistics of int8/int4/pq caches (read when first needed: pq's codebooks are arrays)."""
        return read_stats(self.path, {"stats": self._stats_json, "spec": self.spec})

    def decode(self, layer: int, stored: dict[str, np.ndarray]) -> np.ndarray:
        """Float rows from read_stored()'s arrays."""
        return self.mode.decode(stored, self.stats[layer] if self.stats else None)

    def read(self, uid: str, layer: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """[frames, dim] targets of one layer as floats (float16 for float16 caches, else float32); reads only the
        chunks that hold start:stop."""
        return self.decode(layer, self.read_stored(uid, layer, start, stop))

    def read_audio(self, uid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 mono samples at the teacher's rate: exactly the teacher's input (int16 caches: to 1/32768)."""
        at = self._locate(uid)
        part, s0 = at.dir, at.first_sample
        start, stop = self._bounds(uid, "samples", at.samples, start, stop)
        if self.audio_mode == "none":
            raise MissingDataError(f"{self.path}: keeps no audio (--audio none); read '{uid}' from its source file "
                                   "(cache.source(uid)), as train-student does")
        if self.audio_mode == "flac":
            name = os.path.join(part_path(self.path, part), FLAC_DIR, f"{self._where[uid][1]}.flac")
            try:
                with fs.open_file(name, "rb") as f:
                    return decode_audio(read_flac(f, start, stop), "flac")
            except FileNotFoundError:
                raise CorruptDataError(f"{name}: missing; run feature-cache verify, then extract-features --repair to redo the "
                                       "part") from None
        return decode_audio(self._read(part, "audio", s0 + start, s0 + stop), self.audio_mode)

    def sources(self) -> SourceTable:
        """uid -> the record of the file it was extracted from ({path, size, mtime_ns, sha256}), for every committed
        utterance that has one: the consolidated sources.npz plus the markers it does not cover, read once. A table
        (store.source_table): its columns for what compares many records at once, a dict per record when asked."""
        if self._sources is None:
            table = read_sources(self.path)
            entries = {p: {"dir": d, "ids": self._ids_by_dir[d]} for p, d in self.part_dirs.items()}
            self._sources_exact = table.parts == self.parts and table.dirs == [self.part_dirs[p] for p in self.parts] \
                and not self.damaged
            self._sources = covering(table, entries, lambda parts: read_markers(self.path, parts))
        return self._sources

    def source(self, uid: str) -> dict | None:
        """The record of the file `uid` was extracted from (None if not recorded)."""
        self._locate(uid)
        return self.sources().get(uid)

    def segment(self, uid: str) -> dict | None:
        """Where `uid`'s audio came from: {recording, path, start, stop, sample_rate, channel}, start/stop in samples at
        the file's own rate (stop None: to the end of the file; channel None: the mean of all channels). None when the
        cache records no source (an HDF5 import). Maps a segment's targets back to its recording."""
        record = self.source(uid)
        if record is None:
            return None
        return {"recording": record.get("recording", uid), "path": record["path"], "start": record.get("start", 0),
                "stop": record.get("stop"), "sample_rate": record.get("sample_rate"), "channel": record.get("channel")}

    def corpora(self) -> dict[str, dict]:
        """Every --corpus input the cache holds utterances of: {input: {utterances, hours}}. Two inputs may name the same
        audio under other ids (a dev set under the training root, lhotse cuts of Kaldi segments): training picks one."""
        rate = self.spec["preprocessing"]["sample_rate"]
        out: dict[str, dict] = {}
        for part, corpus in self.part_corpus.items():
            entry = out.setdefault(corpus, {"utterances": 0, "hours": 0.0})
            entry["utterances"] += len(self._ids_by_dir.get(self.part_dirs[part], []))
            entry["hours"] += self.part_rows[part][1] / rate / 3600
        return {c: {"utterances": e["utterances"], "hours": round(e["hours"], 4)} for c, e in sorted(out.items())}

    def corpus_of(self, uid: str) -> str:
        return self.part_corpus[self.part_of(uid)]

    @property
    def has_recordings(self) -> bool:
        """Whether any utterance is a segment of a longer recording (else each is its own recording)."""
        return bool(self._recordings)

    def recording(self, uid: str) -> str:
        """The recording `uid` belongs to: the held-out split keeps a recording's segments on one side."""
        return self._recordings.get(uid, uid)

    def plan(self) -> dict:
        """plan.json (small: counts, pending part names and files refused up front), read only when asked, and checked
        here for every reader (extraction, import, convert, info): {'parts': [dict] or None when no readable plan says
        what was planned, 'skipped': [dict]}. Progress information only: a lost or damaged plan is rebuilt by the next
        extract-features."""
        path = plan_path(self.path)
        try:
            plan = read_json(path) if fs.exists(path) else {}
        except (OSError, ValueError, UnicodeDecodeError):
            plan = {}
        plan = plan if isinstance(plan, dict) else {}
        parts, skipped = plan.get("parts"), plan.get("skipped")
        return {"parts": [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else None,
                "skipped": [s for s in skipped if isinstance(s, dict)] if isinstance(skipped, list) else []}

    @property
    def skipped(self) -> list[dict]:
        """Every file left out, with its reason: refused up front (plan.json), then while decoding (markers)."""
        return self.plan()["skipped"] + [s for s in self._skipped_in_parts if isinstance(s, dict) and s.get("uid") not in self._where]

    def pending(self) -> dict:
        """What the last extraction planned and has not committed: {'parts': n, 'utterances': n} (0s when complete);
        'unknown' is True when no readable plan.json says what was planned (lost, damaged): nothing claims completeness."""
        planned = self.plan()["parts"]
        if planned is None:
            return {"parts": len(self.damaged), "utterances": 0, "unknown": bool(self.parts or self.damaged)}
        todo = [p for p in planned if p.get("name") not in self.part_dirs]
        count = sum(p["utterances"] if type(p.get("utterances")) is int and p["utterances"] > 0 else 0 for p in todo)
        return {"parts": len(todo) + len(self.damaged), "utterances": count, "unknown": False}

    def __repr__(self) -> str:
        return f"Cache({self.fingerprint}, layers={self.layers}, utterances={len(self)}, path={self.path!r})"


def open_cache(path_or_fingerprint: str, cache_dir: str | None = None) -> Cache:
    """Open by path, or by fingerprint (or a unique prefix of one) under the cache dir."""
    if fs.isdir(path_or_fingerprint):
        return Cache(path_or_fingerprint)
    root, key = cache_dir or default_cache_dir(), str(path_or_fingerprint)
    if fs.is_remote(key) or os.sep in key:  # ROOT/3f2a9c0e5d: a unique prefix of a cache under that root, as docs write it
        root, key = key.rstrip("/").rsplit("/", 1) if "/" in key.rstrip("/") else (key, "")
        if not key or not fs.isdir(root):
            raise CacheNotFoundError(f"{path_or_fingerprint}: no such cache; list caches with: feature-cache ls")
    hits = [d for d in fs.listdir(root) if d.startswith(key) and not d.startswith(".")]
    if len(hits) == 1 and key:
        return Cache(os.path.join(root, hits[0]))
    if len(hits) > 1:
        raise CacheNotFoundError(f"'{key}' matches {len(hits)} caches under {root}; give more of the fingerprint")
    raise CacheNotFoundError(f"'{key}': no such cache path, nor fingerprint under {root}; list caches with: feature-cache ls")
