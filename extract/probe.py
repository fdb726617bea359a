"""Is batching exact for this teacher? Checked per teacher at load, never assumed per family.

Our masked GroupNorm and the attention mask make HuBERT/wav2vec2/WavLM padded batches exact, but
any architecture that mixes padded frames into valid ones elsewhere is not: data2vec-audio's
positional embedding is 5 convs with LayerNorm and GELU, and padding leaks through them (an 8 s
utterance batched with a 10 s one came out with every frame wrong). So: two utterances of
different lengths, batched and alone, compared in fp32.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-4  # DESIGN invariant 1: max abs diff, relative to the features' scale when that exceeds 1


def probe_waves(rate: int) -> list[np.ndarray]:
    """Two deterministic voiced-noise waves, 1.3 s and 0.7 s: long enough to span a few positional-conv windows."""
    rng = np.random.default_rng(12345)
    waves = []
    for seconds, f0 in ((1.3, 140.0), (0.7, 220.0)):
        t = np.arange(int(seconds * rate)) / rate
        waves.append((0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return waves


def probe_batching(teacher, layers: list[int]) -> dict:
    """{'exact': bool, 'max_abs_diff': float, 'tolerance': float}, for the provenance of every cache it serves."""
    waves = probe_waves(teacher.sample_rate)
    batched = teacher.forward(waves, layers, dtype="float32")
    diff, scale = 0.0, 1.0
    for i, wave in enumerate(waves):
        alone = teacher.forward([wave], layers, dtype="float32")[0]
        for k in layers:
            diff = max(diff, float(np.abs(batched[i][k] - alone[k]).max()))
            scale = max(scale, float(np.abs(alone[k]).max()))
    tolerance = TOLERANCE * scale
    return {"exact": bool(diff <= tolerance), "max_abs_diff": diff, "tolerance": tolerance}
