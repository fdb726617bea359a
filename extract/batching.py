"""Batches filled by padded seconds, longest first, so padding (and so wasted compute) stays small."""

from __future__ import annotations


def plan_batches(lengths: list[int], batch_samples: int) -> list[list[int]]:
    """Indices into `lengths`, grouped so that len(batch) * longest <= batch_samples (a lone item always fits)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
