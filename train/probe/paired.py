"""Paired comparisons of two probes scored on the same test clips: the per-clip difference, bootstrapped.

Two upstreams probed on one test split answer on the same clips, so their difference varies much less than either
score: one run's point inside another's 95% interval is no test of anything. Here the clips are resampled together
(one resample gives both scores), and the 95% interval of the difference decides:
- "better" / "worse": the interval excludes 0;
- "as good as, within ±margin": the interval lies inside [-margin, +margin] (an equivalence test, TOST-like at 5%);
- neither: "undecided" (more clips or seeds would say).
"""

from __future__ import annotations

import numpy as np

#: What "as good as" means, by metric: 0.02 of an error rate, 0.03 of accuracy (issue 38's margins).
MARGINS = {"accuracy": 0.03}
DEFAULT_MARGIN = 0.02
LOWER_IS_BETTER = {"CER", "PER", "WER"}


def per_clip(result: dict) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(clip ids, counts, totals) a probe's result.json keeps, checked (read back from disk), or None when it has none."""
    clips = result.get("per_clip")
    if not isinstance(clips, dict):
        return None
    ids, counts, totals = clips.get("ids"), clips.get("counts"), clips.get("totals")
    if not (isinstance(ids, list) and isinstance(counts, list) and isinstance(totals, list) and len(ids) == len(counts) == len(totals)):
        return None
    try:
        c, t = np.asarray(counts, np.float64), np.asarray(totals, np.float64)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(c).all() and np.isfinite(t).all() and (t >= 0).all()):
        return None
    return [str(u) for u in ids], c, t


def paired_difference(a: tuple, b: tuple, n: int = 2000, seed: int = 0) -> dict:
    """value(b) - value(a) on the clips both scored, and its 95% interval by a paired bootstrap over clips."""
    ids_a, ca, ta = a
    ids_b, cb, tb = b
    if ids_a != ids_b:
        pos = {u: i for i, u in enumerate(ids_b)}
        if set(ids_a) != set(pos):
            raise ValueError("the two probes were scored on different clips")
        order = np.array([pos[u] for u in ids_a])
        cb, tb = cb[order], tb[order]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ca), size=(n, len(ca)))
    diff = cb[idx].sum(1) / np.maximum(tb[idx].sum(1), 1) - ca[idx].sum(1) / np.maximum(ta[idx].sum(1), 1)
    value = float(cb.sum() / max(tb.sum(), 1) - ca.sum() / max(ta.sum(), 1))
    return {"difference": value, "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))], "clips": len(ca)}


def verdict(metric: str, diff: dict, margin: float) -> str:
    """What the paired interval of (b - a) says of b against a, in words."""
    lo, hi = diff["ci95"]
    lower_better = metric in LOWER_IS_BETTER
    within = -margin <= lo and hi <= margin
    if lo > 0 or hi < 0:
        better = (hi < 0) == lower_better
        return ("better" if better else "worse") + (f" (and within ±{margin:g})" if within else "")
    return f"as good as, within ±{margin:g}" if within else f"undecided (interval spans 0 and leaves ±{margin:g})"


def margin_for(metric: str, given: float | None = None) -> float:
    return given if given is not None else MARGINS.get(metric, DEFAULT_MARGIN)
