"""The writer's time per 10 s of audio in each storage mode, and what measuring a lossy part's error costs it: the
error from the quantisation residual (now) against decoding every stored row again (before), side by side.

    python -m bench.writer_error [--rounds 5]

3 layers x 768 channels (HuBERT-base's 4, 8, 12), 500 frames per 10 s, float32 audio; PartWriter.add into a temp cache,
shards flushed as they fill. Interleaved rounds; prints the range.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from store import Layout, PartWriter, create_cache
from store.modes import TARGET_MODES, stats_digest


def error_sums_before(x: np.ndarray, y: np.ndarray) -> dict:
    """store.fidelity.error_sums as it was (a copy, for the side-by-side): norms of x, y and y - x over a decoded y."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    rel = np.linalg.norm(y - x, axis=1) / np.maximum(nx, 1e-12)
    cos = (x * y).sum(1) / np.maximum(nx * ny, 1e-12)
    return {"frames": int(len(x)), "rel_l2_sum": float(rel.sum()), "rel_l2_worst": float(rel.max(initial=0.0)),
            "cos_sum": float(cos.sum()), "cos_min": float(cos.min(initial=1.0)), "abs_sum": float(np.abs(y - x).sum()),
            "values": int(x.size), "logsig_sum": float(np.log1p(np.exp(-cos.astype(np.float64))).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    dim, layers, frames = 768, [4, 8, 12], 500
    feats = [{k: (rng.standard_normal((frames, dim)) * rng.uniform(0.2, 3, dim)).astype(np.float32) for k in layers} for _ in range(4)]
    audio = (0.1 * rng.standard_normal(160_000)).astype(np.float32)
    spec = {"format_version": 0, "teacher": {"digest": "sha256:bench", "config": {}}, "layers": layers, "dim": dim,
            "compute_dtype": "float32", "preprocessing": {"sample_rate": 16000, "mono": "mean", "resampler": "soxr-HQ",
                                                          "normalize": False}, "frame": {"window": 400, "hop": 320}}
    root = tempfile.mkdtemp()
    ways: dict[str, tuple[str, str]] = {"float16": ("float16", "now"), "int8 (before)": ("int8", "before"), "int8 (now)": ("int8", "now"),
                                        "int4 (before)": ("int4", "before"), "int4 (now)": ("int4", "now"), "pq": ("pq", "now")}
    results: dict[str, list[float]] = {w: [] for w in ways}
    stats = {m: {k: TARGET_MODES[m].fit([f[k] for f in feats]) for k in layers} for m in ("int8", "int4", "pq")}
    try:
        from store.spec import TARGETS_VERSION

        spec["format_version"] = TARGETS_VERSION
        for r in range(args.rounds):
            for label, (mode, how) in ways.items():
                extra = {"storage_stats": stats_digest(stats[mode])} if mode in stats else {}
                cache = create_cache(root, {**spec, "storage_dtype": mode, **extra}, layout=Layout(), stats=stats.get(mode))
                w = PartWriter(cache, f"p{r:06d}{how[0]}", layers, dim, mode, Layout(), stats.get(mode))
                if how == "before":  # the old path: encode, then decode every row again and measure against it
                    m = TARGET_MODES[mode]
                    w.mode = SimpleNamespace(needs_stats=True, encode=m.encode, decode=m.decode,
                                             encode_measured=lambda x, s, m=m: (lambda e: (e, m.decode(e, s) - x))(m.encode(x, s)))
                    import store.writer as sw

                    real, sw.residual_error_sums = sw.residual_error_sums, lambda x, res: error_sums_before(x, x + res)
                t = time.perf_counter()
                for f in feats:
                    w.add("u", f, audio)
                results[label].append((time.perf_counter() - t) / len(feats))
                if how == "before":
                    sw.residual_error_sums = real
                w.abort()
    finally:
        shutil.rmtree(root)
    print(f"PartWriter.add per 10 s of audio ({len(layers)} layers x {dim}, float32 audio), {args.rounds} interleaved rounds:")
    for label, v in results.items():
        print(f"  {label:14s} {min(v) * 1000:6.1f}-{max(v) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
