"""Cached targets equal the teacher's forward on each utterance alone (DESIGN invariant 1 and 2)."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from extract import ExtractConfig, extract_features, load_teacher
from extract.audio import load_audio
from store import open_cache
from tests.conftest import build_corpus, build_tiny_teacher, write_wav


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_padded_batches_equal_each_utterance_alone(tmp_path, norm):
    teacher_dir = build_tiny_teacher(str(tmp_path / "t"), norm=norm)
    corpus = build_corpus(str(tmp_path / "c"), n=7)
    s = extract_features(ExtractConfig(teacher_dir, corpus, layers=(0, 1, 3), cache_dir=str(tmp_path / "cache"),
                                       storage_dtype="float32", batch_seconds=8, progress=False))
    cache = open_cache(s.path)
    teacher = load_teacher(teacher_dir, device="cpu")
    assert len(cache) == 7 and s.utterances == 7
    for uid in cache.utterance_ids:
        wave = load_audio(f"{corpus}/{uid}.wav", 16000)
        np.testing.assert_array_equal(cache.read_audio(uid), wave)
        assert cache.num_frames(uid) == (len(wave) - 400) // 320 + 1
        alone = teacher.forward([wave], [0, 1, 3])[0]
        for k in (0, 1, 3):
            assert np.abs(cache.read(uid, k) - alone[k]).max() <= 1e-4


def test_zero_padding_without_the_fix_would_differ(tmp_path):
    """Guards the test above: a plain padded batch of a group-norm teacher is NOT exact."""
    import torch

    teacher = load_teacher(build_tiny_teacher(str(tmp_path / "t")), device="cpu")
    rng = np.random.default_rng(0)
    long, short = rng.standard_normal(16000).astype(np.float32), rng.standard_normal(6000).astype(np.float32)
    x = torch.zeros(2, 16000)
    x[0], x[1, :6000] = torch.from_numpy(long), torch.from_numpy(short)
    with torch.no_grad():
        naive = teacher.model(x, output_hidden_states=True).hidden_states[3][1, : teacher.num_frames(6000)].numpy()
    exact = teacher.forward([long, short], [3])[1][3]
    alone = teacher.forward([short], [3])[0][3]
    assert np.abs(exact - alone).max() <= 1e-4 < np.abs(naive - alone).max()


def test_stereo_and_other_rates_are_mixed_and_resampled(tmp_path, tiny_teacher):
    corpus = tmp_path / "c"
    write_wav(str(corpus / "st.wav"), 1.0, rate=44100, channels=2, seed=3)
    write_wav(str(corpus / "lo.flac"), 1.2, rate=8000, seed=4)
    s = extract_features(ExtractConfig(tiny_teacher, str(corpus), layers=(2,), cache_dir=str(tmp_path / "cache"), progress=False))
    cache = open_cache(s.path)
    data, sr = sf.read(str(corpus / "st.wav"), dtype="float32")
    expected = soxr.resample(data.mean(axis=1), sr, 16000, quality="HQ")
    np.testing.assert_array_equal(cache.read_audio("st"), expected.astype(np.float32))
    assert abs(cache.num_samples("lo") - 1.2 * 16000) <= 1
    assert cache.num_frames("lo") == (cache.num_samples("lo") - 400) // 320 + 1


def test_bf16_compute_is_close_and_a_different_cache(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    a = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(3,), cache_dir=str(tmp_path / "k"), progress=False))
    b = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(3,), cache_dir=str(tmp_path / "k"), dtype="bfloat16",
                                       progress=False))
    assert a.fingerprint != b.fingerprint
    ca, cb = open_cache(a.path), open_cache(b.path)
    for uid in ca.utterance_ids:
        x, y = ca.read(uid, 3).astype(np.float32), cb.read(uid, 3).astype(np.float32)
        cos = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
        assert cos.min() > 0.98
