"""The caches under a cache root: list, find by spec (layers may be a subset), describe, remove."""

from __future__ import annotations

import os

import numpy as np

from store import fs
from store.errors import CacheError, FormatVersionError, NotACacheError
from store.fidelity import error_summary
from store.reader import Cache, default_cache_dir
from store.spec import differences, fingerprint, validate_spec


def list_caches(cache_dir: str | None = None, other_formats: list[str] | None = None) -> list[Cache]:
    """The caches of this format under the root; caches of other formats go to `other_formats` (one line each)."""
    root = cache_dir or default_cache_dir()
    if fs.exists(root) and not fs.isdir(root):
        raise NotACacheError(f"--cache-dir {root}: is a file, not a directory of caches")
    if not fs.exists(root):
        fs.check_bucket(root)
    found = []
    for name in fs.listdir(root):
        if name.startswith("."):
            continue
        try:
            found.append(Cache(os.path.join(root, name)))
        except FormatVersionError as e:
            if other_formats is not None:
                other_formats.append(str(e))
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
    """What `feature-cache info` prints: totals come from the index (no file listing, no plan of 281k files)."""
    frame_bytes = sum(width * np.dtype(a.dtype).itemsize for a, width in cache.mode.arrays(cache.spec["dim"]).values())
    sample_bytes = {"float32": 4, "int16": 2, "flac": 2, "none": 0}[cache.audio_mode]  # flac: before its own compression
    raw = cache.total_frames * len(cache.layers) * frame_bytes + cache.total_samples * sample_bytes
    sr = cache.spec["preprocessing"]["sample_rate"]
    pending = cache.pending()
    return {
        "path": cache.path,
        "fingerprint": cache.fingerprint,
        "spec": cache.spec,
        "provenance": cache.provenance,
        "utterances": len(cache),
        "frames": cache.total_frames,
        "audio_hours": round(cache.total_samples / sr / 3600, 4),
        "uncompressed_bytes": raw,
        "parts_done": len(cache.parts),
        "parts_pending": pending["parts"],
        "utterances_pending": pending["utterances"],
        "damaged_markers": len(cache.damaged),
        "storage": f"{cache.spec['storage_dtype']} targets ({frame_bytes} B per layer-frame before the codec), {cache.audio_mode} audio",
        "fidelity": cache.provenance.get("fidelity"),
        "stored_error": {"parts": cache.parts_with_error, "of_parts": len(cache.parts),
                         "layers": {k: error_summary(v) for k, v in sorted(cache.stored_error.items(), key=lambda kv: int(kv[0]))}}
        if cache.parts_with_error else None,
        "corpora": cache.corpora(),
        "audio_clipped": cache.audio_clipped,
        "skipped": cache.skipped,
    }


#: Every name a cache directory may hold; rm deletes a directory only if it holds nothing else.
CACHE_ENTRIES = {"zarr.json", "parts", "commits", "codebooks", "plan.json", "index.json", "sources.npz", "sources.json", "checked.json",
                 ".lock", ".clock"}


def _is_cache_entry(name: str) -> bool:
    """A name of CACHE_ENTRIES, or one of our temp files of those (store.fs.is_temp_of: `index.json.tmp-<pid>-<8 hex>`);
    the creator's staging directory is never inside a cache."""
    return name in CACHE_ENTRIES or any(fs.is_temp_of(name, entry) for entry in CACHE_ENTRIES)


def _strangers_inside(target: str) -> list[str]:
    """What commits/, parts/ and codebooks/ hold that a cache never writes there: rm removes only the cache's own
    records (markers, attempt directories, codebook arrays), so a directory that merely has those names is refused."""
    import re

    from store.layout import is_attempt_name

    def marker(n: str) -> bool:  # a commit marker, or our temp file of one
        base = n.split(".tmp-")[0]
        return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,64}\.json", base)) and (base == n or fs.is_temp_of(n, base))

    rules = {"commits": marker,
             "parts": lambda n: n == "zarr.json" or is_attempt_name(n) and not os.path.islink(os.path.join(target, "parts", n)),
             "codebooks": lambda n: n == "zarr.json" or re.fullmatch(r"layer_\d+", n)}
    return [f"{sub}/{n}" for sub, ok in rules.items() for n in fs.listdir(os.path.join(target, sub)) if not ok(n)]


def remove_cache(path: str) -> None:
    """Delete a cache: a directory whose contents are exactly a cache's (a broken one without zarr.json too).

    Never a symlink (rm its target), never a directory holding anything else: rm must not delete a stranger's files."""
    target = check_removable(path)
    fs.rmtree(target)
    if fs.exists(target):
        raise CacheError(f"{path}: could not be removed completely; check its permissions")


def check_removable(path: str) -> str:
    """The directory `rm` would delete, or NotACacheError in one line: said before anyone is asked to confirm."""
    target = fs.resolve(path)
    if not fs.is_remote(target) and os.path.islink(target.rstrip("/")):
        raise NotACacheError(f"{path}: is a symbolic link; remove the cache it points to ({os.path.realpath(target)}) instead")
    if not fs.isdir(target):
        raise NotACacheError(f"{path}: no such cache directory; list caches with: feature-cache ls")
    strangers = [n for n in fs.listdir(target) if not _is_cache_entry(n)] + _strangers_inside(target)
    if strangers or not fs.exists(os.path.join(target, "commits")) and not fs.exists(os.path.join(target, "zarr.json")):
        shown = ", ".join(strangers[:3]) or "no cache files"
        raise NotACacheError(f"{path}: not a cache directory (it holds {shown}); refusing to delete it")
    return target


def derived_from(fp: str, cache_dir: str) -> list[str]:
    """The caches under `cache_dir` whose spec says they were derived from fingerprint `fp`: only each one's zarr.json is
    read (untrusted: anything malformed is not a derived cache), never its index, which is tens of MB at full size."""
    found = []
    for name in fs.listdir(cache_dir):
        try:
            meta = fs.read_json(os.path.join(cache_dir, name, "zarr.json"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        spec = ((meta.get("attributes") or {}).get("distilcache") or {}).get("spec") if isinstance(meta, dict) else None
        source = spec.get("derived_from") if isinstance(spec, dict) else None
        if isinstance(source, dict) and source.get("fingerprint") == fp:
            found.append(os.path.join(cache_dir, name))
    return found


def human_bytes(n: float) -> str:
    """1.2 GB: sizes as people read them (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def size_said(c) -> str:
    """A cache's bytes on disk as its markers say them (no file walk), honest about parts written before markers did."""
    unsized = len(c.parts) - c.parts_with_bytes
    if not unsized:
        return human_bytes(c.bytes)
    if not c.parts_with_bytes:
        return "size ? (info --du)"
    return f"{human_bytes(c.bytes)} + {unsized} unsized part(s) (info --du)"
