"""The lossy modes' statistics fitted on a sample of the corpus, and what storing in a mode costs, measured: the relative
L2, cosine and absolute error of the decoded rows against the exact ones (kept in the cache's provenance as `fidelity`),
summed as parts are written so a cache of any size is measured in one pass."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from store.errors import StatsError
from store.modes import TARGET_MODES

STATS_FIT, STATS_HELD_OUT = 32, 16  # utterances: ~20k LibriSpeech frames for a mean and std per channel, 16 to measure on

def _by_hash(ids: list[str]) -> list[str]:
    """Ids in the order the statistics sample takes them: the same however the corpus is ordered or grows."""
    return sorted(ids, key=lambda u: hashlib.sha1(u.encode()).hexdigest())


def stats_sample(ids: list[str]) -> tuple[list[str], list[str]]:
    """(fitting ids, held-out ids), chosen by id hash (before any utterance is refused: fit_and_measure skips those)."""
    ranked = _by_hash(ids)[: STATS_FIT + STATS_HELD_OUT]
    return ranked[:STATS_FIT], ranked[STATS_FIT:]


def fit_and_measure(mode: str, layers: list[int], ids: list[str], features: Callable[[str], dict | None]) -> tuple[dict, dict]:
    """Statistics of every layer fitted on the sample, and `mode`'s error on the held-out utterances (on the
    fitting ones when the corpus is too small to hold any out). `features(uid)` gives {layer: [frames, dim]}
    exact (or source) targets: the teacher's during extraction, the source cache's in a conversion; or None for an
    utterance the pipeline would not accept (undecodable, NaN audio or targets): the sample takes the next id by
    hash instead, so one bad file never poisons the statistics every row is coded with."""
    from store.progress import bar, tracked

    feats: dict[str, dict] = {}
    with bar(min(len(ids), STATS_FIT + STATS_HELD_OUT), f"{mode} statistics: targets of the sample", "utt") as progress:
        for uid in _by_hash(ids):
            if len(feats) == STATS_FIT + STATS_HELD_OUT:
                break
            f = features(uid)
            if f is not None and all(np.isfinite(f[k]).all() for k in layers):
                feats[uid] = f
                progress.update(1)
    if not feats:
        raise StatsError(f"--storage {mode}: no utterance of the corpus gives finite targets to fit statistics on; "
                         "fix the corpus (see the skipped files) or use --storage float16")
    accepted = list(feats)
    fit, held = accepted[:STATS_FIT], accepted[STATS_FIT:]
    stats = {k: TARGET_MODES[mode].fit([feats[u][k] for u in fit]) for k in tracked(layers, len(layers), f"{mode} statistics: fitting",
                                                                                   "layer")}
    measured_on = held or fit
    measured = {"held_out_utterances": len(held), "measured_on": len(measured_on),
                "layers": {str(k): fidelity(mode, stats[k], [feats[u][k] for u in measured_on]) for k in layers}}
    check_stats(mode, stats, measured)
    return stats, measured


def check_stats(mode: str, stats: dict, measured: dict | None) -> None:
    """Refuse non-finite statistics or a non-finite measured error in one line: never code a cache with them."""
    for k, v in stats.items():
        if not finite_stats({k: v}):
            raise StatsError(f"--storage {mode}: the fitted statistics of layer {k} are not finite; no cache was written "
                             "(a NaN or infinite target reached the sample: fix or skip that file)")
    for k, m in ((measured or {}).get("layers") or {}).items():
        if not all(np.isfinite(m[key]) for key in ("rel_l2_mean", "cos_min", "l1")):
            raise StatsError(f"--storage {mode}: the measured error of layer {k} is not finite; no cache was written")


def finite_stats(stats: dict | None) -> bool:
    return bool(stats) and all(np.isfinite(a).all() for v in stats.values() for a in v.values())


def fidelity(mode: str, stats: dict | None, exact: list[np.ndarray]) -> dict:
    """Reconstruction error of `mode` on held-out utterances of one layer: what `feature-cache info` shows."""
    m = TARGET_MODES[mode]
    x = np.concatenate(exact).astype(np.float32)
    return error_summary(error_sums(x, m.decode(m.encode(x, stats), stats)))


ERROR_SUMS = ("frames", "rel_l2_sum", "rel_l2_worst", "cos_sum", "cos_min", "abs_sum", "values", "logsig_sum")


def error_sums(x: np.ndarray, y: np.ndarray) -> dict:
    """Sums of the per-frame error of stored rows `y` against exact rows `x` ([frames, dim]): what the writer records in
    every part's marker, so the error of a grown cache is that of all its rows, not of the sample its statistics came from."""
    x = np.asarray(x, np.float32)
    return residual_error_sums(x, np.asarray(y, np.float32) - x)


def residual_error_sums(x: np.ndarray, r: np.ndarray) -> dict:
    """error_sums() from the residual r = y - x: |y|^2 and x.y follow from |x|^2, x.r and |r|^2 (no y is formed)."""
    x, r = np.asarray(x, np.float32), np.asarray(r, np.float32)
    xx, xr, rr = (np.einsum("ij,ij->i", a, b).astype(np.float64) for a, b in ((x, x), (x, r), (r, r)))
    nx, ny = np.sqrt(xx), np.sqrt(np.maximum(xx + 2 * xr + rr, 0))
    rel = np.sqrt(rr) / np.maximum(nx, 1e-12)
    cos = (xx + xr) / np.maximum(nx * ny, 1e-12)
    return {"frames": int(len(x)), "rel_l2_sum": float(rel.sum()), "rel_l2_worst": float(rel.max(initial=0.0)),
            "cos_sum": float(cos.sum()), "cos_min": float(cos.min(initial=1.0)), "abs_sum": float(np.abs(r).sum(1).sum(dtype=np.float64)),
            "values": int(x.size), "logsig_sum": float(np.log1p(np.exp(-cos)).sum())}


def merge_error_sums(a: dict | None, b: dict) -> dict:
    if not a:
        return dict(b)
    worst = {"rel_l2_worst": max, "cos_min": min}
    return {k: worst[k](a[k], b[k]) if k in worst else a[k] + b[k] for k in ERROR_SUMS}


def error_sums_problem(error) -> str | None:
    """Why a marker's recorded error cannot be trusted (read back from disk), or None."""
    if not isinstance(error, dict):
        return "not a record of layers"
    for layer, sums in error.items():
        if not (str(layer).isdigit() and len(str(layer)) < 6 and isinstance(sums, dict) and set(sums) == set(ERROR_SUMS)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= -1 for v in sums.values())
                and type(sums["frames"]) is int and type(sums["values"]) is int):
            return f"layer {str(layer)[:8]}'s sums are malformed"
    return None


def error_summary(sums: dict) -> dict:
    """The figures `info` shows (the same as fidelity's) from error sums."""
    n = max(sums["frames"], 1)
    return {"frames": sums["frames"], "rel_l2_mean": sums["rel_l2_sum"] / n, "rel_l2_worst": sums["rel_l2_worst"],
            "cos_mean": sums["cos_sum"] / n, "cos_min": sums["cos_min"], "l1": sums["abs_sum"] / max(sums["values"], 1),
            "neg_log_sigmoid_cos_gap": sums["logsig_sum"] / n - float(np.log1p(np.exp(-1.0)))}
