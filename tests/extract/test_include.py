"""Issue 35 item 6: LibriSpeech unpacks train-*, dev-* and test-* under one root; --include takes only some folders,
recorded as part of the corpus, and a training corpus holding folders named like held-out sets is said in one line."""

import json
import os

from click.testing import CliRunner

from extract.cli import main as extract_cli
from store import open_cache
from tests.conftest import write_wav
from train.cli import main as train_cli


def librispeech_like(root) -> str:
    for i, folder in enumerate(("train-clean-5", "train-other-5", "dev-clean", "test-clean")):
        for j in range(3):
            write_wav(os.path.join(root, folder, "19", f"{folder}-{j}.flac"), 0.6 + 0.1 * j, seed=10 * i + j)
    return str(root)


def test_include_takes_the_training_folders_and_the_rest_is_said(tmp_path, tiny_teacher):
    corpus = librispeech_like(tmp_path / "LibriSpeech")
    base = ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1,3", "--cache-dir", str(tmp_path / "k"), "--quiet"]
    r = CliRunner().invoke(extract_cli, [*base, "--include", "train-*", "--json"])
    assert r.exit_code == 0, r.output
    cache = open_cache(json.loads(r.stdout.strip().splitlines()[-1])["path"])
    assert sorted({u.split("/")[0] for u in cache.utterance_ids}) == ["train-clean-5", "train-other-5"] and len(cache) == 6
    assert list(cache.corpora()) == [f"{os.path.realpath(corpus)} [include train-*]"] and "held-out sets" not in r.stderr
    trained = CliRunner().invoke(train_cli, ["--cache", cache.path, "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                                             "--max-crop-samples", "8000", "--num-workers", "0", "--valid-fraction", "0", "--quiet"])
    assert trained.exit_code == 0 and "held-out sets" not in trained.stderr, trained.output

    everything = CliRunner().invoke(extract_cli, [*base, "--cache-dir", str(tmp_path / "all")])
    assert everything.exit_code == 0, everything.output
    assert "holds dev-clean/, test-clean/ (held-out sets, by their names)" in everything.stderr
    path = everything.stdout.strip().splitlines()[-1]
    trained = CliRunner().invoke(train_cli, ["--cache", path, "--out", str(tmp_path / "all-run"), "--steps", "1", "--batch-size", "2",
                                             "--max-crop-samples", "8000", "--num-workers", "0", "--valid-fraction", "0", "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert "warning: training on utterances under dev-clean/, test-clean/ (held-out sets, by their names)" in trained.stderr


def test_an_include_that_matches_nothing_is_one_line_and_makes_nothing(tmp_path, tiny_teacher):
    corpus = librispeech_like(tmp_path / "LibriSpeech")
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1", "--include", "train_*",
                                         "--cache-dir", str(tmp_path / "k")])
    assert r.exit_code != 0 and "--include train_*: matches none of the 12 utterances" in r.output
    assert "Traceback" not in r.output
    assert not os.path.exists(tmp_path / "k") or not os.listdir(tmp_path / "k")  # refused before any cache was made
