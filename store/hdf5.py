"""HDF5 export/import, for tools that speak h5py rather than zarr.

Layout of the file: `layer_{K}/{uid}` = [frames, dim] (storage dtype; bfloat16 as uint16 bits),
`audio/{uid}` = float32 samples, and the root attributes `distilcache` (JSON: spec, provenance,
layout, fingerprint).
"""

from __future__ import annotations

import json

import numpy as np

from store import fs
from store.errors import CacheError
from store.layout import Layout, layer_key, part_name
from store.reader import Cache, default_cache_dir
from store.writer import PartWriter, create_cache


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CacheError("HDF5 export needs h5py: pip install h5py") from None
    return h5py


def export_hdf5(path: str, out: str) -> int:
    """Write every committed utterance of the cache at `path` to `out`; returns the count."""
    h5py = _h5py()
    cache = Cache(path)
    meta = {"fingerprint": cache.fingerprint, "spec": cache.spec, "provenance": cache.provenance, "layout": cache.layout.to_dict()}
    with h5py.File(out, "w") as f:
        f.attrs["distilcache"] = json.dumps(meta)
        for uid in cache.utterance_ids:
            for layer in cache.layers:
                part, f0, nf, _, _ = cache._locate(uid)
                f[f"{layer_key(layer)}/{uid}"] = cache._read(part, layer_key(layer), f0, f0 + nf)
            f[f"audio/{uid}"] = cache.read_audio(uid)
    return len(cache)


def import_hdf5(src: str, cache_dir: str | None = None, part_frames: int = 200_000) -> Cache:
    """Create (or extend) the cache for the file's spec under `cache_dir`; utterances already there are kept."""
    h5py = _h5py()
    with h5py.File(src, "r") as f:
        if "distilcache" not in f.attrs:
            raise CacheError(f"{src}: no 'distilcache' attribute; not an export of feature-cache")
        meta = json.loads(f.attrs["distilcache"])
        root = cache_dir or default_cache_dir()
        fs.makedirs(root)
        layout = Layout(**meta["layout"])
        cache = Cache(create_cache(root, meta["spec"], meta["provenance"], layout))
        spec, layers = cache.spec, cache.layers
        uids = sorted(u for u in _leaves(f["audio"]) if u not in cache)
        next_part = max((int(p[1:]) for p in cache.planned_parts()), default=-1) + 1
        writer, frames = None, 0
        for uid in uids:
            if writer is None:
                writer = PartWriter(cache.path, part_name(next_part), layers, spec["dim"], spec["storage_dtype"], layout)
                next_part, frames = next_part + 1, 0
            feats = {k: _as_float(f[f"{layer_key(k)}/{uid}"][()], spec["storage_dtype"]) for k in layers}
            writer.add(uid, feats, f[f"audio/{uid}"][()])
            frames += next(iter(feats.values())).shape[0]
            if frames >= part_frames:
                writer.commit()
                writer = None
        if writer is not None:
            writer.commit()
    cache.refresh()
    return cache


def _as_float(x: np.ndarray, storage_dtype: str) -> np.ndarray:
    from store.layout import from_storage

    return from_storage(x, storage_dtype).astype(np.float32)


def _leaves(group, prefix: str = "") -> list[str]:
    out = []
    for name, item in group.items():
        key = f"{prefix}{name}"
        out.extend(_leaves(item, key + "/") if hasattr(item, "items") else [key])
    return out
