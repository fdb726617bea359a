"""--recipe s3prl: online training the way s3prl's distiller trains, each difference checked on its own."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from extract import load_teacher
from extract.corpus import scan
from tests.conftest import build_corpus
from train.config import ConfigError, TrainConfig
from train.data import CorpusCrops
from train.loop import train
from train.recipe import S3prlAdamW, SortedGroups, param_groups, warmup_linear


def test_batches_are_consecutive_length_sorted_groups_in_shuffled_order():
    groups = SortedGroups([5, 3, 9, 1, 7], batch_size=2, seed=0)
    assert groups.groups == [[2, 4], [0, 1]]  # longest first; the last group of one is dropped, as s3prl does
    stream = groups.from_step(0)
    first = [next(stream) for _ in range(4)]
    assert sorted(map(tuple, ([i for _, i in b] for b in first[:2]))) == [(0, 1), (2, 4)]
    assert next(SortedGroups([5, 3, 9, 1, 7], 2, 0).from_step(3)) == first[3]  # resumable: step 3 is the same batch


def test_the_optimizer_is_s3prls_adamw_and_decays_norm_scales():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    decay, no_decay = param_groups(model)
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 2  # weights and the norm's scale; both biases not
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = S3prlAdamW([{"params": [p], "weight_decay": 0.01}], lr=0.1, betas=(0.9, 0.98), eps=1e-6)
    x, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(([0.5, 0.25], [-1.0, 2.0]), start=1):  # s3prl's Lamb(adam=True, correct_bias=True), by hand
        p.grad = torch.tensor(g)
        opt.step()
        m, v = 0.9 * m + 0.1 * np.array(g), 0.98 * v + 0.02 * np.array(g) ** 2
        size = 0.1 * math.sqrt(1 - 0.98**t) / (1 - 0.9**t)
        x = x - size * (m / (np.sqrt(v) + 1e-6) + 0.01 * x)
        np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-6)
    assert warmup_linear(7, 100, 0.07) == pytest.approx(1.0) and warmup_linear(100, 100, 0.07) == 0.0
    assert warmup_linear(1, 100, 0.07) == pytest.approx(1 / 7)


def test_the_teacher_runs_with_dropout_on_the_padded_batch_and_is_left_as_it_was(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    waves = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate((8000, 5000))]
    torch.manual_seed(0)
    a = teacher.forward_as_s3prl(waves, [1, 3])
    b = teacher.forward_as_s3prl(waves, [1, 3])
    assert a.shape[:3] == (2, 2, teacher.num_frames(8000))  # every frame of the padded length, both utterances
    assert not torch.equal(a, b)  # dropout: each call differs, as s3prl's targets do
    assert not teacher.model.training and teacher.model.config.layerdrop == pytest.approx(0.1)  # restored
    exact = teacher.forward(waves, [3])
    assert np.abs(exact[0][3] - teacher.forward(waves[:1], [3])[0][3]).max() < 1e-4  # the exact path is untouched


def test_crops_fall_at_any_sample_offset(tmp_path):
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    _, utts, _ = scan(corpus, 16000)
    crops = CorpusCrops(utts, 16000, 320, 400, 4000, seed=0, sample_offsets=True)
    starts = []
    for i in range(len(utts)):
        wave, _ = crops[(0, i)]
        full = sf.read(crops.utts[crops.ids[i]].path, dtype="float32")[0]
        if len(full) > 4000:
            starts.append(next(s for s in range(len(full) - 3999) if np.array_equal(full[s : s + 4000], wave.numpy())))
    assert starts and any(s % 320 for s in starts)


def test_train_student_recipe_s3prl_runs_online_and_is_refused_with_a_cache(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    r = train(TrainConfig(teacher=tiny_teacher, corpus=corpus, out=str(tmp_path / "run"), steps=3, batch_size=2, num_workers=0,
                          max_crop_samples=16000, valid_fraction=0.2, recipe="s3prl", layers=(1, 3), progress=False))
    assert r["step"] == 3 and r["eval"]["loss"] > 0
    with pytest.raises(ConfigError, match="--recipe s3prl runs the teacher online"):
        TrainConfig(cache="x", out=str(tmp_path / "r"), recipe="s3prl")
