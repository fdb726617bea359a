"""--recipe s3prl: online training the way s3prl's distiller trains, each difference checked on its own."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from extract import load_teacher
from extract.corpus import scan
from extract.s3prl import S3PRL_DROPOUT, dropout_roles, fairseq_frames
from tests.conftest import build_corpus
from train.config import ConfigError, TrainConfig
from train.data import CorpusCrops
from train.loop import train
from train.s3prl import S3prlAdamW, SortedGroups, param_groups, warmup_linear


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
    assert teacher.model.feature_projection.dropout.p == 0.0  # the model's own probabilities are back too
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
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "run" / "metrics.jsonl") if '"lr"' in line]
    assert lrs == [pytest.approx(2e-4 * warmup_linear(3, 3, 0.07))]  # the last step's, at the optimizer's own step 3
    everything = train(TrainConfig(teacher=tiny_teacher, corpus=corpus, out=str(tmp_path / "all"), steps=1, batch_size=2,
                                   num_workers=0, max_crop_samples=16000, recipe="s3prl", layers=(1, 3), progress=False))
    assert json.load(open(tmp_path / "all" / "run.json"))["train"]["utterances"] == 6 and everything["eval"] == {}
    with pytest.raises(ConfigError, match="--recipe s3prl runs the teacher online"):
        TrainConfig(cache="x", out=str(tmp_path / "r"), recipe="s3prl")


def _fairseq_padding_mask(lengths: list[int], padded: int, frames: int) -> list[int]:
    """fairseq HubertModel.forward_padding_mask written out: drop the extra samples, view as [B, T, run], all()."""
    pad = torch.arange(padded)[None, :] >= torch.tensor(lengths)[:, None]
    extra = padded % frames
    if extra:
        pad = pad[:, :-extra]
    return (~pad.view(len(lengths), frames, -1).all(-1)).sum(1).tolist()


def test_the_teacher_counts_real_frames_the_way_fairseqs_padding_mask_does(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    rng = np.random.default_rng(0)
    for _ in range(200):
        padded = int(rng.integers(400, 300_000))
        lengths = [padded, *rng.integers(400, padded + 1, size=3).tolist()]
        frames = teacher.num_frames(padded)
        assert fairseq_frames(lengths, padded, frames) == _fairseq_padding_mask(lengths, padded, frames)
    # and the teacher's forward uses that count: 9000 of 16000 samples keep 28 frames (the conv formula says 27)
    seen = []
    hook = teacher.model.encoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"]), with_kwargs=True)
    try:
        teacher.forward_as_s3prl([np.zeros(16000, np.float32), np.zeros(9000, np.float32)], [1])
    finally:
        hook.remove()
    assert seen[0].sum(-1).tolist() == [49, 28] and teacher.num_frames(9000) == 27


def test_the_teachers_dropout_probabilities_are_fairseqs_not_the_transformers_configs(tiny_teacher):
    teacher = load_teacher(tiny_teacher, device="cpu")
    model = teacher.model
    assert model.feature_projection.dropout.p == 0.0 and model.encoder.layers[0].feed_forward.intermediate_dropout.p == 0.1
    used: dict[str, float] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda m, a, n=n: used.__setitem__(n, getattr(m, "p", None)))
             for n, role in dropout_roles(model).items() if isinstance(modules[n], torch.nn.Dropout)]
    attention = [n for n, role in dropout_roles(model).items() if role == "attention"]
    hooks += [modules[n].register_forward_pre_hook(lambda m, a, n=n: used.__setitem__(n, m.dropout)) for n in attention]
    try:
        teacher.forward_as_s3prl([np.zeros(8000, np.float32)], [3])
    finally:
        for h in hooks:
            h.remove()
    roles = dropout_roles(model)
    assert used and set(used) == set(roles)  # every dropout ran, each at fairseq's probability for its role
    assert {n: used[n] for n in roles} == {n: S3PRL_DROPOUT[r] for n, r in roles.items()}
    assert used["feature_projection.dropout"] == 0.1 and used["encoder.layers.0.feed_forward.intermediate_dropout"] == 0.0
    assert model.feature_projection.dropout.p == 0.0 and model.encoder.layers[0].feed_forward.intermediate_dropout.p == 0.1


def test_an_unknown_dropout_is_refused_not_left_as_it_was(tiny_teacher):
    from extract.errors import ExtractError

    teacher = load_teacher(tiny_teacher, device="cpu")
    teacher.model.extra_dropout = torch.nn.Dropout(0.3)
    with pytest.raises(ExtractError, match="extra_dropout.*fairseq counterpart is unknown"):
        dropout_roles(teacher.model)


def test_a_step_the_loss_scaler_skips_does_not_advance_the_schedule():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = S3prlAdamW([{"params": [p], "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.98), eps=1e-6, schedule=lambda t: 1.0 / t)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(p.sum() * float("inf")).backward()  # fp16 overflow: the scaler skips this step
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    assert opt.steps_taken() == 0 and torch.equal(p.detach(), torch.tensor([1.0, -2.0]))
    scaler.scale(p.sum()).backward()
    scaler.step(opt)
    assert opt.steps_taken() == 1 and opt.last_lr() == pytest.approx(0.1)  # schedule(1): the first step taken, not the second
    np.testing.assert_allclose(p.detach().numpy(), [1.0 - 0.1, -2.0 - 0.1], rtol=1e-5)  # Adam's first step moves by lr


def test_recipe_s3prl_holds_nothing_out_unless_asked(tmp_path, tiny_teacher):
    online = dict(teacher=tiny_teacher, corpus=str(tmp_path), out=str(tmp_path / "r"))
    assert TrainConfig(**online, recipe="s3prl").valid_fraction == 0.0
    assert TrainConfig(**online).valid_fraction == 0.01
    assert TrainConfig(**online, recipe="s3prl", valid_fraction=0.2).valid_fraction == 0.2
    with pytest.raises(ConfigError, match="--valid-fraction nan"):
        TrainConfig(**online, valid_fraction=float("nan"))
