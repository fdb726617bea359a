"""torchrun DDP on CPU (gloo): 2 ranks with the same global batch follow 1 rank's loss curve; resume works."""

import json
import os
import socket
import subprocess
import sys

import torch


def _args(cached, out, *extra):
    return ["--cache", cached["path"], "--out", str(out), "--steps", "4", "--batch-size", "4", "--max-crop-samples", "16000",
            "--valid-fraction", "0", "--num-workers", "0", "--log-interval", "1", "--quiet", "--config", cached["nodrop"], *extra]


def _torchrun(args, launcher="torch.distributed.run"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", launcher, "--nproc_per_node", "2", "--master_port", str(port),
                           "-m", "train", *args], capture_output=True, text=True, env=env, timeout=300)


def _losses(out):
    return [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in line]


def test_two_ranks_match_one_and_resume(cached, tmp_path):
    cached = {**cached, "nodrop": str(tmp_path / "nodrop.json")}
    (tmp_path / "nodrop.json").write_text(json.dumps({"dropout": 0.0}))  # dropout masks would differ per rank
    one = subprocess.run([sys.executable, "-m", "train", *_args(cached, tmp_path / "one")], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    first = _torchrun(_args(cached, tmp_path / "two", "--stop-after", "2"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert os.path.isdir(tmp_path / "two" / "student")  # --stop-after exports what was trained (step 2)
    second = _torchrun(_args(cached, tmp_path / "two", "--resume"))
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    assert all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b, strict=True)), (a, b)
    wa = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)["model"]
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) < 1e-4
    assert os.path.isdir(tmp_path / "two" / "student")  # rank 0 exported
    rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl") if '"loss"' in line]
    assert {r["utterances_per_rank"] for r in rows} == {2} and {r["ranks"] for r in rows} == {2}  # each rank read half


def test_a_refusal_under_torchrun_is_quoted_by_its_report_and_last_under_our_launcher(tmp_path):
    """Issue 22 item 9: torchrun's 40-line report buried the rank's one line; its report now quotes the line, and
    `python -m train.torchrun` (the same options) prints it as the last line, with the rank's exit code."""
    args = ["--cache", str(tmp_path / "no-such-cache"), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"]
    plain = _torchrun(args)
    assert plain.returncode != 0 and "traceback : error: " in plain.stderr, plain.stderr[-3000:]
    ours = _torchrun(args, launcher="train.torchrun")
    last = ours.stderr.strip().splitlines()[-1]
    assert ours.returncode == 2 and last.startswith("error: ") and "no-such-cache" in last, ours.stderr[-3000:]
    assert "Traceback" not in ours.stderr and "ChildFailedError" not in ours.stderr
