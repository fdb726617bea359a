"""Shared fixtures: specs and small synthetic caches for store tests."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from store import TARGETS_VERSION, Layout, PartWriter, create_cache, open_cache

DIM = 16


def make_spec(**overrides) -> dict:
    spec = {
        "format_version": TARGETS_VERSION,
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


# ---- tiny teachers and corpora for extract/train tests ------------------------------------


def build_tiny_teacher(directory: str, norm: str = "group", layers: int = 3, hidden: int = 32, seed: int = 0,
                       conv: int | None = None) -> str:
    """A HuBERT-shaped teacher saved like a hub checkpoint (safetensors + configs); `conv`: its CNN's width (the hidden
    size when not given; HuBERT-base's is 512 under 768)."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    cfg = HubertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                       conv_dim=(conv or hidden,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                       feat_extract_norm=norm, do_stable_layer_norm=norm == "layer", conv_bias=norm == "layer")
    torch.manual_seed(seed)
    HubertModel(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(do_normalize=norm == "layer", sampling_rate=16000).save_pretrained(directory)
    return directory


def build_tiny_family(directory: str, family: str, seed: int = 0) -> str:
    """A tiny teacher of another transformers family (wav2vec2 layer-norm, WavLM, data2vec-audio), saved like a hub checkpoint."""
    import torch
    import transformers

    small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
                 num_conv_pos_embedding_groups=2)
    name, extra = {
        "wav2vec2-layer": ("Wav2Vec2", dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                                            num_conv_pos_embeddings=16)),
        "wavlm": ("WavLM", dict(num_conv_pos_embeddings=16, num_buckets=32, max_bucket_distance=100)),
        "data2vec-audio": ("Data2VecAudio", dict(conv_pos_kernel_size=5, num_conv_pos_embeddings=5)),
    }[family]
    torch.manual_seed(seed)
    config = getattr(transformers, f"{name}Config")(**small, **extra)
    getattr(transformers, f"{name}Model")(config).save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=family != "wavlm", sampling_rate=16000).save_pretrained(directory)
    return directory


def write_wav(path: str, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> None:
    import os

    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    data = (tone + 0.02 * rng.standard_normal(n)).astype(np.float32)
    sf.write(path, np.stack([data, 0.5 * data], 1) if channels == 2 else data, rate, subtype="PCM_16")


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace `module.name` by itself, recording each call's first argument (the file hashed, the teacher loaded)."""
    calls: list = []
    real = getattr(module, name)

    def counted(first, *a, **k):
        calls.append(first)
        return real(first, *a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


def age_files(root: str, seconds: float = 3600) -> None:
    """Set every file's mtime `seconds` back: a corpus written just before its extraction is racily clean (store.source_files.racy)
    and hashed again on every run; a real corpus is older than that."""
    import os
    import time

    when = time.time_ns() - int(seconds * 1e9)
    for d, _, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), ns=(when, when))


def build_corpus(root: str, n: int = 6, seed: int = 0, ext: str = "wav") -> str:
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_wav(f"{root}/spk{i % 2}/utt{i:02d}.{ext}", float(rng.uniform(0.3, 2.5)), seed=seed * 100 + i)
    return root


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    return build_tiny_teacher(str(tmp_path_factory.mktemp("teacher")))
