"""Issue 19 item 5: training that stops being finite exits non-zero, keeps its last finite checkpoint and exports nothing."""

import os

import pytest
from click.testing import CliRunner

from train.cli import main as train_cli
from train.config import TrainConfig, TrainingDiverged
from train.loop import train


def _cfg(cached, out, **kw):
    base = dict(cache=cached["path"], out=str(out), steps=3, batch_size=3, max_crop_samples=16000, num_workers=0,
                valid_fraction=0.2, checkpoint_interval=1, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("steps", [3, 4])
def test_a_huge_lr_stops_the_run_and_exports_nothing(cached, tmp_path, steps):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="not finite|the loss is|the gradient is"):
        train(_cfg(cached, out, lr=1e6, steps=steps, warmup_fraction=0.0))
    assert not os.path.exists(out / "student") and not os.path.exists(out / "eval.json")
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_the_cli_says_so_in_one_line_and_exits_non_zero(cached, tmp_path):
    r = CliRunner().invoke(train_cli, ["--cache", cached["path"], "--out", str(tmp_path / "r"), "--steps", "2", "--batch-size", "3",
                                       "--max-crop-samples", "16000", "--num-workers", "0", "--lr", "1e6", "--quiet"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert [line for line in r.output.splitlines() if line.startswith("error:")] and len(r.output.strip().splitlines()) <= 3
    assert not os.path.exists(tmp_path / "r" / "student")


def test_an_eval_cache_holding_none_of_the_held_out_utterances_is_one_line(cached, tmp_path):
    from extract import ExtractConfig, extract_features
    from store import SpecMismatchError
    from tests.conftest import build_corpus

    other = build_corpus(str(tmp_path / "other"), n=3, seed=9)
    for name in os.listdir(os.path.join(other, "spk0")):  # other ids than the training cache's
        os.rename(os.path.join(other, "spk0", name), os.path.join(other, "spk0", "x" + name))
    for name in os.listdir(os.path.join(other, "spk1")):
        os.rename(os.path.join(other, "spk1", name), os.path.join(other, "spk1", "x" + name))
    judge = extract_features(ExtractConfig(cached["teacher"], other, layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                           storage_dtype="float32", progress=False))
    with pytest.raises(SpecMismatchError, match="holds none of the .* held-out utterances"):
        train(_cfg(cached, tmp_path / "r", lr=2e-4, eval_cache=judge.path))


def test_a_killed_data_loader_worker_is_one_line(cached, tmp_path, monkeypatch):
    import signal

    import torch.utils.data

    from train.config import ConfigError
    from train.data import CachedCrops

    real = CachedCrops.__getitem__

    def dies_in_a_worker(self, key):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
        return real(self, key)

    monkeypatch.setattr(CachedCrops, "__getitem__", dies_in_a_worker)
    with pytest.raises(ConfigError, match="a data loader worker died.*--resume"):
        train(_cfg(cached, tmp_path / "r", lr=2e-4, num_workers=1))


def test_a_full_disk_while_exporting_is_one_line_and_resume_finishes(cached, tmp_path, monkeypatch):
    """ENOSPC after the last checkpoint (eval.json, the student, its heads): one line, nothing half-written, --resume ends it."""
    import errno

    from transformers import HubertModel

    import train.export.student

    out = tmp_path / "r"
    args = ["--cache", cached["path"], "--out", str(out), "--steps", "2", "--batch-size", "3", "--max-crop-samples", "16000",
            "--num-workers", "0", "--quiet"]
    real = train.export.student.save_file

    def full(tensors, path):  # the heads are written after the student: the disk fills between the two
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(train.export.student, "save_file", full)
    r = CliRunner().invoke(train_cli, args)
    assert r.exit_code == 2 and "Traceback" not in r.output and "No space left on device" in r.output, r.output
    assert not [n for n in os.listdir(out) if ".tmp-" in n or ".old-" in n]
    assert not os.path.exists(out / "heads.safetensors") and os.path.exists(out / "ckpt.pt")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # and a metrics line cut short by the full disk
    monkeypatch.setattr(train.export.student, "save_file", real)
    r = CliRunner().invoke(train_cli, args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert HubertModel.from_pretrained(str(out / "student")) is not None
    assert os.path.exists(out / "loss.png") and os.path.exists(out / "eval.json")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_stop_after_below_one_is_refused_in_one_line(cached, tmp_path, value):
    """--stop-after 0 ran every step with no line (0 meant "not given"), while -1 was refused."""
    r = CliRunner().invoke(train_cli, ["--cache", cached["path"], "--out", str(tmp_path / "r"), "--steps", "2", "--num-workers", "0",
                                       "--stop-after", value, "--quiet"])
    assert r.exit_code == 2 and "--stop-after" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not os.path.exists(tmp_path / "r")
