"""HDF5 export/import, for tools that speak h5py rather than zarr.

Layout of the file: `layer_{K}/{name}` = [frames, dim] (storage dtype; bfloat16 as uint16 bits),
`audio/{name}` = float32 samples (none for an --audio none cache), the root attribute `distilcache` (JSON: spec,
provenance, layout, fingerprint) and `records`, the UTF-8 bytes of a JSON object uid -> {corpus, source, samples}:
the records the cache owns of each utterance (its --corpus input, its source file, window and recording), so an
import keeps the held-out split by recording and `info`'s corpora. `name` is the utterance id with '%' and '/'
escaped as %25 and %2F: flat groups, so ids where one is a folder prefix of another (`a`, `a/b`) never collide.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from store import fs
from store.errors import CacheError, SpecMismatchError
from store.index import consolidate
from store.layout import Layout, layer_key, part_name, plan_path, write_json_atomic
from store.lock import exclusive
from store.modes import STORABLE_MAX, TARGET_MODES, stats_from_json
from store.progress import bar, tracked
from store.reader import Cache, check_format, default_cache_dir, read_meta
from store.spec import TARGETS_VERSION, validate_spec
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
    meta = {"fingerprint": cache.fingerprint, "spec": cache.spec, "provenance": cache.provenance, "layout": cache.layout.to_dict(),
            "stats": read_meta(cache.path).get("stats")}
    try:
        with h5py.File(out, "w") as f:
            f.attrs["distilcache"] = json.dumps(meta)
            for k, v in sorted((cache.stats or {}).items()):  # a codebook mode's codebooks travel as datasets
                if "codebooks" in v:
                    f[f"codebooks/{layer_key(k)}"] = v["codebooks"]
            for group in [layer_key(k) for k in cache.layers] + (["audio"] if cache.audio_mode != "none" else []):
                f.require_group(group)  # even when empty: a cache whose every file was skipped exports and imports too
            for uid in tracked(cache.utterance_ids, len(cache), f"exporting to {os.path.basename(out)}", "utt"):
                for layer in cache.layers:  # float modes as stored (bfloat16 as uint16 bits); int8/int4 decoded to float32
                    x = cache.read(uid, layer)
                    f[f"{layer_key(layer)}/{_escape(uid)}"] = x if cache.mode.needs_stats else cache.mode.encode(x, None)[""]
                if cache.audio_mode != "none":
                    f[f"audio/{_escape(uid)}"] = cache.read_audio(uid)
            records = {uid: {"corpus": cache.corpus_of(uid), "source": cache.source(uid), "samples": cache.num_samples(uid)}
                       for uid in cache.utterance_ids}
            f["records"] = np.frombuffer(json.dumps(records).encode(), np.uint8)
    except OSError as e:
        raise CacheError(f"{out}: cannot write it ({e}); check the path and free space") from None
    return len(cache)


def _read_meta(f, src: str) -> dict:
    try:
        meta = json.loads(f.attrs["distilcache"])
        if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict) or not isinstance(meta.get("layout"), dict):
            raise TypeError("spec and layout must be objects")
        # one line for a file from a newer (or older) format
        check_format(src, meta["spec"].get("format_version"), TARGETS_VERSION, "export")
        spec = validate_spec(meta["spec"])
        if not {"window", "hop"} <= set(spec.get("frame", {})):
            raise ValueError("spec has no frame window/hop")
        layout = Layout(**meta["layout"])
        provenance = meta.get("provenance", {})
        if not isinstance(provenance, dict):
            raise TypeError("provenance is not an object")
    except KeyError:
        raise ImportError_(f"{src}: no 'distilcache' attribute with spec and layout; not an export of feature-cache") from None
    except (ValueError, TypeError, SpecMismatchError) as e:
        raise ImportError_(f"{src}: its 'distilcache' attribute is not a valid export header ({str(e)[:120]})") from None
    stats = stats_from_json(meta.get("stats"))
    for k in stats if TARGET_MODES[spec["storage_dtype"]].codebooks and stats else []:
        if f"codebooks/{layer_key(k)}" not in f:
            raise ImportError_(f"{src}: a {spec['storage_dtype']} export without codebooks/{layer_key(k)}; export the cache again")
        stats[k]["codebooks"] = np.asarray(f[f"codebooks/{layer_key(k)}"][()], np.float32)
    return {"spec": spec, "layout": layout, "provenance": provenance, "stats": stats}


MAX_HOURS = 4  # per utterance; extraction cuts anything longer (--max-seconds, --segment-seconds)
_SOURCE_FIELDS = {"path": str, "size": int, "mtime_ns": int, "sha256": str}


def _records(f, src: str) -> dict[str, dict]:
    """uid -> {corpus, source, samples} (exports before records: {}), checked: read back from a file, it is untrusted."""
    if "records" not in f:
        return {}
    try:
        records = json.loads(bytes(f["records"][()]).decode())
        if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
            raise TypeError("not an object of objects")
        for r in records.values():
            if not (isinstance(r.get("corpus"), (str, type(None))) and isinstance(r.get("source"), (dict, type(None)))
                    and isinstance(r.get("samples"), (int, type(None)))):
                raise TypeError("a record's corpus, source or samples has the wrong type")
            source = r.get("source")
            if source is not None and not (all(isinstance(source.get(k), t) for k, t in _SOURCE_FIELDS.items())
                                           and isinstance(source.get("recording", ""), str)):
                raise TypeError("a source record lacks path, size, mtime_ns or sha256 (what extraction checks files by)")
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ImportError_(f"{src}: its 'records' dataset is not a valid export record ({str(e)[:120]})") from None
    return records


def _utterances(f, src: str, spec: dict, records: dict[str, dict]) -> dict[str, int]:
    """Every utterance's name -> its sample count, after checking the file's structure and shapes (metadata only)."""
    h5py = _h5py()
    audio_kept = spec.get("audio", "float32") != "none"
    groups = (["audio"] if audio_kept else []) + [layer_key(k) for k in spec["layers"]]
    for g in groups:
        if not isinstance(f.get(g, getlink=False), h5py.Group):
            raise ImportError_(f"{src}: no group '{g}'; the spec says it holds layers {spec['layers']}")
    hop, window, dim = spec["frame"]["hop"], spec["frame"]["window"], spec["dim"]
    samples: dict[str, int] = {}
    for name in sorted(f[groups[0]].keys()):
        if audio_kept:
            audio = f["audio"].get(name)
            if not isinstance(audio, h5py.Dataset) or audio.ndim != 1:
                raise ImportError_(f"{src}: audio/{name} is not a 1-d dataset (nested groups are not an export of this format)")
            samples[name] = audio.shape[0]
        else:  # an --audio none cache: the sample count comes from the records
            n = records.get(_unescape(name), {}).get("samples")
            if not isinstance(n, int) or n < window:
                raise ImportError_(f"{src}: no sample count for '{_unescape(name)}' in its records (an --audio none export needs them)")
            samples[name] = n
        if samples[name] > MAX_HOURS * 3600 * spec["preprocessing"]["sample_rate"]:  # a hostile shape would exhaust memory
            raise ImportError_(f"{src}: '{_unescape(name)}' declares {samples[name]} samples, more than {MAX_HOURS} hours; "
                               "not an export of feature-cache")
        frames = (samples[name] - window) // hop + 1
        for g in groups[1 if audio_kept else 0:]:
            x = f[g].get(name)
            if not isinstance(x, h5py.Dataset):
                raise ImportError_(f"{src}: {g}/{name} is missing")
            if x.shape != (frames, dim):
                raise ImportError_(f"{src}: {g}/{name} has shape {x.shape}, but {samples[name]} samples make {frames} frames of {dim}")
    return samples


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
        if not TARGET_MODES[spec["storage_dtype"]].recodes_exactly:
            raise ImportError_(f"{src}: a {spec['storage_dtype']} export cannot be imported into the same cache: its coding is a beam "
                               "search, which codes the exported floats into other codes; convert the source cache again instead")
        records = _records(f, src)
        samples = _utterances(f, src, spec, records)
        names = sorted(samples)
        groups = (["audio"] if spec.get("audio", "float32") != "none" else []) + [layer_key(k) for k in spec["layers"]]
        limit = STORABLE_MAX.get(spec["storage_dtype"])
        for name in tracked(names, len(names), f"checking {os.path.basename(src)}", "utt"):  # before writing: a bad file changes nothing
            for g in groups:
                x = _as_float(f[g][name][()], spec["storage_dtype"] if g != "audio" else "float32")
                if not np.isfinite(x).all():
                    raise ImportError_(f"{src}: {g}/{name} holds NaN or infinite values")
                if g != "audio" and limit and x.size and np.abs(x).max() > limit:
                    raise ImportError_(f"{src}: {g}/{name} holds {np.abs(x).max():.3g}, beyond what its storage "
                                       f"{spec['storage_dtype']} holds ({limit:g}); export it again as float32 or bfloat16")
        unsourced = sum(1 for n in names if not records.get(_unescape(n), {}).get("source"))
        if unsourced:  # loud: extraction checks a cached utterance's file only through its source record
            print(f"{src}: {unsourced} of {len(names)} utterances come without a source-file record; extract-features will "
                  "keep them as they are and never check their files for changes", file=sys.stderr)
        root = cache_dir or default_cache_dir()
        fs.makedirs(root)
        cache = Cache(create_cache(root, spec, meta["provenance"], layout, meta["stats"]))
        with exclusive(cache.path):
            cache.refresh()
            _write(f, cache, [n for n in names if _unescape(n) not in cache], samples, records, part_frames)
            consolidate(cache.path)
    cache.refresh()
    return cache


def _write(f, cache: Cache, names: list[str], samples: dict[str, int], records: dict[str, dict], part_frames: int) -> None:
    spec, layers = cache.spec, cache.layers
    corpus_of = {n: records.get(_unescape(n), {}).get("corpus") for n in names}
    groups, group, frames = [], [], 0
    for name in sorted(names, key=lambda n: (corpus_of[n] or "", n)):  # parts of about part_frames, one corpus each
        if group and corpus_of[group[-1]] != corpus_of[name]:
            groups.append(group)
            group, frames = [], 0
        group.append(name)
        frames += (samples[name] - spec["frame"]["window"]) // spec["frame"]["hop"] + 1
        if frames >= part_frames:
            groups.append(group)
            group, frames = [], 0
    if group:
        groups.append(group)
    # what this import will commit, before any of it (beside what an earlier unfinished extraction still has pending):
    # a killed import leaves a cache that says it is unfinished
    earlier = [p for p in cache.plan()["parts"] or [] if p.get("name") not in cache.part_dirs]
    source = f"hdf5 import of {os.path.realpath(f.filename)}"  # so that a later extraction keeps these in plan.json
    planned = [{"name": part_name([_unescape(n) for n in g]), "utterances": len(g), "corpus": source} for g in groups]
    write_json_atomic(plan_path(cache.path), {"parts": earlier + planned, "skipped": cache.plan()["skipped"]})
    with bar(len(names), "importing", "utt") as progress:
        for group in groups:
            writer = PartWriter(cache.path, part_name([_unescape(n) for n in group]), layers, spec["dim"], spec["storage_dtype"],
                                cache.layout, cache.stats, cache.audio_mode, corpus_of[group[0]], measure=False)  # already coded
            for name in group:
                feats = {k: _as_float(f[layer_key(k)][name][()], spec["storage_dtype"]) for k in layers}
                audio = f["audio"][name][()].astype(np.float32) if cache.audio_mode != "none" else None
                writer.add(_unescape(name), feats, audio, records.get(_unescape(name), {}).get("source"), samples=samples[name])
                progress.update(1)
            writer.commit()


def _as_float(x: np.ndarray, storage_dtype: str) -> np.ndarray:
    mode = TARGET_MODES[storage_dtype]
    return (x if mode.needs_stats else mode.decode({"": x}, None)).astype(np.float32)
