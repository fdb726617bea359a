"""Direct row reads from our own sharded zarr v3 arrays on a local disk.

Why by hand: zarr-python 3.1 spends ~0.4 ms of event-loop work per inner chunk, so a
780-frame crop of three layers cost 17-44 ms (measured, docs/benchmarks.md) — below what a
GPU student step consumes. The on-disk format is plain zarr v3 sharding (index at the end,
crc32c on the index and on every inner chunk); this reader decodes exactly the codec chains
store.layout writes and leaves everything else (and all writing, and `verify`) to zarr.
"""

from __future__ import annotations

import base64
import os

import google_crc32c
import numcodecs
import numpy as np

from store import fs
from store.errors import CorruptDataError

_MISSING = np.uint64(2**64 - 1)
# blosc's own thread pool competes with the teacher's and the DataLoader's threads for cores;
# we parallelise across processes (dask workers, loader workers) instead.
numcodecs.blosc.use_threads = False


def shard_file(array_dir: str, index: int, ndim: int) -> str:
    """zarr v3's default chunk key for shard `index` along the first axis."""
    return os.path.join(array_dir, "c", f"{index}/0" if ndim == 2 else str(index))


def _crc_ok(raw: bytes) -> bool:
    """zarr's crc32c codec: the last 4 bytes are the little-endian crc32c of the rest."""
    return google_crc32c.value(raw[:-4]) == int.from_bytes(raw[-4:], "little")


def _with_crc(payload: bytes) -> bytes:
    return bytes(payload) + google_crc32c.value(payload).to_bytes(4, "little")


CHAINS = {"blosc-zstd": ["bytes", "blosc", "crc32c"], "zstd": ["bytes", "zstd", "crc32c"], "none": ["bytes", "crc32c"]}
_LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}


def meta_problem(array_dir: str, meta: dict, expected: tuple, rows: int, codec: str) -> str | None:
    """Why an array's zarr.json is not what the writer wrote for it (the spec, the layout and the commit marker
    decide that), or None. Every field that changes decoded values is compared: a hand-edited data type, shape,
    chunk or shard shape, codec chain or byte order is refused here, before any value is read."""
    dtype, tail, chunk_rows, shard_rows = expected
    try:
        sharding = meta["codecs"][0]
        config = sharding["configuration"]
        inner = config["codecs"]
        got = (meta["data_type"], tuple(meta["shape"]), tuple(config["chunk_shape"]),
               tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]), [c["name"] for c in inner],
               [sharding["name"], len(meta["codecs"]), config.get("index_location", "end")],
               _LITTLE if inner[0] == {"name": "bytes"} and np.dtype(dtype).itemsize == 1 else inner[0],  # zarr: no byte order for 1 B
               config.get("index_codecs"))
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        return f"{array_dir}: unreadable array metadata ({type(e).__name__})"
    want = (dtype, (rows, *tail), (chunk_rows, *tail), (shard_rows, *tail), CHAINS[codec], ["sharding_indexed", 1, "end"],
            _LITTLE, [_LITTLE, {"name": "crc32c"}])
    for what, g, w in zip(("data_type", "shape", "chunk shape", "shard shape", "codecs", "sharding", "bytes codec", "index codecs"),
                          got, want, strict=True):
        if g != w:
            return f"{array_dir}: {what} is {g}, the spec and commit marker say {w}"
    return None


def _decoder(codecs: list[dict]):
    names = [c["name"] for c in codecs]
    if names == ["bytes", "crc32c"]:
        return lambda b: b
    if names == ["bytes", "blosc", "crc32c"]:
        return numcodecs.Blosc().decode
    if names == ["bytes", "zstd", "crc32c"]:
        return numcodecs.Zstd().decode
    return None


def expected_meta(expected: tuple, rows: int, codec: str) -> dict:
    """The zarr.json fields ShardedRows reads, as the writer writes them for this spec, layout and row count (what
    meta_problem compares a stored zarr.json with): an object store's reader builds its arrays from them and spends no
    request per array on its zarr.json."""
    dtype, tail, chunk_rows, shard_rows = expected
    return {"data_type": str(np.dtype(dtype)), "shape": [rows, *tail],
            "chunk_grid": {"configuration": {"chunk_shape": [shard_rows, *tail]}},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [chunk_rows, *tail], "codecs": [{"name": n} for n in CHAINS[codec]], "index_location": "end"}}]}


def chunk_sizes(blob: bytes, per_shard: int) -> np.ndarray:
    """The bytes of each inner chunk (0: missing) of a shard encode_shard made, from its index: what a commit marker
    keeps (store.writer) so that a reader of an object store needs no request for a shard's index."""
    index = np.frombuffer(blob[-(16 * per_shard + 4) : -4], dtype="<u8").reshape(per_shard, 2)
    return np.where(index[:, 0] == _MISSING, 0, index[:, 1]).astype("<u4")


def index_from_sizes(sizes: np.ndarray) -> np.ndarray:
    """A shard's index (offset, bytes per chunk) from its chunk sizes: encode_shard stores chunks back to back in order,
    the missing ones (size 0) only at the end. A wrong size reads wrong bytes, which fail their chunk's crc32c: loud."""
    offsets = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.uint64)]).astype(np.uint64)
    index = np.stack([offsets, sizes.astype(np.uint64)], 1)
    index[sizes == 0] = _MISSING
    return index


class ShardedRows:
    """Reads rows [start, stop) of one array, touching only the inner chunks that hold them. `sizes`: every shard's chunk
    sizes in order (chunk_sizes, from the part's commit marker), else each shard's index is read from its tail."""

    def __init__(self, array_dir: str, meta: dict, sizes: np.ndarray | None = None):
        self.dir = array_dir
        self.shape = tuple(meta["shape"])
        shard = meta["codecs"][0]
        if shard["name"] != "sharding_indexed" or shard["configuration"].get("index_location", "end") != "end":
            raise ValueError("not a distilcache-sharded array")
        self.shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        self.chunk_shape = tuple(shard["configuration"]["chunk_shape"])
        self.chunk_rows = self.chunk_shape[0]
        self.per_shard = self.shard_rows // self.chunk_rows
        self.dtype = np.dtype(meta["data_type"])
        self.decode = _decoder(shard["configuration"]["codecs"])
        if self.decode is None:
            raise ValueError("codec chain not handled by the direct reader")
        self._index: dict[int, np.ndarray] = {}
        shards = -(-self.shape[0] // self.shard_rows)
        self._sizes = sizes if sizes is not None and len(sizes) == shards * self.per_shard else None

    def _shard_file(self, s: int) -> str:
        return shard_file(self.dir, s, len(self.shape))

    def _shard_index(self, s: int, f=None) -> np.ndarray:
        """Shard `s`'s chunk index (offset, bytes per chunk), read once: from the open file `f`, else by one ranged read
        of the shard's tail."""
        if s not in self._index and self._sizes is not None:
            self._index[s] = index_from_sizes(self._sizes[s * self.per_shard : (s + 1) * self.per_shard])
        if s not in self._index:
            n = 16 * self.per_shard + 4
            if f is not None:
                f.seek(-n, os.SEEK_END)
                raw = f.read(n)
            else:
                raw = fs.read_range(self._shard_file(s), -n)
            if len(raw) != n or not _crc_ok(raw):
                raise CorruptDataError(f"{self._shard_file(s)}: shard index failed its crc32c checksum; run feature-cache verify")
            self._index[s] = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.per_shard, 2)
        return self._index[s]

    def _decoded(self, raw: bytes, s: int, c: int) -> np.ndarray:
        if not _crc_ok(raw):
            first = s * self.shard_rows + c * self.chunk_rows
            raise CorruptDataError(
                f"{self.dir}: chunk at rows {first}-{first + self.chunk_rows} failed its crc32c checksum; run feature-cache verify"
            )
        try:
            return np.frombuffer(self.decode(raw[:-4]), dtype=self.dtype).reshape(self.chunk_shape)
        except ValueError:  # bytes of another shape than the layout's: never reshaped into wrong values
            first = s * self.shard_rows + c * self.chunk_rows
            raise CorruptDataError(f"{self.dir}: chunk at rows {first}-{first + self.chunk_rows} does not decode to the layout's "
                                   f"{self.chunk_shape} {self.dtype}; run feature-cache verify") from None

    def _chunk(self, f, s: int, c: int) -> np.ndarray:
        offset, nbytes = self._shard_index(s, f)[c]
        if offset == _MISSING:
            return np.zeros(self.chunk_shape, self.dtype)
        f.seek(int(offset))
        return self._decoded(f.read(int(nbytes)), s, c)

    def _chunks(self, s: int, c0: int, c1: int) -> list[np.ndarray]:
        """Chunks c0..c1 of shard s, each run of chunks stored back to back fetched by one ranged read: the writer
        stores a shard's chunks in order, so a crop's chunks cost one request per array, not one each (68 GETs per
        crop on S3 before). zarr-python reads chunk by chunk (one request each), hence by hand."""
        index = self._shard_index(s)
        out: list[np.ndarray | None] = [None] * (c1 - c0 + 1)
        c = c0
        while c <= c1:
            if index[c][0] == _MISSING:
                out[c - c0] = np.zeros(self.chunk_shape, self.dtype)
                c += 1
                continue
            last = c
            while last < c1 and index[last + 1][0] == index[last][0] + index[last][1]:
                last += 1
            begin, end = int(index[c][0]), int(index[last][0] + index[last][1])
            raw = fs.read_range(self._shard_file(s), begin, end)
            if len(raw) != end - begin:
                raise CorruptDataError(f"{self._shard_file(s)}: shorter than its index says ({begin + len(raw)} < {end} bytes); "
                                       "run feature-cache verify")
            for k in range(c, last + 1):
                at = int(index[k][0]) - begin
                out[k - c0] = self._decoded(raw[at : at + int(index[k][1])], s, k)
            c = last + 1
        return out  # type: ignore[return-value]

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start,) + self.chunk_shape[1:], self.dtype)
        row = start
        while row < stop:
            s = row // self.shard_rows
            base = s * self.shard_rows
            end = min(stop, base + self.shard_rows)
            c0, c1 = (row - base) // self.chunk_rows, (end - 1 - base) // self.chunk_rows
            for c, chunk in enumerate(self._chunks(s, c0, c1), start=c0):
                first = base + c * self.chunk_rows
                lo, hi = max(row, first), min(end, first + self.chunk_rows)
                out[lo - start : hi - start] = chunk[lo - first : hi - first]
            row = end
        return out


def encoder(codec: str, chunk_bytes: int):
    """The byte encoder matching store.layout.compressors(codec) (before the crc32c)."""
    if codec == "blosc-zstd":
        return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE, blocksize=chunk_bytes).encode
    if codec == "zstd":
        return numcodecs.Zstd(level=3).encode
    return lambda a: a.tobytes()


def encode_shard(rows: np.ndarray, chunk_rows: int, per_shard: int, encode) -> bytes:
    """One zarr v3 shard (index at the end, crc32c on each chunk and the index) for `rows` (<= one shard).

    Why by hand: zarr-python 3.1 writes ~100 MB/s (measured) where the codecs alone run ~500 MB/s
    on one core, and the writer sits behind the teacher on a GPU. Inner chunks past the end of the
    data are marked missing, as zarr does; zarr-python reads these shards (tests check it).
    """
    pieces, index, offset = [], np.full((per_shard, 2), 2**64 - 1, dtype="<u8"), 0
    for c in range(per_shard):
        chunk = rows[c * chunk_rows : (c + 1) * chunk_rows]
        if len(chunk) == 0:
            break
        if len(chunk) < chunk_rows:  # edge chunk: full shape, padded with the fill value (0)
            chunk = np.concatenate([chunk, np.zeros((chunk_rows - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        payload = _with_crc(encode(np.ascontiguousarray(chunk)))
        pieces.append(payload)
        index[c] = (offset, len(payload))
        offset += len(payload)
    return b"".join(pieces) + _with_crc(index.tobytes())


def shards_record_problems(array_dir: str, expected: tuple, rows: int, text: str) -> list[str]:
    """Whether the commit marker's record of each shard's chunk sizes (what an object store's reader uses instead of the
    shards' own indexes: store.remote_rows) agrees with those indexes."""
    _, tail, chunk_rows, shard_rows = expected
    per, shards = shard_rows // chunk_rows, -(-rows // shard_rows)
    fix = "re-run extract-features with --repair to redo the part"
    try:
        sizes = np.frombuffer(base64.b64decode(text, validate=True), dtype="<u4")
    except (ValueError, TypeError):
        return [f"{array_dir}: the commit marker's record of its chunk sizes is unreadable; {fix}"]
    if len(sizes) != shards * per:
        return [f"{array_dir}: the commit marker records chunk sizes of {len(sizes) // max(per, 1)} shard(s), it has {shards}; {fix}"]
    for s in range(shards):
        raw = fs.read_range(shard_file(array_dir, s, 1 + len(tail)), -(16 * per + 4))
        if len(raw) == 16 * per + 4 and not np.array_equal(np.frombuffer(raw[:-4], dtype="<u8").reshape(per, 2),
                                                           index_from_sizes(sizes[s * per : (s + 1) * per])):
            return [f"{array_dir}: shard {s}'s chunk index is not the one its commit marker records (a reader of an object "
                    f"store would read wrong bytes, failing their crc32c); {fix}"]
    return []
