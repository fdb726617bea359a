"""Issue 35, in part: help that tells the truth and lines that say what was ignored."""

import os

from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from store.cli import main as cache_cli
from tests.conftest import build_corpus
from train.cli import main as train_cli


def test_train_help_says_which_layers_and_which_devices_and_seed():
    text = " ".join(CliRunner().invoke(train_cli, ["--help"]).output.split())
    assert "with --cache, the cache's layers; 4,8,12 when the teacher runs online" in text
    assert "[default: 4,8,12]" not in text and "cuda:N" in text and "[default: 0]" in text


def test_verify_takes_quiet(small_cache):
    cache, _ = small_cache
    r = CliRunner().invoke(cache_cli, ["verify", cache.path, "--quiet"])
    assert r.exit_code == 0 and "verifying" not in r.output and r.output.startswith("ok:"), r.output


def test_a_codec_an_existing_cache_does_not_use_is_said(tmp_path, tiny_teacher, capfd):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1,), cache_dir=str(tmp_path / "k"), progress=False))
    capfd.readouterr()
    extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1,), cache_dir=str(tmp_path / "k"), codec="zstd", progress=False))
    assert f"{s.path}: keeps its codec blosc-zstd; --codec zstd applies to new caches only" in capfd.readouterr().err
    extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1,), cache_dir=str(tmp_path / "k"), progress=False))
    assert "keeps its codec" not in capfd.readouterr().err  # not given: nothing to say


def test_export_of_a_run_dir_without_a_student_is_our_one_line(tmp_path):
    from train.export.onnx_graph import main as export_cli

    os.makedirs(tmp_path / "run")
    r = CliRunner().invoke(export_cli, [str(tmp_path / "run"), "--onnx", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and r.output.strip().endswith("give the run dir of a finished train-student run"), r.output


def test_a_path_ending_in_a_fingerprint_prefix_resolves(small_cache):
    """docs/scale-out.md writes --cache /shared/distilcache/3f2a9c0e5d: a root and a unique prefix."""
    import pytest

    from store import CacheNotFoundError, open_cache

    cache, _ = small_cache
    root, fp = os.path.split(cache.path)
    assert open_cache(os.path.join(root, fp[:8])).path == cache.path
    with pytest.raises(CacheNotFoundError, match="no such cache path, nor fingerprint"):
        open_cache(os.path.join(root, "zz"))
    with pytest.raises(CacheNotFoundError, match="no such cache"):
        open_cache(os.path.join(root, "nodir", fp[:8]))


def test_rm_says_which_derived_caches_remain_and_ls_marks_a_stale_one(tmp_path):
    """Issue 35 item 4: removing a source said nothing of its conversions; a conversion whose source grew looked current."""
    from store import Layout, create_cache
    from store.convert import convert_cache
    from tests.conftest import make_spec, write_parts

    layout = Layout(chunk_frames=8, shard_frames=32)
    src = create_cache(str(tmp_path / "root"), make_spec(), {"teacher": "tiny"}, layout)
    write_parts(src, {"p000000": [("a", 20), ("b", 9)]}, layout=layout)
    copy = convert_cache(src, "float32")
    line = [row for row in CliRunner().invoke(cache_cli, ["ls", "--cache-dir", str(tmp_path / "root")]).output.splitlines()
            if row.startswith(copy.fingerprint)][0]
    assert "derived from" in line and "stale" not in line
    write_parts(src, {"p000001": [("c", 12)]}, layout=layout)  # the source grows
    line = [row for row in CliRunner().invoke(cache_cli, ["ls", "--cache-dir", str(tmp_path / "root")]).output.splitlines()
            if row.startswith(copy.fingerprint)][0]
    assert "stale: the source grew since" in line
    r = CliRunner().invoke(cache_cli, ["rm", src, "--yes"])
    assert r.exit_code == 0 and "1 cache(s) derived from it remain" in r.output and copy.path in r.output
