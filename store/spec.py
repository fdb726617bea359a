"""Cache identity: the spec says what produced a cache, the fingerprint names it.

Modelled on datasets' fingerprint.py, minus its random fallback: a value that cannot be
hashed raises, because a silent cache miss costs hours of teacher time.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from store.errors import SpecMismatchError

#: The cache's format on disk (zarr.json's `format_version`): bumped when the files a cache keeps beside its targets change
#: shape. 3: source records as columns (sources.npz); `feature-cache upgrade` brings a format-2 cache up in place.
FORMAT_VERSION = 3
#: Bump whenever the bytes a cache holds for the same spec would change: the spec's `format_version`, hashed into the
#: fingerprint, so a cache upgraded in place keeps its name and is still found by the same spec.
TARGETS_VERSION = 2
#: Older formats `feature-cache upgrade` rewrites in place (metadata only); older still need a new extraction.
UPGRADABLE = (2,)
DTYPES = ("float16", "bfloat16", "float32")
#: Spec keys that describe where a cache came from but not what it holds; not hashed.
UNHASHED = ("provenance",)


def _canonical(value: Any, where: str = "spec") -> Any:
    """Reduce a spec to JSON types with sorted keys; refuse anything ambiguous."""
    if isinstance(value, dict):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return value
    raise TypeError(f"{where}: cannot hash a {type(value).__name__} into a cache fingerprint")


def identity(spec: dict) -> dict:
    """The part of a spec that decides the cache's contents."""
    return _canonical({k: v for k, v in spec.items() if k not in UNHASHED})


def fingerprint(spec: dict) -> str:
    """20 hex chars of sha256 over the canonical identity (safe as a directory name)."""
    text = json.dumps(identity(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def validate_spec(spec: dict) -> dict:
    """Check the fields every cache needs; return the spec in canonical form."""
    for key in ("format_version", "teacher", "layers", "dim", "compute_dtype", "storage_dtype", "preprocessing"):
        if key not in spec:
            raise SpecMismatchError(f"cache spec is missing '{key}'")
    layers = spec["layers"]
    if not layers or any(not isinstance(k, int) or k < 0 for k in layers) or len(set(layers)) != len(layers):
        raise SpecMismatchError(f"layers must be distinct non-negative integers, got {layers}")
    from store.audio_modes import AUDIO_MODES
    from store.modes import TARGET_MODES

    if type(spec["dim"]) is not int or not 0 < spec["dim"] <= 1 << 16:
        raise SpecMismatchError(f"dim must be a positive whole number (at most {1 << 16}), got {spec['dim']!r}")
    pre, frame = spec["preprocessing"], spec.get("frame", {"window": 400, "hop": 320})
    rate = pre.get("sample_rate") if isinstance(pre, dict) else None
    if type(rate) is not int or not 0 < rate <= 1_000_000:
        raise SpecMismatchError(f"preprocessing.sample_rate must be a positive whole number of Hz, got {rate!r}")
    if not isinstance(frame, dict) or any(type(frame.get(k)) is not int or not 0 < frame.get(k) <= 1 << 20 for k in ("window", "hop")):
        raise SpecMismatchError(f"frame window and hop must be positive whole numbers of samples, got {frame!r}")
    if type(spec["format_version"]) is not int:
        raise SpecMismatchError(f"format_version must be a whole number, got {spec['format_version']!r}")
    if spec["compute_dtype"] not in DTYPES:
        raise SpecMismatchError(f"compute_dtype must be one of {', '.join(DTYPES)}, got {spec['compute_dtype']!r}")
    if spec["storage_dtype"] not in TARGET_MODES:
        raise SpecMismatchError(f"storage must be one of {', '.join(TARGET_MODES)}, got {spec['storage_dtype']!r}")
    if spec.get("audio", "float32") not in AUDIO_MODES:
        raise SpecMismatchError(f"audio must be one of {', '.join(AUDIO_MODES)}, got {spec['audio']!r}")
    if spec["storage_dtype"] == "pq" and spec["dim"] % TARGET_MODES["pq"].SUB:
        raise SpecMismatchError(f"storage pq groups {TARGET_MODES['pq'].SUB} channels per code, but the layers are {spec['dim']} wide; "
                                "choose int8 or int4")
    if TARGET_MODES[spec["storage_dtype"]].needs_stats and not spec.get("storage_stats"):
        raise SpecMismatchError(f"storage {spec['storage_dtype']} needs fitted statistics (storage_stats)")
    out = _canonical(spec)
    out["layers"] = sorted(layers)
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(cached: dict, wanted: dict, layer_subset: bool = True) -> list[str]:
    """Human-readable reasons why a cache with spec `cached` cannot serve `wanted`."""
    a, b = _flatten(identity(cached)), _flatten(identity(wanted))
    reasons = []
    if layer_subset:
        missing = sorted(set(b.pop("layers")) - set(a.pop("layers")))
        if missing:
            reasons.append(f"layers {','.join(map(str, missing))} are not cached")
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            reasons.append(f"{key}: cache has {_short(a.get(key, '<absent>'))}, asked {_short(b.get(key, '<absent>'))}")
    return reasons


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_compatible(cached: dict, wanted: dict, where: str = "cache") -> None:
    """Raise one line saying what differs unless `cached` can serve `wanted` (layers ⊆ cached)."""
    reasons = differences(cached, wanted)
    if reasons:
        shown = "; ".join(reasons[:4]) + (f"; and {len(reasons) - 4} more" if len(reasons) > 4 else "")
        raise SpecMismatchError(f"{where} was made by a different spec: {shown}")
