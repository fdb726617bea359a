"""HDF5 export/import, for tools that speak h5py rather than zarr.

Layout of the file: `layer_{K}/{name}` = [frames, dim] (storage dtype; bfloat16 as uint16 bits),
`audio/{name}` = float32 samples, and the root attribute `distilcache` (JSON: spec, provenance,
layout, fingerprint). `name` is the utterance id with '%' and '/' escaped as %25 and %2F: flat
groups, so ids where one is a folder prefix of another (`a`, `a/b`) never collide.
"""

from __future__ import annotations

import json

import numpy as np

from store import fs
from store.errors import CacheError
from store.index import consolidate
from store.layout import Layout, layer_key, part_name
from store.lock import exclusive
from store.modes import TARGET_MODES, stats_from_json
from store.reader import Cache, default_cache_dir, read_meta
from store.spec import validate_spec
from store.writer import PartWriter, create_cache


class ImportError_(CacheError):
    """An HDF5 file that is not a consistent export; nothing was imported."""


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CacheError("HDF5 export needs h5py: pip install h5py") from None
    return h5py


def _escape(uid: str) -> str:
    return uid.replace("%", "%25").replace("/", "%2F")


def _unescape(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


def export_hdf5(path: str, out: str) -> int:
    """Write every committed utterance of the cache at `path` to `out`; returns the count."""
    h5py = _h5py()
    cache = Cache(path)
    if cache.audio_mode == "none":
        raise CacheError(f"{path}: keeps no audio (--audio none); HDF5 export needs it: convert it with --audio float32 first")
    meta = {"fingerprint": cache.fingerprint, "spec": cache.spec, "provenance": cache.provenance, "layout": cache.layout.to_dict(),
            "stats": read_meta(cache.path).get("stats")}
    try:
        with h5py.File(out, "w") as f:
            f.attrs["distilcache"] = json.dumps(meta)
            for k, v in sorted((cache.stats or {}).items()):  # a codebook mode's codebooks travel as datasets
                if "codebooks" in v:
                    f[f"codebooks/{layer_key(k)}"] = v["codebooks"]
            for uid in cache.utterance_ids:
                for layer in cache.layers:  # float modes as stored (bfloat16 as uint16 bits); int8/int4 decoded to float32
                    x = cache.read(uid, layer)
                    f[f"{layer_key(layer)}/{_escape(uid)}"] = x if cache.mode.needs_stats else cache.mode.encode(x, None)[""]
                f[f"audio/{_escape(uid)}"] = cache.read_audio(uid)
    except OSError as e:
        raise CacheError(f"{out}: cannot write it ({e}); check the path and free space") from None
    return len(cache)


def _read_meta(f, src: str) -> dict:
    try:
        meta = json.loads(f.attrs["distilcache"])
        spec = validate_spec(meta["spec"])
        if not {"window", "hop"} <= set(spec.get("frame", {})):
            raise ValueError("spec has no frame window/hop")
        layout = Layout(**meta["layout"])
        provenance = meta.get("provenance", {})
        if not isinstance(provenance, dict):
            raise TypeError("provenance is not an object")
    except KeyError:
        raise ImportError_(f"{src}: no 'distilcache' attribute with spec and layout; not an export of feature-cache") from None
    except (ValueError, TypeError) as e:
        raise ImportError_(f"{src}: its 'distilcache' attribute is not a valid export header ({str(e)[:120]})") from None
    stats = stats_from_json(meta.get("stats"))
    for k in stats if spec["storage_dtype"] == "pq" and stats else []:
        if f"codebooks/{layer_key(k)}" not in f:
            raise ImportError_(f"{src}: a pq export without codebooks/{layer_key(k)}; export the cache again")
        stats[k]["codebooks"] = np.asarray(f[f"codebooks/{layer_key(k)}"][()], np.float32)
    return {"spec": spec, "layout": layout, "provenance": provenance, "stats": stats}


def _utterances(f, src: str, spec: dict) -> list[str]:
    """Every utterance's name, after checking the file's structure and shapes (metadata only)."""
    h5py = _h5py()
    groups = ["audio"] + [layer_key(k) for k in spec["layers"]]
    for g in groups:
        if not isinstance(f.get(g, getlink=False), h5py.Group):
            raise ImportError_(f"{src}: no group '{g}'; the spec says it holds layers {spec['layers']}")
    names = sorted(f["audio"].keys())
    hop, window, dim = spec["frame"]["hop"], spec["frame"]["window"], spec["dim"]
    for name in names:
        audio = f["audio"].get(name)
        if not isinstance(audio, h5py.Dataset) or audio.ndim != 1:
            raise ImportError_(f"{src}: audio/{name} is not a 1-d dataset (nested groups are not an export of this format)")
        frames = (audio.shape[0] - window) // hop + 1
        for g in groups[1:]:
            x = f[g].get(name)
            if not isinstance(x, h5py.Dataset):
                raise ImportError_(f"{src}: {g}/{name} is missing")
            if x.shape != (frames, dim):
                raise ImportError_(f"{src}: {g}/{name} has shape {x.shape}, but {audio.shape[0]} samples make {frames} frames of {dim}")
    return names


def import_hdf5(src: str, cache_dir: str | None = None, part_frames: int = 200_000) -> Cache:
    """Create (or extend) the cache for the file's spec under `cache_dir`; utterances already there are kept.

    The whole file is checked (structure, shapes, finite values) before anything is written, and the
    cache's lock is held, so an import never races an extraction or leaves half a file behind."""
    h5py = _h5py()
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ImportError_(f"{src}: not readable as HDF5 ({str(e)[:120]})") from None
    with f:
        meta = _read_meta(f, src)
        spec, layout = meta["spec"], meta["layout"]
        names = _utterances(f, src, spec)
        for name in names:  # values: one pass before writing, so a bad file changes nothing
            for g in ["audio"] + [layer_key(k) for k in spec["layers"]]:
                if not np.isfinite(_as_float(f[g][name][()], spec["storage_dtype"] if g != "audio" else "float32")).all():
                    raise ImportError_(f"{src}: {g}/{name} holds NaN or infinite values")
        root = cache_dir or default_cache_dir()
        fs.makedirs(root)
        cache = Cache(create_cache(root, spec, meta["provenance"], layout, meta["stats"]))
        with exclusive(cache.path):
            cache.refresh()
            _write(f, cache, [n for n in names if _unescape(n) not in cache], part_frames)
            consolidate(cache.path)
    cache.refresh()
    return cache


def _write(f, cache: Cache, names: list[str], part_frames: int) -> None:
    spec, layers = cache.spec, cache.layers
    groups, group, frames = [], [], 0
    for name in names:  # parts of about part_frames, named by their contents like every part
        group.append(name)
        frames += (f["audio"][name].shape[0] - spec["frame"]["window"]) // spec["frame"]["hop"] + 1
        if frames >= part_frames:
            groups.append(group)
            group, frames = [], 0
    if group:
        groups.append(group)
    for group in groups:
        writer = PartWriter(cache.path, part_name([_unescape(n) for n in group]), layers, spec["dim"], spec["storage_dtype"],
                            cache.layout, cache.stats, cache.audio_mode)
        for name in group:
            feats = {k: _as_float(f[layer_key(k)][name][()], spec["storage_dtype"]) for k in layers}
            writer.add(_unescape(name), feats, f["audio"][name][()].astype(np.float32))
        writer.commit()


def _as_float(x: np.ndarray, storage_dtype: str) -> np.ndarray:
    mode = TARGET_MODES[storage_dtype]
    return (x if mode.needs_stats else mode.decode({"": x}, None)).astype(np.float32)
