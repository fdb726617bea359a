"""Where things live inside a cache directory and how arrays are encoded.

    <root>/<fingerprint>/zarr.json              group; attrs["distilcache"] = format, spec, layout
    <root>/<fingerprint>/commits/<part>.json    commit marker + index of the part, written LAST (the truth)
    <root>/<fingerprint>/parts/<part>.<token>/  one zarr group per attempt at a part; the marker names the one that counts
        layer_<K>/  [frames, dim]   sharded, crc32c per inner chunk and per shard index
        audio/      [samples]       float32, exactly what went into the teacher
    <root>/<fingerprint>/index.json             consolidation of the markers of a known set of parts (speed only)
    <root>/<fingerprint>/sources.npz            the same parts' source files (paths, stats, sha256), as columns
    <root>/<fingerprint>/plan.json              the last extraction's plan (progress only; rebuilt from markers + corpus)
    <root>/<fingerprint>/checked.json           stamps of the parts whose structure the last extraction checked (speed only)
    <root>/<fingerprint>/.clock                 one byte an extraction rewrites: its mtime is the file system's clock, what
                                                a source record's `taken_ns` is (store.source_files.fs_clock)
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import asdict, dataclass

from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from store.errors import CorruptDataError
from store.fs import read_json, write_json_atomic  # noqa: F401 - re-exported: where JSON lives is the fs's job

#: Codec choices; the default was chosen by measurement (docs/benchmarks.md).
CODECS = ("blosc-zstd", "zstd", "none")


@dataclass(frozen=True)
class Layout:
    """Chunking of a cache; stored in its attributes so readers never guess."""

    chunk_frames: int = 64  # a 780-frame crop touches <= 14 chunks: reads ~10% more than it needs
    shard_frames: int = 4096  # ~6 MB per layer-shard in fp16: one file per 82 s of audio per layer
    hop: int = 320  # samples per frame (teacher's conv strides product), audio chunks align with frames
    codec: str = "blosc-zstd"  # byte-shuffle + zstd with whole-chunk blocks; "zstd" or "none"

    def __post_init__(self) -> None:
        for name in ("chunk_frames", "shard_frames", "hop"):  # read back from disk too: a hostile header is one line
            value = getattr(self, name)
            if type(value) is not int or not 0 < value <= 1 << 24:
                raise ValueError(f"layout {name} must be a positive whole number (at most {1 << 24}), got {value!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.shard_frames % self.chunk_frames:
            raise ValueError(f"shard_frames {self.shard_frames} is not a multiple of chunk_frames {self.chunk_frames}")

    def to_dict(self) -> dict:
        return asdict(self)


def part_name(ids: list[str]) -> str:
    """A part is named by what it holds: whoever plans it (extract, import, repair), two parts with the
    same name hold the same utterances, and a committed utterance is never planned again."""
    return "p" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def attempt_dir(part: str) -> str:
    """Each attempt at a part (a dask retry, a second process) writes its own directory; only the commit publishes it."""
    return f"{part}.{uuid.uuid4().hex[:12]}"


_ATTEMPT = re.compile(r"[A-Za-z0-9_-]{1,64}\.[0-9a-f]{12}")


def is_attempt_name(name: object, part: str | None = None) -> bool:
    """An attempt directory's name as attempt_dir makes it (of `part`, when given)."""
    return isinstance(name, str) and bool(_ATTEMPT.fullmatch(name)) and (part is None or name.rsplit(".", 1)[0] == part)


def part_path(cache: str, part_dir: str) -> str:
    """A part's directory: always one plain name inside parts/ (what a marker says is untrusted input; a name that is
    a path, '..' or absolute would reach outside the cache, so it never becomes one)."""
    if not is_attempt_name(part_dir):
        raise CorruptDataError(f"{cache}: {str(part_dir)[:60]!r} is not a part directory name; run feature-cache verify")
    return os.path.join(cache, "parts", part_dir)


def index_path(cache: str) -> str:
    return os.path.join(cache, "index.json")


def sources_path(cache: str) -> str:
    return os.path.join(cache, "sources.npz")


def legacy_sources_path(cache: str) -> str:
    """Format 2's JSON records (store.upgrade reads them once)."""
    return os.path.join(cache, "sources.json")


def checked_path(cache: str) -> str:
    return os.path.join(cache, "checked.json")


def plan_path(cache: str) -> str:
    return os.path.join(cache, "plan.json")


def commit_path(cache: str, part: str) -> str:
    return os.path.join(cache, "commits", part + ".json")


def layer_key(layer: int) -> str:
    return f"layer_{layer}"


def compressors(codec: str, itemsize: int, chunk_bytes: int) -> list:
    """Bytes-to-bytes codecs; crc32c last so `verify` and readers catch damaged chunks."""
    if codec == "blosc-zstd":
        # blosc's default blocksize splits a chunk into small blocks and hides the shuffle's gain.
        return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize, blocksize=chunk_bytes), Crc32cCodec()]
    if codec == "zstd":
        return [ZstdCodec(level=3), Crc32cCodec()]
    return [Crc32cCodec()]
