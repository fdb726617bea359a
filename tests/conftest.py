"""Shared fixtures: specs and small synthetic caches for store tests."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from store import Layout, PartWriter, create_cache, open_cache

DIM = 16


def make_spec(**overrides) -> dict:
    spec = {
        "format_version": 1,
        "teacher": {"digest": "sha256:abc", "config": {"model_type": "hubert", "hidden_size": DIM}},
        "layers": [1, 2, 3],
        "dim": DIM,
        "compute_dtype": "float32",
        "storage_dtype": "float16",
        "preprocessing": {"sample_rate": 16000, "mono": "mean", "resampler": "soxr-HQ", "normalize": False},
        "frame": {"window": 400, "hop": 320},
    }
    spec.update(overrides)
    return spec


def fake_utterance(uid: str, frames: int, layers=(1, 2, 3), seed: int = 0):
    rng = np.random.default_rng([zlib.crc32(uid.encode()), seed])  # stable across processes
    feats = {k: rng.standard_normal((frames, DIM)).astype(np.float32) * k for k in layers}
    audio = rng.standard_normal(400 + 320 * (frames - 1)).astype(np.float32)
    return feats, audio


def write_parts(path: str, parts: dict[str, list[tuple[str, int]]], layers=(1, 2, 3), storage_dtype="float16", layout=None):
    """parts: part name -> [(uid, frames)]; returns {uid: (feats, audio)}."""
    layout = layout or Layout(chunk_frames=8, shard_frames=32)
    truth = {}
    for part, utts in parts.items():
        w = PartWriter(path, part, list(layers), DIM, storage_dtype, layout)
        for uid, n in utts:
            feats, audio = fake_utterance(uid, n, layers)
            w.add(uid, feats, audio)
            truth[uid] = (feats, audio)
        w.commit()
    return truth


@pytest.fixture
def small_cache(tmp_path):
    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path / "root"), make_spec(), {"teacher": "tiny"}, layout)
    truth = write_parts(path, {"p000000": [("a/one", 1), ("a/long", 100), ("b/x", 7)], "p000001": [("c/y", 33)]}, layout=layout)
    return open_cache(path), truth
