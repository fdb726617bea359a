"""The caches under a cache root: list, find by spec (layers may be a subset), describe, remove."""

from __future__ import annotations

import os

from store import fs
from store.errors import CacheError, NotACacheError
from store.reader import Cache, default_cache_dir
from store.spec import differences, fingerprint, validate_spec


def list_caches(cache_dir: str | None = None) -> list[Cache]:
    root = cache_dir or default_cache_dir()
    found = []
    for name in fs.listdir(root):
        if name.startswith("."):
            continue
        try:
            found.append(Cache(os.path.join(root, name)))
        except CacheError:
            continue  # foreign directories under the root are not ours to judge
    return found


def find_cache(spec: dict, cache_dir: str | None = None) -> Cache | None:
    """The cache for exactly `spec`, else one holding a superset of its layers, else None."""
    spec = validate_spec(spec)
    root = cache_dir or default_cache_dir()
    exact = os.path.join(root, fingerprint(spec))
    if fs.exists(os.path.join(exact, "zarr.json")):
        return Cache(exact)
    usable = [c for c in list_caches(root) if not differences(c.spec, spec)]
    return max(usable, key=len, default=None)


def closest_refusal(spec: dict, cache_dir: str | None = None) -> str:
    """Why no cache serves `spec`: the differences from the nearest one, for an error message."""
    caches = list_caches(cache_dir)
    if not caches:
        return f"no caches under {cache_dir or default_cache_dir()}"
    best = min(caches, key=lambda c: len(differences(c.spec, spec)))
    return f"nearest cache {best.fingerprint} differs: " + "; ".join(differences(best.spec, spec)[:3])


def describe(cache: Cache) -> dict:
    """What `feature-cache info` prints."""
    on_disk = fs.disk_usage(cache.path)
    raw_targets = cache.total_frames * len(cache.layers) * cache.spec.get("dim", 0) * (4 if cache.spec["storage_dtype"] == "float32" else 2)
    raw = raw_targets + cache.total_samples * 4
    planned = cache.planned_parts()
    sr = cache.spec["preprocessing"]["sample_rate"]
    return {
        "path": cache.path,
        "fingerprint": cache.fingerprint,
        "spec": cache.spec,
        "provenance": cache.provenance,
        "utterances": len(cache),
        "frames": cache.total_frames,
        "audio_hours": round(cache.total_samples / sr / 3600, 4),
        "bytes_on_disk": on_disk,
        "compression_ratio": round(on_disk / raw, 4) if raw else None,
        "parts_done": len(cache.parts),
        "parts_pending": len(set(planned) - set(cache.parts)),
        "skipped": cache.skipped,
    }


def remove_cache(path: str) -> None:
    Cache(path)  # refuses anything that is not a cache: rm must never delete a stranger's directory
    if not fs.isdir(path):
        raise NotACacheError(f"{path}: not a directory")
    fs.rmtree(path)
