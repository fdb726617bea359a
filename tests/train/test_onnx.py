"""Issue 21: the student on device. The ONNX graph equals PyTorch on two lengths (and a batch); int8 is measured."""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from train.config import TrainConfig  # noqa: E402
from train.loop import train  # noqa: E402
from train.onnx_export import main as export_cli  # noqa: E402


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
