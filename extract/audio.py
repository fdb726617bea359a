"""Decoding: any soundfile format to float32 mono at the teacher's rate (soxr, HQ)."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr

RESAMPLER = "soxr-HQ"  # recorded in the cache spec: changing it changes the targets
MONO = "mean"


def load_audio(path, rate: int, start: int = 0, frames: int | None = None, channel: int | None = None) -> np.ndarray:
    """The waveform the teacher sees (before its feature extractor's own normalisation); `path` may be a file object.

    A window (start, frames at the file's own rate) is read alone: soundfile seeks, so a segment of a 3-hour
    recording costs its own samples, not the file's. `channel` picks one channel; None mixes them (mean).
    A window is resampled alone; for files already at `rate` (the usual case) it is exactly its samples."""
    data, sr = sf.read(path, start=start, frames=-1 if frames is None else frames, dtype="float32", always_2d=True)
    if frames is not None and len(data) != frames:
        raise ValueError(f"the window {start}:{start + frames} decodes to {len(data)} samples; the file is shorter than its header says")
    wave = data[:, channel] if channel is not None else data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != rate:
        wave = soxr.resample(wave, sr, rate, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def resampled_length(samples: int, rate_in: int, rate_out: int) -> int:
    """How many samples soxr gives for `samples` at rate_in resampled to rate_out: n * out / in rounded half up."""
    return samples if rate_in == rate_out else (2 * samples * rate_out + rate_in) // (2 * rate_in)


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as transformers' Wav2Vec2FeatureExtractor does with do_normalize."""
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


def load_utterance(utt, rate: int) -> np.ndarray:
    """An extract.corpus.Utterance's waveform: its window of its file."""
    w = utt.window
    return load_audio(utt.path, rate, w["start"], w["samples"], w["channel"])
