"""Resume after kill -9, growth, bad input both ways, TSV manifests, dask == local."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from extract import ExtractConfig, ExtractError, extract_features
from extract.cli import main
from store import open_cache, verify_cache
from tests.conftest import build_corpus, write_wav

_ATTEMPT = re.compile(rb"(p[0-9a-f]{16})\.[0-9a-f]{12}")
_TAKEN = re.compile(rb'"taken_ns":\d+')


def _tree(path):
    """Every byte of a cache, with each attempt directory's random token and each source record's read time taken out
    (plan.json: progress; checked.json: local stats)."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            if f not in (".lock", ".clock", "plan.json", "checked.json"):  # checked.json: stats of this machine's files; .clock: its clock
                p = os.path.join(d, f)
                data = _records(p) if f == "sources.npz" else open(p, "rb").read()
                data = _TAKEN.sub(b'"taken_ns":0', _ATTEMPT.sub(rb"\1", data))
                out[_ATTEMPT.sub(rb"\1", os.path.relpath(p, path).encode()).decode()] = data
    return out


def _records(path: str) -> bytes:
    """sources.npz's records, every one, as JSON (the columns are compressed: no regex could mask a read time in them)."""
    from store.source_table import table_from_bytes

    table = table_from_bytes(open(path, "rb").read())
    return json.dumps([[p, table.entry(i)] for i, p in enumerate(table.parts)], separators=(",", ":")).encode()


def _cli(teacher, corpus, cache_dir, *extra):
    return [sys.executable, "-m", "extract.cli", "--teacher", teacher, "--corpus", corpus, "--layers", "1,3",
            "--cache-dir", cache_dir, "--part-seconds", "1", "--batch-seconds", "3", "--quiet", *extra]


def test_kill_9_then_rerun_gives_the_same_bytes_and_redoes_only_parts_in_flight(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=24)
    ref = subprocess.run(_cli(tiny_teacher, corpus, str(tmp_path / "ref")), capture_output=True, text=True, check=True)
    ref_path = ref.stdout.strip().splitlines()[-1]

    proc = subprocess.Popen(_cli(tiny_teacher, corpus, str(tmp_path / "k")), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    commits = tmp_path / "k" / os.path.basename(ref_path) / "commits"
    deadline = time.time() + 120
    while time.time() < deadline and len([f for f in os.listdir(commits) if f.endswith(".json")] if commits.exists() else []) < 3:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(f for f in os.listdir(commits) if f.endswith(".json"))
    total = len(json.load(open(commits.parent / "plan.json"))["parts"])  # the plan before the kill
    assert 3 <= len(done) < total, "the run must be interrupted mid-way for this test to mean anything"
    before = {f: os.stat(commits / f).st_mtime_ns for f in done}

    rerun = subprocess.run(_cli(tiny_teacher, corpus, str(tmp_path / "k"), "--json"), capture_output=True, text=True, check=True)
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["parts_done_now"] == total - len(done)
    assert {f: os.stat(commits / f).st_mtime_ns for f in done} == before  # committed parts not redone
    assert _tree(summary["path"]) == _tree(ref_path)  # byte for byte
    assert verify_cache(summary["path"]) == []


def test_rerun_on_complete_cache_does_no_teacher_work_and_growth_adds_only_new_files(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    cfg = ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), part_seconds=2, progress=False)
    first = extract_features(cfg)
    again = extract_features(cfg)
    assert first.teacher_work and not again.teacher_work and again.path == first.path
    old = _tree(first.path)
    write_wav(f"{corpus}/spk9/new.wav", 1.0, seed=9)
    grown = extract_features(cfg)
    assert grown.utterances == 5 and grown.parts_done_now == 1
    new = _tree(grown.path)
    assert all(new[k] == v for k, v in old.items() if k not in ("index.json", "sources.npz"))
    assert "spk9/new" in open_cache(grown.path)


def test_bad_input_fail_lists_every_file_before_teacher_work(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    open(f"{corpus}/fake.wav", "w").write("this is text")
    open(f"{corpus}/empty.flac", "wb").close()
    write_wav(f"{corpus}/short.wav", 0.02)
    write_wav(f"{corpus}/long.wav", 3.0)
    r = CliRunner().invoke(main, ["--teacher", tiny_teacher, "--corpus", corpus, "--cache-dir", str(tmp_path / "k"),
                                  "--layers", "1", "--max-seconds", "2.5"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    for name, reason in [("fake.wav", "not readable as audio"), ("empty.flac", "not readable"), ("short.wav", "too short"),
                         ("long.wav", "longer than --max-seconds")]:
        assert any(name in line and reason in line for line in r.output.splitlines()), (name, r.output)
    assert not os.path.exists(tmp_path / "k") or not any(os.scandir(tmp_path / "k"))  # no teacher work, no cache


def test_bad_input_skip_caches_the_rest_and_records_reasons(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    open(f"{corpus}/fake.wav", "w").write("this is text")
    r = CliRunner().invoke(main, ["--teacher", tiny_teacher, "--corpus", corpus, "--cache-dir", str(tmp_path / "k"),
                                  "--layers", "1", "--on-error", "skip", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["utterances"] == 3 and len(summary["skipped"]) == 1 and "fake.wav" in summary["skipped"][0]["path"]
    assert open_cache(summary["path"]).skipped == summary["skipped"]


def test_decode_failure_after_a_good_header(tmp_path, tiny_teacher):
    """A file whose header reads but whose data is cut off: fail names it; skip records it."""
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    write_wav(f"{corpus}/cut.flac", 2.0)
    data = open(f"{corpus}/cut.flac", "rb").read()
    open(f"{corpus}/cut.flac", "wb").write(data[: len(data) // 3])
    cfg = dict(teacher=tiny_teacher, corpus=corpus, layers=(1,), cache_dir=str(tmp_path / "k"), progress=False)
    try:
        s = extract_features(ExtractConfig(**cfg, on_error="skip"))
    except ExtractError as e:  # pragma: no cover - depends on libsndfile's tolerance
        pytest.fail(str(e))
    assert s.utterances in (2, 3)  # libsndfile may decode a truncated FLAC partially; it never crashes the run


def test_teacher_and_layer_errors_are_one_line(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=1)
    runner = CliRunner()
    r = runner.invoke(main, ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "4", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 2 and "has layers 0..3" in r.output and r.output.count("\n") == 1
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)).save_pretrained(
        str(tmp_path / "bert"))
    r = runner.invoke(main, ["--teacher", str(tmp_path / "bert"), "--corpus", corpus, "--cache-dir", str(tmp_path)])
    assert r.exit_code == 2 and "not a speech encoder" in r.output
    r = runner.invoke(main, ["--teacher", str(tmp_path / "nothing-here"), "--corpus", corpus, "--cache-dir", str(tmp_path)],
                      env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 2 and "no such directory" in r.output and r.output.count("\n") == 1


def test_a_teacher_without_its_feature_extractor_config_is_refused_not_guessed(tmp_path, tiny_teacher):
    """Its sample rate and normalisation shape the targets: a layer-norm teacher saved without preprocessor_config.json
    (or an offline hub copy that lacks it) was extracted with do_normalize=False, silently. Now one line, no cache."""
    from tests.conftest import build_tiny_teacher

    teacher = build_tiny_teacher(str(tmp_path / "t"), norm="layer")
    os.remove(os.path.join(teacher, "preprocessor_config.json"))
    corpus = build_corpus(str(tmp_path / "c"), n=1)
    r = CliRunner().invoke(main, ["--teacher", teacher, "--corpus", corpus, "--cache-dir", str(tmp_path / "k")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "preprocessor_config.json" in r.output and "never guessed" in r.output
    assert not os.path.exists(tmp_path / "k") or not os.listdir(tmp_path / "k")


def test_tsv_manifest_equals_directory(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    import soundfile as sf

    rels = sorted(os.path.relpath(os.path.join(d, f), corpus) for d, _, fs in os.walk(corpus) for f in fs)
    tsv = tmp_path / "train.tsv"
    tsv.write_text(corpus + "\n" + "".join(f"{r}\t{sf.info(os.path.join(corpus, r)).frames}\n" for r in rels))
    a = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(2,), cache_dir=str(tmp_path / "a"), progress=False))
    b = extract_features(ExtractConfig(tiny_teacher, str(tsv), layers=(2,), cache_dir=str(tmp_path / "b"), progress=False))
    assert a.fingerprint == b.fingerprint
    # the same bytes but for the record of which --corpus input each part came from (the directory, or the TSV)
    ta, tb = (_tree(p.path) for p in (a, b))
    strip = {corpus.encode(): b"<input>", os.path.realpath(str(tsv)).encode(): b"<input>"}
    for t in (ta, tb):
        for k, v in t.items():
            for old, new in strip.items():
                v = v.replace(b'"' + old + b'"', b'"' + new + b'"')
            t[k] = v
    assert ta == tb


def test_two_dask_workers_write_the_same_bytes_as_one(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=8)
    base = dict(teacher=tiny_teacher, corpus=corpus, layers=(1, 3), part_seconds=2, device="cpu", progress=False)
    one = extract_features(ExtractConfig(**base, cache_dir=str(tmp_path / "one"), workers=1))
    two = extract_features(ExtractConfig(**base, cache_dir=str(tmp_path / "two"), workers=2))
    assert two.parts_done_now == one.parts_done_now > 2
    assert _tree(two.path) == _tree(one.path)
    # In-process extraction uses more CPU threads, so fp32 sums round differently: equal to storage precision.
    local = open_cache(extract_features(ExtractConfig(**base, cache_dir=str(tmp_path / "local"))).path)
    for uid in local.utterance_ids:
        a, b = local.read(uid, 3).astype(np.float32), open_cache(two.path).read(uid, 3).astype(np.float32)
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
