"""Every CLI, a table of bad inputs: non-zero exit, one line on stderr naming the thing, no traceback, nothing changed."""

import json
import os

import pytest
from click.testing import CliRunner

from extract.cli import main as extract_cli
from store.cli import main as cache_cli
from tests.conftest import build_corpus
from train.cli import main as train_cli
from train.compare import main as compare_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_teacher):
    """A corpus, a complete cache of layers 1,3 and a run dir with a checkpoint, to be attacked below."""
    from extract import ExtractConfig, extract_features
    from train.config import TrainConfig
    from train.loop import train

    root = tmp_path_factory.mktemp("bad")
    corpus = build_corpus(str(root / "corpus"), n=4)
    s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(root / "caches"), progress=False))
    train(TrainConfig(cache=s.path, out=str(root / "run"), steps=2, batch_size=2, max_crop_samples=8000, num_workers=0,
                      valid_fraction=0.25, progress=False))
    (root / "afile").write_text("not a directory")
    (root / "empty").mkdir()
    (root / "bad.json").write_text("{not json")
    (root / "kaldi").mkdir()
    (root / "kaldi/wav.scp").write_text("rec1 sox in.flac -t wav - |\n")
    (root / "junk.jsonl.gz").write_bytes(b"not gzip")
    first = sorted(os.listdir(os.path.join(corpus, "spk0")))[0]
    for name, times in (("kaldi-nan", "nan 1.0"), ("kaldi-inf", "0 inf"), ("kaldi-huge", "0 1e308")):
        (root / name).mkdir()
        (root / name / "wav.scp").write_text(f"rec1 {corpus}/spk0/{first}\n")
        (root / name / "segments").write_text(f"utt1 rec1 {times}\n")
    import shutil

    for name, edit in (("run-badjsonl", "metrics"), ("run-badeval", "eval")):
        shutil.copytree(root / "run", root / name, ignore=shutil.ignore_patterns("ckpt.pt", "student", "tb"))
        if edit == "metrics":
            with open(root / name / "metrics.jsonl", "a") as f:
                f.write('{"eval": {"loss": \n')
        else:
            (root / name / "eval.json").write_text('{"step": 2, "loss": "lots"}')
    return {"root": root, "corpus": corpus, "cache": s.path, "teacher": tiny_teacher, "caches": str(root / "caches")}


def _snapshot(root) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f not in (".lock",):
                p = os.path.join(d, f)
                out[p] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
    return out


def _extract(w, *extra):
    return ["--teacher", w["teacher"], "--corpus", w["corpus"], "--cache-dir", w["caches"], "--layers", "1,3", "--quiet", *extra]


def _train(w, *extra):
    return ["--cache", w["cache"], "--out", str(w["root"] / "run2"), "--steps", "2", "--num-workers", "0", "--quiet", *extra]


CASES = [
    (extract_cli, lambda w: _extract(w, "--workers", "-2"), "--workers"),
    (extract_cli, lambda w: _extract(w, "--device", "tpu"), "--device tpu"),
    (extract_cli, lambda w: [*_extract(w), "--cache-dir", str(w["root"] / "afile")], "--cache-dir"),
    (extract_cli, lambda w: [*_extract(w), "--cache-dir", "/proc/x"], "/proc/x"),
    (extract_cli, lambda w: _extract(w, "--max-seconds", "-5"), "--max-seconds"),
    (extract_cli, lambda w: [*_extract(w), "--layers", "-1"], "--layers"),
    (extract_cli, lambda w: [*_extract(w), "--layers", "4,4"], "--layers"),
    (extract_cli, lambda w: [*_extract(w), "--teacher", str(w["root"] / "no-teacher")], "no-teacher"),
    (extract_cli, lambda w: [*_extract(w), "--corpus", str(w["root"] / "empty")], "no audio files"),
    (extract_cli, lambda w: [*_extract(w), "--corpus", str(w["root"] / "bad.json")], "bad.json"),
    (extract_cli, lambda w: [*_extract(w), "--corpus", str(w["root"] / "kaldi")], "wav.scp line 1 (rec1)"),
    (extract_cli, lambda w: [*_extract(w), "--corpus", str(w["root"] / "junk.jsonl.gz")], "junk.jsonl.gz"),
    (extract_cli, lambda w: _extract(w, "--segment-seconds", "2", "--segment-overlap", "3"), "--segment-overlap"),
    (extract_cli, lambda w: _extract(w, "--segment-overlap", "1"), "--segment-overlap"),
    (extract_cli, lambda w: _extract(w, "--batch-seconds", "nan"), "--batch-seconds nan"),
    (extract_cli, lambda w: _extract(w, "--part-seconds", "1e308"), "--part-seconds"),
    (extract_cli, lambda w: _extract(w, "--segment-seconds", "inf"), "--segment-seconds inf"),
    (extract_cli, lambda w: _extract(w, "--segment-seconds", "1", "--segment-overlap", "0.995"), "step by at least"),
    (train_cli, lambda w: _train(w, "--lr", "1e308"), "--lr"),
    (train_cli, lambda w: _train(w, "--seed", str(2**70)), "--seed"),
    (train_cli, lambda w: _train(w, "--seed", "-1"), "--seed"),
    (train_cli, lambda w: _train(w, "--steps", str(10**12)), "--steps"),
    (train_cli, lambda w: _train(w, "--batch-size", str(10**9)), "--batch-size"),
    (train_cli, lambda w: _train(w, "--student-width", "33"), "--student-width 33"),
    (compare_cli, lambda w: [str(w["root"] / "run"), str(w["root"] / "run-badjsonl")], "metrics.jsonl line"),
    (compare_cli, lambda w: [str(w["root"] / "run"), str(w["root"] / "run-badeval")], "not numbers"),
    (train_cli, lambda w: _train(w, "--device", "tpu"), "--device tpu"),
    (train_cli, lambda w: [*_train(w), "--out", str(w["root"] / "afile")], "--out"),
    (train_cli, lambda w: _train(w, "--max-crop-samples", "100"), "--max-crop-samples"),
    (train_cli, lambda w: _train(w, "--valid-fraction", "0.99"), "--valid-fraction"),
    (train_cli, lambda w: _train(w, "--lr", "nan"), "--lr"),
    (train_cli, lambda w: _train(w, "--layers", "-1"), "--layers"),
    (train_cli, lambda w: _train(w, "--layers", "4,4"), "--layers"),
    (train_cli, lambda w: _train(w, "--layers", "2"), "layers 2"),
    (train_cli, lambda w: [*_train(w), "--cache", "nosuchfingerprint", "--cache-dir", w["caches"]], "nosuchfingerprint"),
    (train_cli, lambda w: _train(w, "--config", str(w["root"] / "bad.json")), "bad.json"),
    (train_cli, lambda w: [*_train(w), "--out", str(w["root"] / "run"), "--resume", "--layers", "3"], "layers"),
    (train_cli, lambda w: [*_train(w), "--out", str(w["root"] / "run"), "--resume", "--batch-size", "3"], "batch_size"),
    (train_cli, lambda w: _train(w, "--student-width", "30", "--student-heads", "4"), "--student-width 30"),
    (train_cli, lambda w: _train(w, "--match", "1-4"), "--match 1-4"),
    (train_cli, lambda w: _train(w, "--match", "9:1"), "student layer 9"),
    (train_cli, lambda w: _train(w, "--student-layers", "-1"), "--student-layers"),
    (compare_cli, lambda w: [str(w["root"] / "run"), str(w["root"] / "empty")], "empty: no design.json"),
    (cache_cli, lambda w: ["info", str(w["root"] / "empty")], "empty"),
    (cache_cli, lambda w: ["ls", "--cache-dir", str(w["root"] / "afile")], "afile"),
    (cache_cli, lambda w: ["export", w["cache"], str(w["root"] / "empty")], "empty"),
    (cache_cli, lambda w: ["import", str(w["root"] / "bad.json")], "bad.json"),
    (cache_cli, lambda w: ["rm", str(w["root"] / "empty"), "--yes"], "empty"),
    (cache_cli, lambda w: ["verify", w["cache"], "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("cli,args,names", CASES, ids=[f"{c.name}:{n}" for c, _, n in CASES])
def test_bad_input_is_one_line(world, cli, args, names):
    before = _snapshot(world["root"])
    r = CliRunner().invoke(cli, args(world))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code not in (0, None) and "Traceback" not in r.output + r.stderr, r.output + r.stderr
    assert len(lines) == 1 and names in lines[0], r.stderr
    after = _snapshot(world["root"])
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p) and "run2" not in p]
    assert not changed, changed


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_damaged_checkpoint_is_one_line_and_never_suggests_unpickling(world, damage, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["root"] / "run", run)
    data = (run / "ckpt.pt").read_bytes()
    (run / "ckpt.pt").write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    r = CliRunner().invoke(train_cli, [*_train(world), "--out", str(run), "--resume"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "ckpt.pt" in r.stderr
    assert "weights_only" not in r.stderr and "Traceback" not in r.output


def test_a_garbage_marker_is_damage_not_a_crash(world, tmp_path):
    import shutil

    cache = tmp_path / "c"
    shutil.copytree(world["cache"], cache)
    os.remove(cache / "index.json")
    marker = sorted((cache / "commits").iterdir())[0]
    marker.write_text("")
    for args in (["ls", "--cache-dir", str(tmp_path)], ["info", str(cache)]):
        r = CliRunner().invoke(cache_cli, args)
        assert r.exit_code == 0 and "Traceback" not in r.output
    r = CliRunner().invoke(cache_cli, ["verify", str(cache)])
    assert r.exit_code == 1 and "unreadable commit marker" in r.stderr
    assert json.loads(CliRunner().invoke(cache_cli, ["info", str(cache), "--json"]).stdout)["damaged_markers"] == 1


@pytest.mark.parametrize("name,shown", [("kaldi-nan", "time nan s"), ("kaldi-inf", "time inf s"), ("kaldi-huge", "time 1e+308 s")])
def test_manifest_times_that_are_not_finite_seconds_are_bad_entries(world, name, shown):
    r = CliRunner().invoke(extract_cli, [*_extract(world), "--corpus", str(world["root"] / name)])
    assert r.exit_code == 2 and "Traceback" not in r.output + r.stderr
    assert f"segments line 1 (utt1): {shown} is not a finite number of seconds" in r.stderr


@pytest.mark.parametrize("edit", ["step", "shape", "student_config", "identity"])
def test_a_hand_edited_checkpoint_is_one_line(world, edit, tmp_path):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(world["root"] / "run", run)
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    if edit == "step":
        ckpt["step"] = "two"
    elif edit == "shape":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = torch.zeros(3, 3, 3)
    elif edit == "student_config":
        ckpt["student_config"]["num_hidden_layers"] = "many"
    else:
        ckpt["identity"] = [1, 2]
    torch.save(ckpt, run / "ckpt.pt")
    r = CliRunner().invoke(train_cli, [*_train(world), "--out", str(run), "--resume", "--batch-size", "2", "--max-crop-samples", "8000",
                                       "--valid-fraction", "0.25"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.count("\n") == 1 and "ckpt.pt" in r.stderr, r.stderr
