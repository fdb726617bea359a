"""Issue 21: the student on device. The ONNX graph equals PyTorch on two lengths (and a batch); int8 is measured."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from train.config import TrainConfig  # noqa: E402
from train.export.onnx_graph import main as export_cli  # noqa: E402
from train.loop import train  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(cached, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-run") / "r"
    train(TrainConfig(cache=cached["path"], out=str(out), steps=2, batch_size=2, max_crop_samples=16000, num_workers=0,
                      valid_fraction=0.25, progress=False))
    return out


def test_the_onnx_student_equals_pytorch_on_two_lengths_and_int8_is_measured(run_dir, tmp_path):
    import onnxruntime as ort
    from transformers import HubertModel

    out = tmp_path / "s.onnx"
    r = CliRunner().invoke(export_cli, [str(run_dir), "--onnx", str(out), "--quantize", "int8"])
    assert r.exit_code == 0, r.output
    assert "matches PyTorch" in r.stdout and "int8" in r.stdout and os.path.exists(tmp_path / "s.int8.onnx")
    noise = ("[torch.onnx]", "pre-processing before quantization", "Loading weights", '{"onnx"')  # issue 35 item 19
    assert not [n for n in noise if n in r.output], r.output  # the libraries' own lines, and our JSON, only with --verbose
    told = CliRunner().invoke(export_cli, [str(run_dir), "--onnx", str(tmp_path / "v.onnx"), "--verbose"])
    assert told.exit_code == 0 and "[torch.onnx]" in told.output and '{"onnx"' in told.stderr
    model = HubertModel.from_pretrained(str(run_dir / "student")).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch, n in ((1, 12_345), (2, 40_000)):
        x = torch.randn(batch, n) * 0.1
        with torch.no_grad():
            want = model(x, output_hidden_states=True)
        last, hidden = session.run(None, {"waveform": x.numpy()})
        assert last.shape == tuple(want.last_hidden_state.shape) and hidden.shape[0] == len(want.hidden_states)
        scale = float(want.last_hidden_state.abs().max())
        assert np.abs(last - want.last_hidden_state.numpy()).max() <= 1e-4 * scale
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_a_dir_without_a_student_is_one_line(tmp_path):
    r = CliRunner().invoke(export_cli, [str(tmp_path), "--onnx", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "no loadable student/" in r.output and "Traceback" not in r.output


# ---- issue 33: export-student never overwrites what it did not write; a damaged student is one line ------------


def _export(*args):
    return CliRunner().invoke(export_cli, [str(a) for a in args])


def test_export_never_overwrites_the_students_weights_or_a_users_file(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    weights = run_dir / "student" / "model.safetensors"
    before = weights.read_bytes()
    r = _export(run_dir, "--onnx", weights)
    assert r.exit_code == 2 and "inside the run's student/" in r.output and weights.read_bytes() == before, r.output
    r = _export(run_dir, "--onnx", run_dir / "student" / "new.onnx")
    assert r.exit_code == 2 and not (run_dir / "student" / "new.onnx").exists()
    mine = tmp_path / "paper.onnx"
    mine.write_bytes(b"my own file, not a graph of yours")
    r = _export(run_dir, "--onnx", mine)
    assert r.exit_code == 2 and "not an ONNX graph written by export-student" in r.output and mine.read_bytes().startswith(b"my own")
    r = _export(run_dir, "--onnx", run_dir)  # a directory: the error names the target, not a temp file
    assert r.exit_code == 2 and f"--onnx {run_dir}: is a directory" in r.output and ".tmp-" not in r.output
    ours = tmp_path / "s.onnx"
    assert _export(run_dir, "--onnx", ours).exit_code == 0
    r = _export(run_dir, "--onnx", ours)  # a graph we wrote is replaced
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("damage", ["truncated", "empty", "no-config", "config-list"])
def test_export_of_a_damaged_student_is_one_line(run_dir, tmp_path, damage):
    import shutil

    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    weights, config = run / "student" / "model.safetensors", run / "student" / "config.json"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "no-config":
        config.unlink()
    else:
        config.write_text("[1, 2]")
    r = _export(run, "--onnx", tmp_path / "x.onnx")
    assert r.exit_code == 2 and "no loadable student/" in r.output and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("opset", ["0", "99", "-1"])
def test_export_opset_outside_what_runs_is_refused(run_dir, tmp_path, opset):
    r = _export(run_dir, "--onnx", tmp_path / "x.onnx", "--opset", opset)
    assert r.exit_code == 2 and "--opset" in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
