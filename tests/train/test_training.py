import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract import load_teacher
from store import SpecMismatchError, open_cache
from train.cli import main
from train.config import ConfigError, TrainConfig, load_config
from train.data import CachedCrops, CorpusCrops
from train.loop import train
from train.model import Student, student_config
from train.targets import teacher_batch


def _cfg(cached, out, **kw):
    base = dict(cache=cached["path"], out=str(out), steps=6, batch_size=3, max_crop_samples=16000, log_interval=2,
                eval_interval=4, checkpoint_interval=100, num_workers=0, valid_fraction=0.2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_crops_are_frame_aligned_with_targets(cached):
    cache = open_cache(cached["path"])
    ds = CachedCrops(cache, cache.utterance_ids, [1, 3], max_samples=8000, seed=3)
    student = Student(student_config(cache.spec["teacher"]["config"]), 2)
    seen_offsets = set()
    for i, uid in enumerate(ds.ids):
        for epoch in range(3):
            uid, k, length = ds.crop((epoch, i))
            wave, targets = ds[(epoch, i)]
            seen_offsets.add(k)
            np.testing.assert_array_equal(wave.numpy(), cache.read_audio(uid)[320 * k : 320 * k + length])
            frames = int(student.num_frames(torch.tensor(length)))
            assert targets.shape == (2, frames, cache.spec["dim"])
            np.testing.assert_array_equal(targets[1].numpy(), cache.read(uid, 3)[k : k + frames])  # frame j <-> k + j
    assert len(seen_offsets) > 3


def test_online_and_cached_targets_agree_for_short_utterances(cached):
    cache = open_cache(cached["path"])
    teacher = load_teacher(cached["teacher"], device="cpu")
    from extract.corpus import scan

    _, utts, _ = scan(cached["corpus"], 16000)
    online = CorpusCrops(utts, 16000, 320, 400, max_samples=10**6, seed=0)
    cached_ds = CachedCrops(cache, online.ids, [1, 3], max_samples=10**6, seed=0)
    from train.data import collate

    keys = [(0, i) for i in range(len(online.ids))]
    on = teacher_batch(teacher, collate([online[k] for k in keys]), [1, 3])
    off = collate([cached_ds[k] for k in keys])
    assert torch.equal(on["wave"], off["wave"]) and torch.equal(on["frames"], off["frames"])
    assert (on["targets"] - off["targets"]).abs().max() <= 1e-4


def test_resume_gives_identical_weights(cached, tmp_path):
    full = train(_cfg(cached, tmp_path / "full"))
    train(_cfg(cached, tmp_path / "split", stop_after=3))
    resumed = train(_cfg(cached, tmp_path / "split", resume=True))
    assert full["step"] == resumed["step"] == 6
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_dir_and_export_round_trip(cached, tmp_path):
    from transformers import HubertModel

    out = tmp_path / "run"
    result = train(_cfg(cached, out, steps=4))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    logged = [r for r in rows if "loss" in r]
    assert {"step", "loss", "lr", "l1_layer1", "cos_layer3", "steps_per_s", "loader_wait_fraction"} <= set(logged[-1])
    assert (out / "loss.png").stat().st_size > 1000 and json.load(open(out / "eval.json"))["utterances"] >= 1
    assert json.load(open(out / "config.json"))["steps"] == 4
    model, info = HubertModel.from_pretrained(result["student"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert os.path.exists(out / "student" / "preprocessor_config.json") and os.path.exists(out / "heads.safetensors")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt[f"encoder.{name}"]), name


def test_cache_found_by_teacher_and_layers_and_mismatches_refused(cached, tmp_path, tiny_teacher):
    from tests.conftest import build_tiny_teacher

    runner = CliRunner()
    args = ["--out", str(tmp_path / "r"), "--steps", "2", "--batch-size", "2", "--num-workers", "0", "--quiet",
            "--max-crop-samples", "16000", "--cache-dir", cached["cache_dir"], "--teacher", tiny_teacher]
    ok = runner.invoke(main, ["--cache", "--layers", "1,3", *args])
    assert ok.exit_code == 0, ok.output
    missing = runner.invoke(main, ["--cache", cached["path"], "--layers", "1,2", *args[:-2]])
    assert missing.exit_code == 2 and "layers 2 are not in this cache" in missing.output
    other = build_tiny_teacher(str(tmp_path / "other"), seed=1)
    with pytest.raises(SpecMismatchError, match="was made by teacher weights .* but --teacher .* has"):
        train(_cfg(cached, tmp_path / "x", teacher=other))


def test_online_mode_trains(cached, tmp_path):
    result = train(_cfg(cached, tmp_path / "online", cache=None, teacher=cached["teacher"], corpus=cached["corpus"], steps=2,
                        layers=(1, 3)))
    assert result["step"] == 2 and os.path.isdir(result["student"])


def test_config_file_rejects_unknown_keys_and_bad_types(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(ConfigError, match="unknown key.*stepz"):
        load_config(str(f), {"cache": "x"})
    f.write_text(json.dumps({"steps": "many"}))
    with pytest.raises(ConfigError, match="steps should be int"):
        load_config(str(f), {"cache": "x"})
    assert load_config(None, {"cache": "x", "lr": 1}).lr == 1.0


def test_find_cache_without_teacher_is_a_clear_error():
    with pytest.raises(ConfigError, match="finds the cache of --teacher"):
        TrainConfig(cache="", teacher=None)


def test_epoch_length_matches_the_built_epoch():
    from train.data import BucketBatches

    rng = np.random.default_rng(0)
    for n, bs, mb in [(101, 7, 1), (1000, 24, 2), (5, 3, 3), (240, 24, 4)]:
        b = BucketBatches(list(rng.integers(1000, 9000, size=n)), bs, seed=1, bucket_batches=3, min_batch=mb)
        assert all(b.epoch_length(e) == len(b.epoch(e)) for e in range(3))


def test_stop_after_exports_what_was_trained_and_resume_keeps_one_history(cached, tmp_path, capsys):
    """--stop-after exported no student and dropped the `student` key silently; a resumed run appended rows it trains
    again after its checkpoint, so loss.png mixed two runs."""
    first = train(_cfg(cached, tmp_path / "r", steps=6, stop_after=3, log_interval=1))
    assert first["stopped_after"] == 3 and os.path.isdir(first["student"]) and "stopped after step 3 of 6" in capsys.readouterr().err
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:  # rows logged past the checkpoint by a run killed later
        f.write(json.dumps({"step": 4, "loss": 9.0}) + "\n" + json.dumps({"step": 5, "loss": 9.0}) + "\n")
    done = train(_cfg(cached, tmp_path / "r", steps=6, log_interval=1, resume=True))
    assert "stopped_after" not in done and done["step"] == 6
    steps = [json.loads(line).get("step") for line in open(tmp_path / "r" / "metrics.jsonl") if '"loss"' in line and "eval" not in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_run_killed_before_its_first_checkpoint_says_so_and_starts_over_clean(cached, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "train.cli", "--cache", cached["path"], "--out", str(out), "--steps", "100000", "--batch-size", "2",
           "--max-crop-samples", "8000", "--log-interval", "1", "--checkpoint-interval", "100000", "--num-workers", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(out / "metrics.jsonl") and os.path.getsize(out / "metrics.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and not os.path.exists(out / "ckpt.pt")
    last = err.strip().splitlines()[-1]
    assert "no checkpoint yet" in last and "--resume" not in last, last
    r = CliRunner().invoke(main, ["--cache", cached["path"], "--out", str(out), "--steps", "2", "--batch-size", "2",
                                  "--max-crop-samples", "8000", "--log-interval", "1", "--num-workers", "0", "--quiet", "--resume"])
    assert r.exit_code == 0, r.output
    steps = [json.loads(line).get("step") for line in open(out / "metrics.jsonl") if '"loss"' in line and "eval" not in line]
    assert steps == [1, 2]  # a clean history: the killed run's rows are gone


def test_steps_zero_exports_the_initialised_student(cached, tmp_path):
    """Issue 38's step-0 control: the teacher-initialised student, untrained (--steps 0 was refused)."""
    from transformers import HubertModel

    from train.loop import train

    r = train(_cfg(cached, tmp_path / "zero", steps=0))
    assert r["step"] == 0 and os.path.isdir(r["student"])
    teacher = HubertModel.from_pretrained(cached["teacher"])
    student = HubertModel.from_pretrained(r["student"])
    assert torch.equal(student.feature_extractor.conv_layers[0].conv.weight, teacher.feature_extractor.conv_layers[0].conv.weight)


def test_sigterm_frees_the_run_dir_at_once_for_a_resume(cached, tmp_path):
    """Issue 35 item 9: data loader workers share the run dir's lock and held it ~3 s after a SIGTERM, so a requeue
    script's immediate --resume was refused as "another train-student is using this run dir"."""
    import signal
    import subprocess
    import sys
    import time

    from store.lock import is_locked

    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "train.cli", "--cache", cached["path"], "--out", str(out), "--steps", "100000", "--batch-size", "2",
           "--max-crop-samples", "8000", "--log-interval", "1", "--checkpoint-interval", "1", "--num-workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(out / "ckpt.pt"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: the whole job, workers included
    _, err = proc.communicate(timeout=60)
    assert not is_locked(str(out)), err
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("interrupted:"), err
