"""Creating caches and writing parts.

A part is the unit of commit: its arrays are written first, its marker (commits/<part>.json,
holding the part's index) last, by write-then-rename. Readers list only committed parts, so a
killed or failed writer leaves nothing visible, and the next attempt starts the part afresh.
Each part owns its arrays, so parallel writers never share a shard; within a part every shard
is written exactly once (rows are buffered to shard size), so no shard is ever rewritten
(zarr-python #3682). zarr creates the arrays' metadata; shards are encoded by store.chunks
(5x faster than zarr-python's writer, measured), and each array's final shape is set at commit.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil

import numpy as np
import zarr
import zarr.errors

from store import fs
from store.audio_modes import FLAC_DIR, encode_audio, flac_bytes
from store.chunks import chunk_sizes, encode_shard, encoder, shard_file
from store.errors import NotACacheError, SpecMismatchError, StorageRangeError, WriteError
from store.fidelity import merge_error_sums, residual_error_sums
from store.layout import Layout, attempt_dir, commit_path, compressors, layer_key, part_path, read_json
from store.modes import STORABLE_MAX, TARGET_MODES, part_arrays, stats_to_json
from store.spec import FORMAT_VERSION, fingerprint, validate_spec


def create_cache(root: str, spec: dict, provenance: dict | None = None, layout: Layout | None = None,
                 stats: dict | None = None) -> str:
    """Return the cache directory for `spec` under `root`, creating it if needed (race-safe).

    `stats` (int8/int4: per-layer channel statistics) are kept beside the spec, which holds their digest."""
    spec = validate_spec(spec)
    fp = fingerprint(spec)
    root = fs.resolve(root)
    path = os.path.join(root, fp)
    if fs.exists(os.path.join(path, "zarr.json")):
        found = zarr.open_group(path, mode="r").attrs.get("distilcache", {}).get("fingerprint")
        if found != fp:
            raise SpecMismatchError(f"{path}: holds cache {found}, not {fp}; remove it with feature-cache rm")
        return path
    layout = layout or Layout()
    meta = {"format_version": FORMAT_VERSION, "fingerprint": fp, "spec": spec, "provenance": provenance or {},
            "layout": layout.to_dict(), "stats": stats_to_json(stats) if stats else None}
    if fs.is_remote(root):  # no rename on object stores: parts first, the root metadata (what readers look for) last
        with fs.remote_errors(root):
            _shared_group(os.path.join(path, "parts"))  # never "w": that would clear a concurrent creator's parts
            _write_codebooks(_shared_group(path), stats)
            _shared_group(path).attrs["distilcache"] = meta
        return path
    if fs.isdir(path):
        raise NotACacheError(f"{path}: exists but holds no cache metadata (zarr.json), e.g. after an interrupted rm; "
                             f"remove it with: feature-cache rm {path}")
    tmp = os.path.join(root, f".tmp-{fp}-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(tmp, mode="w")
        group.attrs["distilcache"] = meta
        group.create_group("parts")
        _write_codebooks(group, stats)
        os.makedirs(os.path.join(tmp, "commits"))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        hint = "free some space" if e.errno == errno.ENOSPC else "check the path and its permissions"
        raise WriteError(f"{root}: cannot create a cache there ({e.strerror or e}); {hint} and re-run") from None
    try:
        os.rename(tmp, path)  # atomic; loses to a concurrent creator of the same spec, which is fine
        fs.fsync_dir(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(path, "zarr.json")):
            raise
    return path


def _shared_group(path: str):
    """open_group(mode="a") that a concurrent creator of the same group cannot fail: between zarr's look and its
    create, another process may create it (ContainsGroupError, seen on S3 with two extractors); then it is opened."""
    try:
        return zarr.open_group(path, mode="a")
    except zarr.errors.ContainsGroupError:
        return zarr.open_group(path, mode="r+")


def _write_codebooks(group, stats: dict | None) -> None:
    """A codebook mode's codebooks, as arrays codebooks/layer_K beside the parts (too large for the root attributes)."""
    for k, v in sorted((stats or {}).items()):
        if "codebooks" in v:
            cb = np.ascontiguousarray(v["codebooks"], np.float32)
            group.require_group("codebooks").create_array(f"layer_{k}", shape=cb.shape, dtype="float32", chunks=cb.shape)[...] = cb


LEASE = ".lock"  # inside an attempt directory: held (flock) by its live writer, released by the kernel when it dies


def _take_lease(path: str) -> int | None:
    """An attempt's lease: orphan cleanup (extract.run.remove_orphans) never removes an attempt whose writer is alive,
    say a dask task outliving the coordinator that started it. Local filesystems; object stores keep no orphans' cleanup."""
    if fs.is_remote(path):
        return None
    import fcntl

    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LEASE), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def audio_digest(audio: np.ndarray) -> str:
    """64-bit content hash of the waveform the teacher saw; recorded per utterance."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()[:16]


class PartWriter:
    """Streams utterances into one attempt at a part; memory stays at one shard per array.

    The attempt writes its own directory (parts/<part>.<token>), so a retried dask task, or a second
    process, never touches another attempt's files; the commit marker names the directory that counts,
    and a part is published at most once (store.fs.publish_json)."""

    def __init__(self, cache: str, part: str, layers: list[int], dim: int, storage_dtype: str, layout: Layout,
                 stats: dict | None = None, audio: str = "float32", corpus: str | None = None, measure: bool = True):
        self.measure = measure  # False where the values given are not exact (an import of already-coded rows): no error is recorded
        self.cache, self.part, self.layers, self.dim = cache, part, list(layers), dim
        self.corpus = corpus  # the --corpus input every utterance of this part came from (its record in the marker)
        self.storage_dtype, self.layout, self.stats, self.audio = storage_dtype, layout, stats, audio
        self.mode = TARGET_MODES[storage_dtype]
        if self.mode.needs_stats and not stats:
            raise ValueError(f"storage {storage_dtype} needs per-layer statistics")
        self.index: dict[str, list] = {"ids": [], "frames": [], "samples": [], "sha256": [], "sources": []}
        self._unsynced: list[str] = []  # FLAC files written, durable only at commit
        self.clipped = 0
        self.bytes = 0  # written by this attempt (shards, FLAC files): `feature-cache ls` sums them, no file walk
        self.error: dict[int, dict] = {}  # lossy modes: layer -> store.fidelity.error_sums over this part's rows
        # sha256 of every stored array's rows in order (and of the FLAC files): verify's check that the values are these,
        # in this order; a crc32c only says a chunk is what was written to it, not whose rows it holds
        self._digests: dict = {}  # array key (or FLAC_DIR) -> hashlib.sha256
        self.dir = attempt_dir(part)
        self._path = part_path(cache, self.dir)
        self._guard(self._create)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            self.abort()
            hint = "free some space" if e.errno == errno.ENOSPC else "check the path and its permissions"
            raise WriteError(f"{self._path}: {e.strerror or e}; {hint} and re-run (only this part is redone)") from None

    def _create(self) -> None:
        self._lease = _take_lease(self._path)
        group = zarr.open_group(self._path, mode="a")  # a fresh directory (its token is new): only the lease is in it
        self._arrays, self._buffers, self._rows, self._encoders, self._dtypes = {}, {}, {}, {}, {}
        self._sizes: dict[str, list[np.ndarray]] = {}  # array key -> each shard's chunk sizes (the marker's "shards")
        arrays = part_arrays(self.layers, self.dim, self.storage_dtype, self.audio, self.layout)
        for key, (dtype, tail, chunk, shard) in arrays.items():
            self._make(group, key, tail, np.dtype(dtype), chunk, shard)

    def _make(self, group, key: str, tail: tuple, dtype: np.dtype, chunk: int, shard: int) -> None:
        chunk_bytes = chunk * int(np.prod(tail or (1,))) * dtype.itemsize
        attrs = {"storage_dtype": self.storage_dtype} if key != "audio" else {"storage_dtype": self.audio}
        self._arrays[key] = group.create_array(
            key, shape=(0, *tail), dtype=dtype, chunks=(chunk, *tail), shards=(shard, *tail),
            compressors=compressors(self.layout.codec, dtype.itemsize, chunk_bytes), fill_value=0, attributes=attrs,
        )
        self._encoders[key] = encoder(self.layout.codec, chunk_bytes)
        self._buffers[key], self._rows[key] = [], 0
        self._dtypes[key] = dtype
        self._digests[key] = hashlib.sha256()
        self._sizes[key] = []

    def add(self, uid: str, feats: dict[int, np.ndarray], audio: np.ndarray | None, source: dict | None = None,
            samples: int | None = None) -> None:
        """Append one utterance: feats[layer] is [frames, dim] float32, audio the teacher's input, source the file
        it came from ({path, size, mtime_ns, sha256}) so a changed file is noticed later. An --audio none cache may be
        given no audio (an import or conversion of one), only its sample count."""
        if audio is None and (self.audio != "none" or samples is None):
            raise ValueError(f"{uid}: audio is needed unless the cache keeps none (--audio none) and the sample count is given")
        frames = {f.shape[0] for f in feats.values()}
        if len(frames) != 1 or set(feats) != set(self.layers):
            raise ValueError(f"{uid}: expected layers {self.layers} with equal frame counts, got {sorted(feats)} {frames}")
        limit = STORABLE_MAX.get(self.storage_dtype)
        for layer, f in feats.items():  # the last line of defence (imports, conversions): no value is stored as inf or NaN
            if not np.isfinite(f).all() or limit and f.size and np.abs(f).max() > limit:
                raise StorageRangeError(f"{uid}: layer {layer} holds values that --storage {self.storage_dtype} cannot store "
                                        f"(non-finite, or beyond {limit or 'float32'}); store as float32 or bfloat16")
        measure = self.mode.needs_stats and self.measure  # the error of every stored row, not only of the statistics' sample
        for layer, f in feats.items():
            stats = self.stats[layer] if self.stats else None
            encoded, residual = self.mode.encode_measured(f, stats) if measure else (self.mode.encode(f, stats), None)
            for suffix, stored in encoded.items():
                self._buffers[layer_key(layer) + suffix].append(stored)
            if measure:
                self.error[layer] = merge_error_sums(self.error.get(layer), residual_error_sums(f, residual))
        stored_audio, clipped = encode_audio(audio, self.audio) if audio is not None else (None, 0)
        self.clipped += clipped
        if stored_audio is not None and self.audio != "flac":
            self._buffers["audio"].append(stored_audio)
        n = len(audio) if audio is not None else int(samples)
        digest = audio_digest(audio) if audio is not None else None
        for col, val in zip(self.index, (uid, frames.pop(), n, digest, source), strict=True):
            self.index[col].append(val)
        if self.audio == "flac":
            name = os.path.join(self._path, FLAC_DIR, f"{len(self.index['ids']) - 1}.flac")
            blob = flac_bytes(stored_audio, self._sample_rate())
            self._digests.setdefault(FLAC_DIR, hashlib.sha256()).update(blob)
            self._guard(fs.write_bytes, name, blob, False)  # made durable all at once at commit (fs.make_durable)
            self._unsynced.append(name)
            self.bytes += len(blob)
        self._guard(self._flush, False)

    def _sample_rate(self) -> int:
        """The teacher's sample rate, for FLAC headers (from the cache's spec, read once)."""
        if not hasattr(self, "_rate"):
            self._rate = int(read_json(os.path.join(self.cache, "zarr.json"))["attributes"]["distilcache"]["spec"]
                             ["preprocessing"]["sample_rate"])
        return self._rate

    def _flush(self, final: bool) -> None:
        for key, buf in self._buffers.items():
            array = self._arrays[key]
            shard, chunk = array.shards[0], array.chunks[0]
            pending = sum(len(b) for b in buf)
            if pending < shard and not final or pending == 0:
                continue
            data = np.concatenate(buf)
            n = len(data) if final else (len(data) // shard) * shard
            self._digests[key].update(np.ascontiguousarray(data[:n], self._dtypes[key]).tobytes())
            for first in range(0, n, shard):
                index = (self._rows[key] + first) // shard
                name = shard_file(os.path.join(self._path, key), index, array.ndim)
                blob = encode_shard(data[first : min(n, first + shard)], chunk, shard // chunk, self._encoders[key])
                fs.write_bytes(name, blob)  # durable (file and directory entry) before the commit marker names it
                self.bytes += len(blob)
                self._sizes[key].append(chunk_sizes(blob, shard // chunk))
            self._rows[key] += n
            self._buffers[key] = [data[n:]] if n < len(data) else []

    def commit(self, skipped: list[dict] | None = None) -> dict:
        """Write the tail, then publish the marker; returns the part's marker (another attempt's, if it won)."""
        self._guard(self._flush, True)
        self._guard(fs.make_durable, self._unsynced, os.path.join(self._path, FLAC_DIR))  # before the marker names them
        marker = {"part": self.part, "dir": self.dir, **self.index, "skipped": skipped or [], "audio_clipped": self.clipped,
                  "total_frames": self._rows[layer_key(self.layers[0])], "total_samples": sum(self.index["samples"])}
        recordings = {u: s["recording"] for u, s in zip(self.index["ids"], self.index["sources"], strict=True) if s and s.get("recording")}
        if recordings:  # in the index too (the held-out split needs them; sources.npz is not read by training)
            marker["recordings"] = recordings
        if self.corpus:
            marker["corpus"] = self.corpus
        marker["bytes"] = self.bytes
        marker["digests"] = {k: h.hexdigest() for k, h in sorted(self._digests.items())}
        # every shard's chunk sizes: an object store's reader takes them with the marker, one request per part, instead
        # of one per array and shard for its index (kept out of index.json: only a remote reader reads them)
        marker["shards"] = {k: base64.b64encode(np.concatenate(v).tobytes() if v else b"").decode()
                            for k, v in sorted(self._sizes.items())}
        if self.error:
            marker["error"] = {str(k): v for k, v in sorted(self.error.items())}
        if not self._guard(self._publish, marker):
            self.abort()  # another attempt committed this part first: its files are the part, ours go
            return read_json(commit_path(self.cache, self.part))
        self._release()  # the marker names the directory now: no cleanup can take it
        return marker

    def _release(self) -> None:
        lease, self._lease = getattr(self, "_lease", None), None
        if lease is not None:
            try:
                os.remove(os.path.join(self._path, LEASE))
            except OSError:
                pass
            os.close(lease)

    def _publish(self, marker: dict) -> bool:
        for key, array in self._arrays.items():  # metadata only: growing a zarr array touches no chunk
            array.resize((self._rows[key], *array.shape[1:]))
        group = zarr.open_group(self._path, mode="r+")
        group.attrs["index"] = {k: marker[k] for k in ("ids", "frames", "samples")}
        return fs.publish_json(commit_path(self.cache, self.part), marker)

    def abort(self) -> None:
        """Remove this attempt's own directory (never another's)."""
        try:
            self._release()
            fs.rmtree(self._path)
        except OSError:  # the store is what failed; the attempt stays invisible without a marker naming it
            pass
