"""Issue 36: the student where researchers evaluate it. export-student --s3prl writes the checkpoint s3prl's own
`distiller_local` upstream loads (SUPERB's runner takes it by that name), and every hidden state s3prl returns equals
ours; the reverse: --teacher takes such a checkpoint, converted once to a transformers directory."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from tests.conftest import build_corpus, build_tiny_teacher
from train.config import TrainConfig
from train.export.onnx_graph import main as export_cli
from train.loop import train

# s3prl's own hub function for this upstream. Not `s3prl.hub`: that imports every upstream, and some need torchaudio,
# which has no build for torch 2.13 (s3prl's pip requirement); the distiller's does not (make install: --no-deps).
hubconf = pytest.importorskip("s3prl.upstream.distiller.hubconf",
                              reason="s3prl is not installed: pip install --no-deps s3prl==0.4.18 (make install does)")


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """A teacher shaped as HuBERT-base is (its CNN narrower than its transformer: DistillerModel keeps a projection) and a
    cache of its layers 1 and 3."""
    root = tmp_path_factory.mktemp("s3prl")
    teacher = build_tiny_teacher(str(root / "teacher"), conv=16)
    cache = extract_features(ExtractConfig(teacher, build_corpus(str(root / "c"), n=6), layers=(1, 3), cache_dir=str(root / "k"),
                                           progress=False)).path
    return {"teacher": teacher, "cache": cache, "root": root}


@pytest.fixture(scope="module")
def run_dir(shaped):
    out = shaped["root"] / "r"
    train(TrainConfig(cache=shaped["cache"], out=str(out), steps=2, batch_size=2, max_crop_samples=16000, num_workers=0,
                      valid_fraction=0.25, progress=False))
    return out


def ours(run_dir, wave: torch.Tensor) -> list[torch.Tensor]:
    """What s3prl's distiller upstream returns as hidden_states, computed by our student: the projection's output, each
    transformer layer's, then each head's prediction."""
    from train.export.student import load_student

    model = load_student(str(run_dir))
    enc = model.encoder
    with torch.no_grad():
        projected = enc.feature_projection(enc.feature_extractor(wave[None]).transpose(1, 2))
        hidden = enc(wave[None], output_hidden_states=True).hidden_states
        predicted = model.heads(hidden[-1])
    return [projected, *hidden[1:], *predicted.unbind(1)]


def test_s3prl_loads_the_export_with_its_own_upstream_and_every_hidden_state_agrees(run_dir, tmp_path):
    out = tmp_path / "student.ckpt"
    r = CliRunner().invoke(export_cli, [str(run_dir), "--s3prl", str(out)])
    assert r.exit_code == 0, r.output
    assert "run_downstream.py -u distiller_local -k" in r.stdout
    upstream = hubconf.distiller_local(str(out)).eval()  # s3prl's own code reads the file and builds its DistillerModel
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(23_456).astype(np.float32) * 0.1)
    with torch.no_grad():
        theirs = upstream([wave])["hidden_states"]
    mine = ours(run_dir, wave)
    assert len(theirs) == len(mine) == 1 + 2 + 2  # projection, 2 layers, 2 target layers (the cached fixture's 1 and 3)
    for t, m in zip(theirs, mine, strict=True):
        assert t.shape == m.shape
        assert float((t - m).abs().max() / m.abs().max()) <= 1e-5


def test_a_teacher_given_as_an_s3prl_checkpoint_is_converted_once_with_the_same_hidden_states(run_dir, tmp_path, monkeypatch):
    from transformers import HubertModel

    from extract import load_teacher

    monkeypatch.setenv("DISTILCACHE_HOME", str(tmp_path / "home"))
    out = tmp_path / "student.ckpt"
    assert CliRunner().invoke(export_cli, [str(run_dir), "--s3prl", str(out)]).exit_code == 0
    killed = tmp_path / "home" / "converted" / f"s3prl-{'0' * 16}.tmp-{2**22 + 7}"  # a run killed mid-conversion (no such pid)
    killed.mkdir(parents=True)
    mine = tmp_path / "home" / "converted" / "my-notes.tmp-1"  # not our name: kept
    mine.mkdir()
    teacher = load_teacher(str(out))
    assert not killed.exists() and mine.exists()
    mine.rmdir()
    again = load_teacher(str(out))
    assert teacher.name == again.name and os.listdir(tmp_path / "home" / "converted") == [os.path.basename(teacher.name)]
    converted = HubertModel.from_pretrained(teacher.name).eval()
    student = HubertModel.from_pretrained(str(run_dir / "student")).eval()
    wave = torch.randn(1, 20_000) * 0.1
    with torch.no_grad():
        a = converted(wave, output_hidden_states=True).hidden_states
        b = student(wave, output_hidden_states=True).hidden_states
    assert len(a) == len(b) and all(torch.allclose(x, y, atol=1e-6, rtol=1e-5) for x, y in zip(a, b, strict=True))


def test_what_s3prl_cannot_express_or_a_foreign_file_is_refused_in_one_line(run_dir, shaped, tmp_path):
    matched = tmp_path / "m"
    train(TrainConfig(cache=shaped["cache"], out=str(matched), steps=1, batch_size=2, max_crop_samples=16000, num_workers=0,
                      valid_fraction=0.25, progress=False, match="1:1,2:3"))
    r = CliRunner().invoke(export_cli, [str(matched), "--s3prl", str(tmp_path / "m.ckpt")])
    assert r.exit_code != 0 and "layer-to-layer projections (--match)" in r.output and len(r.output.strip().splitlines()) == 1
    mine = tmp_path / "notes.ckpt"
    mine.write_text("my notes")
    r = CliRunner().invoke(export_cli, [str(run_dir), "--s3prl", str(mine)])
    assert r.exit_code != 0 and "not a checkpoint written by export-student" in r.output and mine.read_text() == "my notes"
    again = tmp_path / "ok.ckpt"
    for _ in range(2):  # our own export may be overwritten
        assert CliRunner().invoke(export_cli, [str(run_dir), "--s3prl", str(again)]).exit_code == 0
