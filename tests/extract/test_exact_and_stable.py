"""Issue 9: no silent wrong targets, an identity that survives upgrades, a first run that works."""

import json
import os
import subprocess
import threading

import numpy as np
import pytest
import torch

from extract import ExtractConfig, ExtractError, extract_features, load_teacher
from extract.audio import load_audio, normalize
from extract.probe import probe_batching
from extract.run import extract_with
from store import fingerprint, open_cache
from tests.conftest import build_corpus, build_tiny_family, build_tiny_teacher

FAMILIES = ["hubert-group", "wav2vec2-layer", "wavlm", "data2vec-audio"]


def _teacher_dir(tmp_path, family: str) -> str:
    if family == "hubert-group":
        return build_tiny_teacher(str(tmp_path / family))
    return build_tiny_family(str(tmp_path / family), family)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_extraction_is_exact_or_refused_for_every_family(tmp_path, family, capfd):
    teacher_dir = _teacher_dir(tmp_path, family)
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    s = extract_features(ExtractConfig(teacher_dir, corpus, layers=(0, 2, 3), cache_dir=str(tmp_path / "k"), storage_dtype="float32",
                                       batch_seconds=8, progress=False))
    cache = open_cache(s.path)
    probe = cache.provenance["batching_probe"]
    said = capfd.readouterr().err
    assert probe["exact"] == ("not exact" not in said)
    if not probe["exact"]:
        assert said.count("padded batches are not exact") == 1 and "one utterance per forward" in said
    teacher = load_teacher(teacher_dir, device="cpu")
    for uid in cache.utterance_ids:
        alone = teacher.forward([load_audio(f"{corpus}/{uid}.wav", 16000)], [0, 2, 3])[0]
        for k in (0, 2, 3):
            assert np.abs(cache.read(uid, k) - alone[k]).max() <= 1e-4, (family, uid, k)


def test_the_probe_sees_data2vec_padding_leak(tmp_path):
    """Guards the test above: data2vec-audio's conv positional embedding leaks padding, so its probe must fail."""
    teacher = load_teacher(build_tiny_family(str(tmp_path / "d"), "data2vec-audio"), device="cpu")
    probe = probe_batching(teacher, [3])
    assert not probe["exact"] and probe["max_abs_diff"] > 1e-3
    assert probe_batching(load_teacher(build_tiny_teacher(str(tmp_path / "h")), device="cpu"), [3])["exact"]


def test_concurrent_forwards_on_one_teacher_equal_single_thread_results(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(2000, 16000, size=3)] for _ in range(24)]
    expected = [teacher.forward(b, [1, 3]) for b in batches]
    got: dict[int, list] = {}

    def work(offset: int) -> None:
        for i in range(offset, len(batches), 4):
            got[i] = teacher.forward(batches[i], [1, 3])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        for a, b in zip(got[i], want, strict=True):
            for k in (1, 3):
                assert np.abs(a[k] - b[k]).max() <= 1e-5, i


@pytest.mark.parametrize("family", ["hubert-group", "wav2vec2-layer"])
def test_layer_k_is_the_block_output_whatever_transformers_does(tmp_path, family):
    """Layer K = output of block K; the pre-LN final LayerNorm is never part of it (docs/cache-format.md)."""
    teacher = load_teacher(_teacher_dir(tmp_path, family), device="cpu")
    wave = np.random.default_rng(1).standard_normal(12000).astype(np.float32)
    ours = teacher.forward([wave], [0, 3])[0]
    x = torch.from_numpy(normalize(wave) if teacher.do_normalize else wave)[None]
    with torch.no_grad():
        out = teacher.model(x, attention_mask=torch.ones_like(x, dtype=torch.long))
        last = out.last_hidden_state[0].numpy()
        if teacher.config.do_stable_layer_norm:  # pre-LN: the final LayerNorm comes after block L
            normed = teacher.model.encoder.layer_norm(torch.from_numpy(ours[3])).numpy()
            assert np.abs(normed - last).max() <= 1e-4 and np.abs(ours[3] - last).max() > 1e-2
        else:
            assert np.abs(ours[3] - last).max() <= 1e-4
    assert teacher.spec([3], "float16")["teacher"]["layer_definition"] == "block-io-v1"


def test_a_4x_and_a_5x_style_config_give_one_fingerprint(tmp_path):
    new = build_tiny_teacher(str(tmp_path / "new"))
    old = build_tiny_teacher(str(tmp_path / "old"))
    cfg_file = os.path.join(old, "config.json")
    cfg = json.load(open(cfg_file))
    cfg.pop("dtype", None)
    cfg.update(transformers_version="4.46.3", torch_dtype="float32", top_k=50, num_beams=1, do_sample=False, max_length=20,
               repetition_penalty=1.0, use_cache=True, tie_word_embeddings=True, output_scores=False, temperature=1.0,
               early_stopping=False, length_penalty=1.0, no_repeat_ngram_size=0, bad_words_ids=None)
    json.dump(cfg, open(cfg_file, "w"))
    a, b = load_teacher(new, device="cpu"), load_teacher(old, device="cpu")
    assert fingerprint(a.spec([1], "float16")) == fingerprint(b.spec([1], "float16"))
    assert "top_k" not in b.spec([1], "float16")["teacher"]["config"]


def test_an_fp16_saved_teacher_extracts_in_fp32(tmp_path):
    from transformers import HubertModel

    src = build_tiny_teacher(str(tmp_path / "t"))
    half = str(tmp_path / "half")
    HubertModel.from_pretrained(src).half().save_pretrained(half)
    for f in ("preprocessor_config.json",):
        os.link(os.path.join(src, f), os.path.join(half, f))
    teacher = load_teacher(half, device="cpu", compute_dtype="float32")
    assert all(p.dtype == torch.float32 for p in teacher.model.parameters())
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    s = extract_features(ExtractConfig(half, corpus, layers=(3,), cache_dir=str(tmp_path / "k"), progress=False))
    assert s.utterances == 2


class _NaNTeacher:
    """Wraps a teacher: utterances shorter than 1 s come out NaN (as an fp16 overflow would)."""

    def __init__(self, teacher):
        self.__dict__["_t"] = teacher

    def __getattr__(self, name):
        return getattr(self._t, name)

    def forward(self, waves, layers, dtype=None):
        out = self._t.forward(waves, layers, dtype)
        for w, f in zip(waves, out, strict=True):
            if len(w) < 16000:
                f[layers[-1]][:] = np.nan
        return out


def test_non_finite_targets_are_refused_per_on_error(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    teacher = _NaNTeacher(load_teacher(tiny_teacher, device="cpu"))
    short = [u for u in os.listdir(f"{corpus}/spk0") + os.listdir(f"{corpus}/spk1")
             if len(load_audio(f"{corpus}/spk{int(u[3:5]) % 2}/{u}", 16000)) < 16000]
    assert short, "the corpus needs a file shorter than 1 s"
    with pytest.raises(ExtractError, match="not finite"):
        extract_with(ExtractConfig(tiny_teacher, corpus, layers=(3,), cache_dir=str(tmp_path / "a"), progress=False), teacher)
    s = extract_with(ExtractConfig(tiny_teacher, corpus, layers=(3,), cache_dir=str(tmp_path / "b"), on_error="skip",
                                   progress=False), teacher)
    assert s.utterances == 6 - len(short) and len(s.skipped) == len(short)
    assert all("not finite" in item["reason"] for item in s.skipped)
    cache = open_cache(s.path)
    assert all(np.isfinite(cache.read(u, 3)).all() for u in cache.utterance_ids)


def test_placing_a_teacher_on_a_device_turns_tf32_off(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        teacher.to("cpu")  # the same call online training makes after moving to its device
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = True  # torch's default


def test_the_demo_runs_the_scripts_beside_its_interpreter_not_from_path():
    from train.demo import script

    path = script("extract-features")
    assert os.path.isabs(path) and os.access(path, os.X_OK)
    r = subprocess.run([path, "--help"], env={"PATH": "/nonexistent", "HOME": os.environ.get("HOME", "/tmp")},
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--teacher" in r.stdout


def test_the_exported_preprocessor_says_what_the_student_was_trained_on(tmp_path):
    """The teacher normalises its input, the student was fed raw crops: the export must say raw."""
    from train.config import TrainConfig
    from train.loop import train

    teacher = build_tiny_teacher(str(tmp_path / "t"), norm="layer")
    assert load_teacher(teacher, device="cpu").do_normalize
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    s = extract_features(ExtractConfig(teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False))
    result = train(TrainConfig(cache=s.path, out=str(tmp_path / "run"), steps=2, batch_size=2, max_crop_samples=8000,
                               num_workers=0, valid_fraction=0.25, progress=False))
    pre = json.load(open(os.path.join(result["student"], "preprocessor_config.json")))
    assert pre["do_normalize"] is False and pre["sampling_rate"] == 16000
