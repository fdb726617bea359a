"""Decoding: any soundfile format to float32 mono at the teacher's rate (soxr, HQ)."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

RESAMPLER = "soxr-HQ"  # recorded in the cache spec: changing it changes the targets
MONO = "mean"


def load_audio(path, rate: int) -> np.ndarray:
    """The waveform the teacher sees (before its feature extractor's own normalisation); `path` may be a file object."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != rate:
        wave = soxr.resample(wave, sr, rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as transformers' Wav2Vec2FeatureExtractor does with do_normalize."""
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
