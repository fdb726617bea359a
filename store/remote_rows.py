"""Reading a cache on an object store without a request per array: a part costs one GET (its commit marker), a crop one
ranged GET per array (two where it straddles a shard), and no HEAD.

The reader (store.reader.Cache) asks here for an array of a remote cache. Its metadata is the spec's and layout's
(chunks.expected_meta: the values are decoded by these either way, and verify compares a stored zarr.json with them), and
its shards' indexes come from the chunk sizes the writer recorded in the part's commit marker (`shards`), kept per
process in a least-recently-used map of at most MAX_SHARD_BYTES. A marker without them (a part written before) leaves
each shard's index to be read from its tail, as before. Local caches never come here.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any

import numpy as np

from store.chunks import ShardedRows, expected_meta
from store.errors import CorruptDataError
from store.index import read_marker
from store.layout import part_path

#: Per process: ~8 KB a LibriSpeech part (3 layers and audio, 8 shards of 64 chunks each), all 5,746 parts in ~47 MB.
MAX_SHARD_BYTES = 64 << 20
_LOCK = threading.Lock()  # held while a marker is fetched: a crop's arrays, asked at once, fetch it once


def remote_rows(cache: Any, part_dir: str, key: str) -> ShardedRows:
    """Array `key` of the committed attempt `part_dir` of `cache` (a store.reader.Cache), with no request of its own."""
    part = cache._part_of_dir.get(part_dir)
    expected = cache._expected_arrays().get(key)
    if part is None or expected is None:
        raise CorruptDataError(f"{part_path(cache.path, part_dir)}/{key}: not an array of this cache's committed parts")
    frames, samples = cache.part_rows[part]
    meta = expected_meta(expected, samples if key == "audio" else frames, cache.layout.codec)
    return ShardedRows(os.path.join(part_path(cache.path, part_dir), key), meta, part_shards(cache, part, part_dir).get(key))


def part_shards(cache: Any, part: str, part_dir: str) -> dict[str, np.ndarray]:
    """A part's chunk sizes per array, from its commit marker ({} for a marker without them, or one retaken since)."""
    with _LOCK:
        found = cache._shards.get(part_dir)
        if found is not None:
            cache._shards.move_to_end(part_dir)
            return found
        marker = read_marker(cache.path, part)
        found = {}
        if isinstance(marker, dict) and marker["dir"] == part_dir:
            for k, text in (marker.get("shards") or {}).items():
                try:
                    found[k] = np.frombuffer(base64.b64decode(text, validate=True), dtype="<u4")
                except (ValueError, TypeError):  # damaged: that array's shard indexes are read from the shards
                    continue
        cache._shards[part_dir] = found
        cache._shard_bytes += sum(v.nbytes for v in found.values())
        while cache._shard_bytes > MAX_SHARD_BYTES and len(cache._shards) > 1:
            cache._shard_bytes -= sum(v.nbytes for v in cache._shards.popitem(last=False)[1].values())
    return found
