"""Which cache a run trains from is chosen without surprises and said: exact storage before a lossy copy, one corpus
at a time, and the run dir records what it trained on (run.json, a resolved config.json)."""

import json
import os

import pytest
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from store import SpecMismatchError
from store.cli import main as cache_cli
from tests.conftest import build_corpus
from train.cli import main as train_cli
from train.config import TrainConfig, load_config
from train.loop import train


def _cfg(out, **kw):
    base = {"out": str(out), "steps": 2, "batch_size": 2, "max_crop_samples": 8000, "num_workers": 0, "valid_fraction": 0.25,
            "progress": False, "init": "random"}
    return TrainConfig(**{**base, **kw})


def test_cache_with_no_value_prefers_exact_storage_and_says_which(tmp_path, tiny_teacher, capsys):
    """After the README's own `feature-cache convert --storage int8`, --cache (no value) used to train on the int8 copy
    (the tie was broken by fingerprint order)."""
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False))
    for storage in ("int8", "int4"):
        assert CliRunner().invoke(cache_cli, ["convert", s.path, "--storage", storage]).exit_code == 0
    capsys.readouterr()
    train(_cfg(tmp_path / "run", cache="", teacher=tiny_teacher, cache_dir=str(tmp_path / "k"), layers=(1, 3)))
    record = json.load(open(tmp_path / "run/run.json"))
    assert record["cache"]["fingerprint"] == s.fingerprint and record["cache"]["storage"] == "float16"
    assert record["cache"]["derived_from"] is None and record["layers"] == [1, 3]
    assert record["train"]["utterances"] + record["held_out"]["utterances"] == 4 and record["design"]["preset"] == "distilhubert"
    assert f"training from cache {s.fingerprint} (float16 targets)" in capsys.readouterr().err
    config = json.load(open(tmp_path / "run/config.json"))  # resolved: what was used, not the flags as typed
    assert config["cache"] == s.path and config["layers"] == [1, 3] and config["teacher"] == tiny_teacher
    assert load_config(str(tmp_path / "run/config.json"), {"out": str(tmp_path / "again")}).cache == s.path
    derived = json.loads(CliRunner().invoke(cache_cli, ["convert", s.path, "--storage", "int8", "--json"]).stdout.splitlines()[-1])
    train(_cfg(tmp_path / "lossy", cache=derived["path"]))
    lossy = json.load(open(tmp_path / "lossy/run.json"))["cache"]
    assert lossy["storage"] == "int8" and lossy["derived_from"] == s.fingerprint and lossy["lossy"]
    assert f"derived from {s.fingerprint}" in capsys.readouterr().err


def test_a_cache_holding_two_corpora_trains_on_the_one_chosen(tmp_path, tiny_teacher):
    """A dev set under the training root joins the same cache under other ids (the same audio twice): training refuses to
    guess, and --corpus picks exactly one corpus's ids."""
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    kw = dict(layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False)
    path = extract_features(ExtractConfig(tiny_teacher, corpus, **kw)).path
    extract_features(ExtractConfig(tiny_teacher, f"{corpus}/spk0", **kw))
    with pytest.raises(SpecMismatchError, match=r"holds 2 corpora .*choose the one to train on with --corpus"):
        train(_cfg(tmp_path / "run", cache=path))
    train(_cfg(tmp_path / "dev", cache=path, corpus=f"{corpus}/spk0", valid_fraction=0.0))
    dev = json.load(open(tmp_path / "dev/run.json"))
    assert dev["train"]["utterances"] == 3  # spk0's three files once, under one corpus's ids
    train(_cfg(tmp_path / "all", cache=path, corpus=corpus, valid_fraction=0.0))
    assert json.load(open(tmp_path / "all/run.json"))["train"]["utterances"] == 6
    assert os.path.exists(tmp_path / "all/student/config.json")


def test_run_json_says_what_code_ran_how_long_and_on_which_held_out_ids(cached, tmp_path):
    """Issue 35 item 7: the code's version and commit, wall time, steps per second, the held-out ids."""
    out = tmp_path / "r"
    train(_cfg(out, cache=cached["path"], steps=3))
    record = json.load(open(out / "run.json"))
    assert record["versions"]["distilcache"] and "git_commit" in record["versions"]
    assert record["wall_seconds"] > 0 and record["steps_this_session"] == 3 and record["steps_per_second"] > 0
    held = open(out / record["held_out"]["ids_file"]).read().split()
    assert len(held) == record["held_out"]["utterances"] >= 1
    import hashlib

    assert hashlib.sha256("\n".join(sorted(held)).encode()).hexdigest()[:16] == record["held_out"]["ids_sha256"]


def test_config_json_says_what_was_used_and_reruns_it(cached, tmp_path):
    """config.json holds the student's sizes, the device and the precision that were used (never 0, "" or "auto"), and
    `--config RUN/config.json --resume` continues the run; a checkpoint that kept the flags as typed (0: the preset's)
    resumes too, while a design that really differs is refused."""
    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.config import ConfigError

    out = tmp_path / "run"
    train(_cfg(out, cache=cached["path"], steps=4, stop_after=2, match="2:3,1:1"))
    config = json.load(open(out / "config.json"))
    assert (config["student_layers"], config["device"], config["precision"], config["match"]) == (2, "cpu", "fp32", "1:1,2:3")
    assert min(config["student_width"], config["student_heads"], config["student_ffn"]) > 0
    ckpt = load_checkpoint(str(out))  # as an older run wrote it: the design's flags as typed
    ckpt["identity"].update(student_layers=0, student_width=0, student_heads=0, student_ffn=0, match="2:3,1:1")
    save_checkpoint(str(out), ckpt)
    with pytest.raises(ConfigError, match="student_layers: checkpoint has 2, now 3"):
        train(load_config(str(out / "config.json"), {"resume": True, "stop_after": 3, "student_layers": 3, "match": "1:1,3:3"}))
    train(load_config(str(out / "config.json"), {"resume": True, "stop_after": 0}))
    assert json.load(open(out / "eval.json"))["step"] == 4


def test_caches_are_chosen_by_what_they_hold_never_by_fingerprint(tmp_path, tiny_teacher):
    """Issue 35 item 3: several caches of one teacher (float16, its int8 and int4 copies, another corpus): --cache with no
    value lists each candidate as `feature-cache ls` does when it cannot choose, and --storage / --corpus choose."""
    from train.sources import load_sources

    a, b = build_corpus(str(tmp_path / "a"), n=4), str(tmp_path / "b")
    build_corpus(str(tmp_path / "b"), n=4, seed=5)
    kw = dict(layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False)
    base = extract_features(ExtractConfig(tiny_teacher, a, **kw))
    other = extract_features(ExtractConfig(tiny_teacher, b, **kw, audio="int16"))  # another spec: its own cache
    for storage in ("int8", "int4"):
        assert CliRunner().invoke(cache_cli, ["convert", base.path, "--storage", storage]).exit_code == 0

    def cfg(**more):
        return _cfg(tmp_path / "run", cache="", teacher=tiny_teacher, cache_dir=str(tmp_path / "k"), layers=(1, 3), **more)

    with pytest.raises(SpecMismatchError, match="2 caches of --teacher .* fit, holding different corpora") as refused:
        load_sources(cfg())
    said = str(refused.value)  # the exact caches of each corpus, each described
    described = f"(float16 targets, float32 audio, layers 1,3, whole utterances, corpus {os.path.realpath(a)}, 4 utterances"
    assert f"{base.fingerprint} {described}" in said
    assert f"{other.fingerprint} (float16 targets" in said and "choose with --storage MODE, --corpus DIR or --layers" in said
    assert "\n" not in said
    chosen = load_sources(cfg(storage="int4")).cache
    assert chosen.spec["storage_dtype"] == "int4" and chosen.spec["derived_from"]["fingerprint"] == base.fingerprint
    assert load_sources(cfg(corpus=b)).cache.fingerprint == other.fingerprint
    assert load_sources(cfg(corpus=a)).cache.fingerprint == base.fingerprint  # exact first among a's float16, int8, int4
    with pytest.raises(SpecMismatchError, match=r"none of the 4 caches .* fits --storage pq \(") as none:
        load_sources(cfg(storage="pq"))
    assert "(int8 targets" in str(none.value) and "(int4 targets" in str(none.value)
    with pytest.raises(SpecMismatchError, match="stores float16 targets, not --storage int8"):
        load_sources(_cfg(tmp_path / "run", cache=base.path, storage="int8"))
    r = CliRunner().invoke(train_cli, ["--cache", "--teacher", tiny_teacher, "--cache-dir", str(tmp_path / "k"), "--storage", "int8",
                                       "--layers", "1,3",
                                       "--corpus", a, "--out", str(tmp_path / "cli"), "--steps", "1", "--batch-size", "2",
                                       "--max-crop-samples", "8000", "--num-workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.load(open(tmp_path / "cli" / "run.json"))["cache"]["storage"] == "int8"
    assert "Writing model shards" not in r.output and "Loading weights" not in r.output  # transformers' bars: not our lines
