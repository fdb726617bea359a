"""Integrity check of a cache: every chunk's crc32c (decoded by zarr itself) and the index."""

from __future__ import annotations

import os

import zarr

from store.layout import commit_path, layer_key, part_path, read_json
from store.reader import Cache


def verify_cache(path: str, progress=None) -> list[str]:
    """Return one line per problem found; empty means every committed byte checked out."""
    cache = Cache(path)
    problems: list[str] = []
    seen: dict[str, str] = {}
    for part in cache.parts:
        marker = read_json(commit_path(cache.path, part))
        for uid in marker["ids"]:
            if uid in seen:
                problems.append(f"{part}: utterance '{uid}' is also in {seen[uid]}")
            seen[uid] = part
        expected = {layer_key(k): sum(marker["frames"]) for k in cache.layers} | {"audio": sum(marker["samples"])}
        for key, rows in expected.items():
            array_dir = os.path.join(part_path(cache.path, part), key)
            problems.extend(_check_array(array_dir, rows))
        if progress:
            progress(part)
    return problems


def _check_array(array_dir: str, rows: int) -> list[str]:
    try:
        array = zarr.open_array(array_dir, mode="r")
    except Exception as e:  # noqa: BLE001 - any failure to open is damage to report
        return [f"{array_dir}: cannot open ({e})"]
    if array.shape[0] != rows:
        return [f"{array_dir}: holds {array.shape[0]} rows, the commit marker says {rows}"]
    shard, chunk = array.shards[0], array.chunks[0]
    problems = []
    for first in range(0, rows, shard):  # a shard at a time (fast); chunk by chunk only to name the damage
        if _readable(array, first, min(rows, first + shard)) is None:
            continue
        for start in range(first, min(rows, first + shard), chunk):
            error = _readable(array, start, min(rows, start + chunk))
            if error:
                problems.append(f"{array_dir}: chunk {start // chunk} (rows {start}-{start + chunk}) is damaged: {error}")
        if not any(p.startswith(array_dir) for p in problems):
            problems.append(f"{array_dir}: shard {first // shard} (rows {first}-{first + shard}) is damaged (its index)")
    return problems


def _readable(array, start: int, stop: int) -> str | None:
    try:
        array[start:stop]
    except Exception as e:  # noqa: BLE001 - zarr raises ValueError for a bad crc, OSError for a lost file
        return str(e) or type(e).__name__
    return None
