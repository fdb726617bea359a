"""Target storage modes: how a layer's targets are kept, one registry for every reader and writer (the audio's modes
are store.audio_modes; the statistics fitted on a sample and the measured fidelity are store.fidelity).

Each target mode names the arrays it keeps per layer (a suffix each: "" holds the codes, "_scale" a per-row
scale), how to encode float32 rows into them and how to decode them back. The writer, the reader, verify
and the spec all consult TARGET_MODES, so a new mode is one class here (the codebook modes ProductMode and
ResidualMode keep their codebooks as statistics). int8/int4 standardise each channel with statistics fitted on a sample of the
corpus (part of the spec, by digest) and keep one absmax scale per row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    dtype: str  # numpy dtype of the stored array
    per_channel: bool  # [rows, width] (True) or [rows] (False)


class TargetMode:
    name = ""
    lossy = False
    needs_stats = False
    codebooks = False  # its statistics hold codebooks ([groups or books, 256, width]), stored as arrays codebooks/layer_K
    recodes_exactly = True  # encode(decode(codes)) == codes: an HDF5 export (floats) imports into the same bytes

    def arrays(self, dim: int) -> dict[str, tuple[ArraySpec, int]]:
        """suffix -> (array spec, row width) of what one layer keeps."""
        raise NotImplementedError

    def encode(self, x: np.ndarray, stats: dict | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, stored: dict[str, np.ndarray], stats: dict | None) -> np.ndarray:
        raise NotImplementedError

    def encode_measured(self, x: np.ndarray, stats: dict | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """encode(), and the residual (decoded - x) the writer records the error of: decoded again by default."""
        stored = self.encode(x, stats)
        return stored, self.decode(stored, stats) - np.asarray(x, np.float32)

    def fit(self, samples: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Statistics of one layer from sample utterances ([frames, dim] each): per-channel mean and std."""
        return fit_stats(samples)


class FloatMode(TargetMode):
    def __init__(self, name: str, dtype: str):
        self.name, self.dtype, self.lossy = name, dtype, name != "float32"

    def arrays(self, dim):
        return {"": (ArraySpec(self.dtype, True), dim)}

    def encode(self, x, stats):
        if self.name != "bfloat16":
            return {"": np.ascontiguousarray(x, dtype=self.dtype)}
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))  # round to nearest even
        return {"": (rounded >> 16).astype(np.uint16)}

    def decode(self, stored, stats):
        x = stored[""]
        return (x.astype(np.uint32) << 16).view(np.float32) if self.name == "bfloat16" else x


class IntMode(TargetMode):
    """Per-channel standardisation (stats), then a per-row absmax scale and `bits`-bit signed codes."""

    needs_stats = lossy = True

    def __init__(self, name: str, bits: int):
        self.name, self.bits, self.levels = name, bits, 2 ** (bits - 1) - 1

    def arrays(self, dim):
        codes = ArraySpec("int8", True) if self.bits == 8 else ArraySpec("uint8", True)
        return {"": (codes, dim if self.bits == 8 else (dim + 1) // 2), "_scale": (ArraySpec("float32", False), 1)}

    def encode(self, x, stats):
        return self.encode_measured(x, stats, residual=False)[0]

    def encode_measured(self, x, stats, residual: bool = True):
        """The residual from the quantisation itself ((rounded - z) x std), no second decode: the writer's time for a
        lossy part went to decoding every row again to measure it (docs/benchmarks.md)."""
        z = (np.asarray(x, np.float32) - stats["mean"]) / stats["std"]
        scale = np.abs(z).max(axis=1) / self.levels
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(z / scale[:, None]), -self.levels, self.levels)
        r = ((q * scale[:, None] - z) * stats["std"]).astype(np.float32) if residual else None
        return self._pack(q.astype(np.int8), scale), r

    def _pack(self, codes: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
        if self.bits == 4:  # two signed nibbles per byte, low first
            if codes.shape[1] % 2:
                codes = np.concatenate([codes, np.zeros((len(codes), 1), np.int8)], axis=1)
            u = (codes & 0x0F).astype(np.uint8)
            codes = u[:, 0::2] | (u[:, 1::2] << 4)
        return {"": np.ascontiguousarray(codes), "_scale": scale.astype(np.float32)}

    def decode(self, stored, stats):
        codes, dim = stored[""], len(stats["mean"])
        if self.bits == 4:
            lo = (codes & 0x0F).astype(np.int8)
            hi = (codes >> 4).astype(np.int8)
            both = np.empty((len(codes), 2 * codes.shape[1]), np.int8)
            both[:, 0::2], both[:, 1::2] = lo, hi
            codes = np.where(both > 7, both - 16, both)[:, :dim]
        z = codes.astype(np.float32) * stored["_scale"][:, None]
        return z * stats["std"] + stats["mean"]


class ProductMode(TargetMode):
    """Product quantisation: per-channel standardisation, then each group of SUB channels is replaced by the index of
    the nearest of 256 centroids fitted for that group (faiss k-means on the sample). dim / SUB bytes per row: 192
    for 768 channels, an eighth of float16. Lossy (rel L2 ≈ 0.25-0.30 on HuBERT-shaped layers): its error is measured
    and kept like int8's. The codebooks are statistics too (in the spec's digest), stored as arrays `codebooks/layer_K`
    [dim / SUB, 256, SUB] beside the parts, not in the root attributes."""

    name, needs_stats, lossy, codebooks = "pq", True, True, True
    SUB, CENTROIDS = 4, 256

    def arrays(self, dim):
        return {"": (ArraySpec("uint8", True), dim // self.SUB)}

    def fit(self, samples):
        faiss = _faiss("--storage pq fits its codebooks")
        stats, z = _standardised_sample(samples, f"--storage pq fits {self.CENTROIDS} centroids per channel group")
        dim = z.shape[1]
        pq = faiss.ProductQuantizer(dim, dim // self.SUB, 8)
        pq.cp.min_points_per_centroid = 1  # small samples are fine (and faiss would warn once per sub-quantiser)
        pq.cp.niter = 20
        pq.train(z)
        stats["codebooks"] = faiss.vector_to_array(pq.centroids).reshape(dim // self.SUB, self.CENTROIDS, self.SUB).astype(np.float32)
        return stats

    def encode(self, x, stats):
        """Nearest centroid per group, by faiss (as the fit): 5 ms per 500 x 768 rows where numpy's einsum took 194 ms
        and a batched matmul 52 ms (bench/writer_error.py), which made pq extraction and conversion ~30x slower than
        int4. Always faiss, so that every writer picks the same centroid on a near-tie (one rounding, the same bytes)."""
        z = np.ascontiguousarray((np.asarray(x, np.float32) - stats["mean"]) / stats["std"], dtype=np.float32)
        return {"": _quantizer(stats["codebooks"]).compute_codes(z).reshape(len(z), -1)}

    def decode(self, stored, stats):
        codes, cb = stored[""], stats["codebooks"]
        z = cb[np.arange(cb.shape[0])[None, :], codes.astype(np.intp)].reshape(len(codes), -1)
        return z * stats["std"] + stats["mean"]


_quantizers: dict[int, tuple[np.ndarray, object]] = {}  # id(codebooks) -> (codebooks, its faiss quantizer)


def _memo(codebooks: np.ndarray, build):
    """The faiss quantizer holding `codebooks`, built (build(faiss)) once per codebooks array: pq's and rvq's."""
    found = _quantizers.get(id(codebooks))
    if found is not None and found[0] is codebooks:
        return found[1]
    quantizer = build(_faiss("--storage pq and rvq encode"))
    if len(_quantizers) > 64:
        _quantizers.clear()
    _quantizers[id(codebooks)] = (codebooks, quantizer)
    return quantizer


def _quantizer(codebooks: np.ndarray):
    """A faiss ProductQuantizer holding `codebooks` ([M, 256, SUB])."""

    def build(faiss):
        m, k, sub = codebooks.shape
        pq = faiss.ProductQuantizer(m * sub, m, int(np.log2(k)))
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, np.float32).ravel(), pq.centroids)
        return pq

    return _memo(codebooks, build)


def _faiss(what: str):
    """faiss, or one line saying how to install it: only fitting and coding need it, reading is numpy."""
    try:
        import faiss
    except ImportError:
        from store.errors import SpecMismatchError

        raise SpecMismatchError(f"{what} with faiss: pip install 'distilcache[pq]' (reading needs only numpy)") from None
    return faiss


def _standardised_sample(samples: list[np.ndarray], fits: str) -> tuple[dict, np.ndarray]:
    """(mean/std statistics, the standardised rows a codebook is fitted on: at most 64 per codeword, shuffled), or one
    line when the sample holds fewer rows than the 256 codewords to fit (`fits` says what)."""
    stats = fit_stats(samples)
    z = np.ascontiguousarray((np.concatenate(samples).astype(np.float32) - stats["mean"]) / stats["std"])
    if len(z) < 256:
        from store.errors import SpecMismatchError

        raise SpecMismatchError(f"{fits}, but the fitting sample holds {len(z)} frames; use a corpus of more than "
                                f"{256 * 0.02:.0f} s of audio, or int8")
    return stats, z[np.random.default_rng(0).permutation(len(z))[: 64 * 256]]


class ResidualMode(TargetMode):
    """Residual vector quantisation over the whole standardised vector: BOOKS codebooks of 256 codewords, each coding
    what the ones before it left, refined jointly (faiss.ResidualQuantizer, beam search). BOOKS bytes per row, whatever
    the width: 16 or 8 B for a 768-wide layer where pq keeps 192 (icefall keeps HuBERT targets at 8 B a frame the same
    way). Chosen over faiss's additive LSQ, measured side by side (docs/benchmarks.md: LSQ coded worse and 7x slower
    at 8 books). Codebooks [BOOKS, 256, dim] are statistics, stored as pq's."""

    needs_stats = lossy = codebooks = True
    recodes_exactly = False  # beam search: the decoded floats may code to other (near-equal) codes
    BEAM = 4  # beam search width for fitting and coding: beam 8 coded 3% better (rel L2) at 2.3x the time

    def __init__(self, books: int):
        self.books, self.name = books, f"rvq{books}"

    def arrays(self, dim):
        return {"": (ArraySpec("uint8", True), self.books)}

    def fit(self, samples):
        faiss = _faiss(f"--storage {self.name} fits its codebooks")
        stats, z = _standardised_sample(samples, f"--storage {self.name} fits 256 codewords per codebook")
        rq = faiss.ResidualQuantizer(z.shape[1], self.books, 8)
        rq.max_beam_size = self.BEAM
        rq.cp.min_points_per_centroid = 1  # as pq: a small sample is fine (and faiss would warn once per codebook)
        rq.train(z)
        stats["codebooks"] = faiss.vector_to_array(rq.codebooks).reshape(self.books, 256, z.shape[1]).astype(np.float32)
        return stats

    def encode(self, x, stats):
        z = np.ascontiguousarray((np.asarray(x, np.float32) - stats["mean"]) / stats["std"], dtype=np.float32)
        return {"": _residual(stats["codebooks"], self.BEAM).compute_codes(z).reshape(len(z), self.books)}

    def decode(self, stored, stats):
        codes, cb = stored[""], stats["codebooks"]
        z = cb[np.arange(cb.shape[0])[None, :], codes.astype(np.intp)].sum(1)
        return z * stats["std"] + stats["mean"]


def _residual(codebooks: np.ndarray, beam: int):
    """A faiss ResidualQuantizer holding `codebooks` ([books, 256, dim])."""

    def build(faiss):
        books, _, dim = codebooks.shape
        rq = faiss.ResidualQuantizer(dim, books, 8)
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, np.float32).ravel(), rq.codebooks)
        rq.is_trained, rq.max_beam_size = True, beam
        return rq

    return _memo(codebooks, build)


TARGET_MODES: dict[str, TargetMode] = {m.name: m for m in (
    FloatMode("float16", "float16"), FloatMode("bfloat16", "uint16"), FloatMode("float32", "float32"),
    IntMode("int8", 8), IntMode("int4", 4), ProductMode(), ResidualMode(16), ResidualMode(8))}


#: The largest magnitude each float storage holds finitely (beyond it float16 stores inf); bfloat16/float32 hold float32's.
STORABLE_MAX = {"float16": float(np.finfo(np.float16).max)}


def part_arrays(layers: list[int], dim: int, storage: str, audio: str, layout) -> dict[str, tuple[str, tuple, int, int]]:
    """key -> (numpy dtype, row tail shape, chunk rows, shard rows) of every zarr array a part holds: what the
    writer creates and what verify expects. flac and none audio keep no audio array."""
    from store.layout import layer_key

    out = {}
    for k in layers:
        for suffix, (array, width) in TARGET_MODES[storage].arrays(dim).items():
            out[layer_key(k) + suffix] = (array.dtype, (width,) if array.per_channel else (), layout.chunk_frames, layout.shard_frames)
    if audio in ("float32", "int16"):
        out["audio"] = (audio, (), layout.chunk_frames * layout.hop, layout.shard_frames * layout.hop)
    return out


STD_FLOOR = 0.1  # of the layer's RMS channel std: a channel (near) constant on the sample must not blow up unseen rows


def fit_stats(samples: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel mean and std of one layer over sample utterances ([frames, dim] each). The std has a floor relative
    to the layer's scale (STD_FLOOR of its RMS channel std): an absolute 1e-6 let one channel that was constant on the
    sample reach z = 1e5 on another utterance, and the row's absmax scale then wiped out every other channel."""
    x = np.concatenate([np.asarray(s, np.float64) for s in samples])
    std = x.std(0)
    floor = max(STD_FLOOR * float(np.sqrt(np.mean(std ** 2))), 1e-6)
    return {"mean": x.mean(0).astype(np.float32), "std": np.maximum(std, floor).astype(np.float32)}


def stats_to_json(stats: dict[int, dict]) -> dict:
    """mean and std (codebooks, being large, are arrays of their own: store.writer.create_cache)."""
    return {str(k): {"mean": v["mean"].tolist(), "std": v["std"].tolist()} for k, v in sorted(stats.items())}


def stats_from_json(data: dict | None) -> dict[int, dict] | None:
    if not data:
        return None
    return {int(k): {"mean": np.asarray(v["mean"], np.float32), "std": np.asarray(v["std"], np.float32)} for k, v in data.items()}


def stats_digest(stats: dict[int, dict] | None) -> str | None:
    """What the spec hashes: the exact float32 bytes of every statistic."""
    if not stats:
        return None
    h = hashlib.sha256(json.dumps(sorted(stats)).encode())
    for k in sorted(stats):
        h.update(stats[k]["mean"].tobytes())
        h.update(stats[k]["std"].tobytes())
        if "codebooks" in stats[k]:
            h.update(stats[k]["codebooks"].tobytes())
    return "sha256:" + h.hexdigest()[:32]


