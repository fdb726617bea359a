"""rm and the teacher pretraining against user directories shaped like ours: each removes only what this project made, and
refuses anything else in one line before it asks or works (export-student's targets: tests/train/test_onnx.py)."""

import os

import pytest
from click.testing import CliRunner

from store.cli import main as cache_cli
from tests.conftest import build_corpus


def _tree(root) -> dict:
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(root) for f in files}


# ---- feature-cache rm ---------------------------------------------------------------------------------------------


def test_rm_refuses_a_user_directory_with_cache_like_names_before_asking(tmp_path):
    """A directory holding plan.json, an empty commits/ and thesis.tmp-final.docx was a cache to rm --yes ('.tmp-' in a
    name counted as our temp file), and rm without --yes asked before refusing."""
    user = tmp_path / "thesis"
    (user / "commits").mkdir(parents=True)
    (user / "plan.json").write_text("{}")
    (user / "thesis.tmp-final.docx").write_bytes(b"years of work")
    before = _tree(user)
    for args in ([str(user), "--yes"], [str(user)]):
        r = CliRunner().invoke(cache_cli, ["rm", *args], input="y\n")
        assert r.exit_code == 2 and "not a cache directory" in r.output and "thesis.tmp-final.docx" in r.output, r.output
        assert "delete /" not in r.output and len(r.output.strip().splitlines()) == 1  # refused before asking
        assert _tree(user) == before


def test_rm_still_removes_a_cache_holding_our_own_temp_files(small_cache):
    cache, _ = small_cache
    (open(os.path.join(cache.path, "index.json.tmp-123-0123abcd"), "w")).close()
    (open(os.path.join(cache.path, "commits", "p000000.json.tmp-123-0123abcd"), "w")).close()
    r = CliRunner().invoke(cache_cli, ["rm", cache.path, "--yes"])
    assert r.exit_code == 0 and not os.path.exists(cache.path), r.output


@pytest.mark.parametrize("name", ["index.json.tmp-final", "notes.tmp-1-0123abcd", "index.json.tmp-12-0123abcdX"])
def test_rm_refuses_names_that_only_look_like_our_temp_files(small_cache, name):
    cache, _ = small_cache
    (open(os.path.join(cache.path, name), "w")).close()
    r = CliRunner().invoke(cache_cli, ["rm", cache.path, "--yes"])
    assert r.exit_code == 2 and name in r.output and os.path.exists(os.path.join(cache.path, name))


# ---- the teacher pretraining ----------------------------------------------------------------------------------------


def _pretrain_cfg(corpus, out, **kw):
    from train.pretraining.pretrain import PretrainConfig

    small = dict(layers=1, hidden=16, heads=2, ffn=32, conv=16, clusters=4, steps=2, batch=2, crop_seconds=1.0, held_out=0.2)
    return PretrainConfig(str(corpus), str(out), **{**small, **kw})


def test_pretraining_refuses_a_users_directory_and_the_corpus_itself(tmp_path):
    from train.pretraining.pretrain import pretrain

    corpus = build_corpus(str(tmp_path / "c"), n=5)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    beside = tmp_path / "mine.tmp"  # the old staging name: a user's directory too
    beside.mkdir()
    (beside / "data").write_text("keep me too")
    before = _tree(tmp_path)
    for out in (user, corpus):
        with pytest.raises(SystemExit, match="holds no pretrained teacher"):
            pretrain(_pretrain_cfg(corpus, out))
        assert _tree(tmp_path) == before
    pytest.importorskip("faiss")
    empty = tmp_path / "empty"
    empty.mkdir()
    pretrain(_pretrain_cfg(corpus, empty))  # an empty directory is taken
    assert (empty / "pretrain.json").exists() and _tree(beside) == {str(beside / "data"): b"keep me too"}
    assert not [n for n in os.listdir(tmp_path) if "staging" in n]


def test_an_interrupted_pretrainings_staging_dir_is_removed_and_only_ours(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from train.pretraining import pretrain as module

    corpus = build_corpus(str(tmp_path / "c"), n=5)
    lookalike = tmp_path / ".t.staging-users"  # our prefix, no mark: not ours
    lookalike.mkdir()
    (lookalike / "x").write_text("x")

    def killed(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(module.json, "dump", killed)  # dies while saving the record, after the model is staged
    with pytest.raises(KeyboardInterrupt):
        module.pretrain(_pretrain_cfg(corpus, tmp_path / "t"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [".t.staging-users", "c"]  # the staging dir went with the error
    record = module.pretrain(_pretrain_cfg(corpus, tmp_path / "t"))
    assert record["held_out"] >= 1 and (lookalike / "x").read_text() == "x"
