"""Issue 10 for training: one writer per run dir, no silent partial caches, one line from loader workers and signals."""

import os
import shutil
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from store import open_cache
from store.index import uncommit
from store.lock import exclusive
from tests.conftest import build_corpus
from train.cli import main


def _args(cache, out, *extra):
    return ["--cache", cache, "--out", str(out), "--steps", "2", "--batch-size", "2", "--max-crop-samples", "8000",
            "--num-workers", "0", "--valid-fraction", "0.2", "--quiet", *extra]


def test_a_run_dir_has_one_writer(cached, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with exclusive(str(out)):
        r = CliRunner().invoke(main, _args(cached["path"], out))
    assert r.exit_code == 2 and "another train-student" in r.stderr and r.stderr.count("\n") == 1
    assert os.listdir(out) == [".lock"]  # nothing written by the refused run
    assert CliRunner().invoke(main, _args(cached["path"], out)).exit_code == 0


def test_a_partial_cache_is_refused_unless_asked(cached, tmp_path):
    from extract import ExtractConfig, extract_features

    path = extract_features(ExtractConfig(cached["teacher"], cached["corpus"], layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                          part_seconds=3, progress=False)).path
    cache = open_cache(path)
    assert len(cache.parts) > 2
    part = cache.parts[0]
    uncommit(path, part, cache.part_dirs[part])  # as if extraction had been interrupted before this part
    r = CliRunner().invoke(main, _args(path, tmp_path / "a"))
    assert r.exit_code == 2 and "is unfinished" in r.stderr and "--allow-partial" in r.stderr, r.stderr
    r = CliRunner().invoke(main, _args(path, tmp_path / "b", "--allow-partial"))
    assert r.exit_code == 0 and "training on the committed utterances" in r.stderr
    with exclusive(path):  # an extract-features running now
        r = CliRunner().invoke(main, _args(path, tmp_path / "c"))
    assert r.exit_code == 2 and "being extracted now" in r.stderr


def test_an_error_inside_a_loader_worker_is_one_line(cached, tmp_path):
    cache_dir = tmp_path / "caches"
    shutil.copytree(cached["cache_dir"], cache_dir)
    path = str(cache_dir / os.path.basename(cached["path"]))
    cache = open_cache(path)
    for part in cache.parts:  # damage every shard of layer 3: whichever crop comes first hits it
        shard = os.path.join(path, "parts", cache.part_dirs[part], "layer_3", "c", "0", "0")
        data = bytearray(open(shard, "rb").read())
        for i in range(0, len(data) - 2000, 50):  # every chunk, not the index
            data[i] ^= 0xFF
        open(shard, "wb").write(bytes(data))
    r = CliRunner().invoke(main, [*_args(path, tmp_path / "r"), "--num-workers", "1"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "crc32c" in r.stderr, r.stderr
    assert "Original Traceback" not in r.stderr and "Traceback" not in r.output


def test_sigterm_is_like_ctrl_c_and_says_what_was_kept(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=30)
    cmd = [sys.executable, "-m", "extract.cli", "--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1,3",
           "--cache-dir", str(tmp_path / "k"), "--part-seconds", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        commits = [p for p in (tmp_path / "k").glob("*/commits/*.json")]
        if commits:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted: every committed part is kept; re-run the same command to continue"
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0 and len(open_cache(rerun.stdout.strip().splitlines()[-1])) == 30


def test_a_pickle_only_teacher_extracts_and_trains_with_allow_pickle(tmp_path, tiny_teacher):
    import torch
    from transformers import HubertModel

    from extract.cli import main as extract_cli

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(HubertModel.from_pretrained(tiny_teacher).state_dict(), pickled / "pytorch_model.bin")
    for f in ("config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(tiny_teacher, f), pickled / f)
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    base = ["--teacher", str(pickled), "--corpus", corpus, "--layers", "1,3", "--cache-dir", str(tmp_path / "k"), "--quiet"]
    r = CliRunner().invoke(extract_cli, base)
    assert r.exit_code == 2 and "--allow-pickle" in r.stderr
    r = CliRunner().invoke(extract_cli, [*base, "--allow-pickle"])
    assert r.exit_code == 0, r.stderr
    cache = r.stdout.strip().splitlines()[-1]
    r = CliRunner().invoke(main, _args(cache, tmp_path / "run"))
    assert r.exit_code == 2 and "--allow-pickle" in r.stderr
    assert CliRunner().invoke(main, _args(cache, tmp_path / "run", "--allow-pickle")).exit_code == 0
    assert CliRunner().invoke(extract_cli, [*base[:1], tiny_teacher, *base[2:], "--allow-pickle"]).exit_code == 0  # safetensors too


def test_a_subset_of_the_cache_corpus_matches_by_path_under_its_root(tmp_path, tiny_teacher):
    from extract import ExtractConfig, extract_features

    corpus = build_corpus(str(tmp_path / "LibriSpeech" / "train-clean-100"), n=4)
    build_corpus(str(tmp_path / "LibriSpeech" / "dev-clean"), n=2, seed=3)
    s = extract_features(ExtractConfig(tiny_teacher, str(tmp_path / "LibriSpeech"), layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                       progress=False))
    r = CliRunner().invoke(main, [*_args(s.path, tmp_path / "run", "--valid-fraction", "0"), "--corpus", corpus])
    assert r.exit_code == 0, r.stderr
    import json
    cfg_ids = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg_ids["corpus"] == corpus
    from store import open_cache as oc
    from train.sources import subset_ids

    assert sorted(subset_ids(oc(s.path), corpus)) == sorted(u for u in oc(s.path).utterance_ids if u.startswith("train-clean-100/"))
    other = build_corpus(str(tmp_path / "elsewhere"), n=1)
    r = CliRunner().invoke(main, [*_args(s.path, tmp_path / "run2"), "--corpus", other])
    assert r.exit_code == 2 and "none of its 1 utterances" in r.stderr
