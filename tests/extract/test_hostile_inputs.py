"""Hostile inputs as a user, an admin or a broken disk makes them: an unreadable folder, a NUL byte in a manifest, forged
header records, swapped markers, a marker's temp file left by a kill. Each is loud, and each advice repairs."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from extract import ExtractConfig, ExtractError, extract_features
from extract.cli import main as extract_cli
from store import open_cache, verify_cache
from store.cli import main as cache_cli
from store.index import read_sources, write_sources
from tests.conftest import age_files, build_corpus, write_wav


def _extract(teacher, corpus, cache_dir, **kw):
    kw.setdefault("layers", (1, 3))
    return extract_features(ExtractConfig(teacher, str(corpus), cache_dir=str(cache_dir), progress=False, **kw))


def test_an_unreadable_corpus_folder_is_bad_input_not_skipped_silently(tmp_path, tiny_teacher, monkeypatch):
    """A mode-000 folder was absent from --dry-run and the run ("2 of 2 utterances", exit 0). Tests run as root, who can
    list any folder, so the folder's listing is made to fail as it does for a user."""
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    locked = os.path.join(corpus, "spk1")
    real = os.scandir

    def scandir(path="."):
        if isinstance(path, str) and os.path.abspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ExtractError, match=r"spk1: a directory of the corpus that cannot be listed \(Permission denied\)"):
        _extract(tiny_teacher, corpus, tmp_path / "k")
    s = _extract(tiny_teacher, corpus, tmp_path / "k", on_error="skip")
    assert s.utterances == 2 and [k["path"] for k in s.skipped] == [locked]


def test_a_nul_byte_in_a_tsv_path_is_a_bad_entry(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    tsv = tmp_path / "m.tsv"
    tsv.write_text(f"{corpus}\nspk0/utt00.wav\t1\nspk1/ut\x00t01.wav\t1\n")
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", str(tsv), "--cache-dir", str(tmp_path / "k"),
                                         "--layers", "1", "--quiet"])
    assert r.exit_code == 2 and "line 3" in r.output and "NUL byte" in r.output and "Traceback" not in r.output, r.output
    s = _extract(tiny_teacher, tsv, tmp_path / "k", on_error="skip")
    assert s.utterances == 1 and "line 3" in s.skipped[0]["path"]


def _forge(cache_path: str, edit) -> None:
    """Edit every source record's header in the markers and sources.npz (a hand edit, a broken disk: the files stay)."""
    for name in os.listdir(os.path.join(cache_path, "commits")):
        path = os.path.join(cache_path, "commits", name)
        marker = json.load(open(path))
        for r in marker["sources"]:
            r["header"] = edit(r["header"])
        json.dump(marker, open(path, "w"))
    table = read_sources(cache_path)
    table.cols["header"] = np.array([edit(list(h)) for h in table.cols["header"]], np.int64)
    write_sources(cache_path, table)


@pytest.mark.parametrize("forged", ["rate halved", "frames tripled"])
def test_a_forged_header_record_never_plans_wrong_windows(tmp_path, tiny_teacher, capfd, forged):
    corpus = tmp_path / "c"
    write_wav(str(corpus / "long.wav"), 13.0, seed=1)
    age_files(str(corpus))
    first = _extract(tiny_teacher, corpus, tmp_path / "k", segment_seconds=2.0, segment_overlap=0.5)
    ids = sorted(open_cache(first.path).utterance_ids)
    _forge(first.path, (lambda h: [h[0] // 2, h[1], h[2]]) if forged == "rate halved" else (lambda h: [h[0], 3 * h[1], h[2]]))
    capfd.readouterr()
    again = _extract(tiny_teacher, corpus, tmp_path / "k", segment_seconds=2.0, segment_overlap=0.5)
    assert not again.teacher_work and sorted(open_cache(first.path).utterance_ids) == ids
    assert "disagree with their file's header, which is used instead" in capfd.readouterr().err
    problems = verify_cache(first.path, sources=True, workers=1)
    assert len(problems) == 1 and "record of its header" in problems[0]
    _extract(tiny_teacher, corpus, tmp_path / "k", segment_seconds=2.0, segment_overlap=0.5, repair=True)  # the advice repairs
    assert verify_cache(first.path, sources=True, workers=1) == [] and sorted(open_cache(first.path).utterance_ids) == ids


def test_swapped_commit_markers_get_advice_that_repairs_them(tmp_path, tiny_teacher):
    """verify named them and advised "re-run extract-features", whose re-run said "cache complete, no teacher work"."""
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    age_files(corpus)
    s = _extract(tiny_teacher, corpus, tmp_path / "k", part_seconds=3)
    commits = os.path.join(s.path, "commits")
    a, b = (os.path.join(commits, n) for n in sorted(os.listdir(commits))[:2])
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)
    r = CliRunner().invoke(cache_cli, ["verify", s.path, "--workers", "1"])
    assert r.exit_code == 1 and "--repair" in r.output
    assert "re-run extract-features to redo" not in r.output  # the advice that did not repair
    fix = r.output.strip().splitlines()[-1].split("repair with: ")[1]
    command, *args = shlex.split(fix)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), command), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert verify_cache(s.path, workers=1) == []


def test_a_markers_temp_file_left_by_a_kill_is_removed_by_the_next_run(tmp_path, tiny_teacher):
    """SIGTERM while a commit marker is written left commits/<part>.json.tmp-<pid>-<hex> for good: the temp file was
    not tracked for the handler, and stale-temp cleanup looked only at the cache's top level."""
    from store import fs

    corpus = build_corpus(str(tmp_path / "c"), n=2)
    s = _extract(tiny_teacher, corpus, tmp_path / "k")
    part = os.listdir(os.path.join(s.path, "commits"))[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = os.path.join(s.path, "commits", f"{part}.tmp-{dead.pid}-0123abcd")
    open(left, "w").close()
    _extract(tiny_teacher, corpus, tmp_path / "k")
    assert not os.path.exists(left)
    seen = []
    real = fs.write_bytes
    fs.write_bytes = lambda path, data, durable=True: (seen.append(set(fs._in_flight)), real(path, data, durable))[1]
    try:
        fs.publish_json(str(tmp_path / "m.json"), {"a": 1})
    finally:
        fs.write_bytes = real
    assert any(str(tmp_path / "m.json.tmp-") in t for t in seen[0]) and not fs._in_flight  # tracked while in flight


def test_an_unreachable_scheduler_leaves_no_empty_cache(tmp_path, tiny_teacher):
    """Issue 35 item 12: the refusal left a cache that `ls` showed as `partial (1 part(s) pending) utterances=0`."""
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    with pytest.raises(ExtractError, match="--scheduler tcp://127.0.0.1:9: cannot reach it"):
        _extract(tiny_teacher, corpus, tmp_path / "k", scheduler="tcp://127.0.0.1:9")
    assert not os.path.exists(tmp_path / "k") or os.listdir(tmp_path / "k") == []


def test_a_truncated_flac_with_a_whole_header_is_refused_before_teacher_work(tmp_path, tiny_teacher):
    """Issue 35 item 13: it passed the header check and stopped the run at decode, after teacher work began."""
    corpus = build_corpus(str(tmp_path / "c"), n=3, ext="flac")
    victim = os.path.join(corpus, "spk0", "utt00.flac")
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) * 2 // 3])
    with pytest.raises(ExtractError, match=r"utt00.flac: truncated: its header says \d+ samples"):
        _extract(tiny_teacher, corpus, tmp_path / "k")
    assert not os.path.exists(tmp_path / "k") or os.listdir(tmp_path / "k") == []  # refused before any teacher work
    s = _extract(tiny_teacher, corpus, tmp_path / "k", on_error="skip")
    assert s.utterances == 2 and "truncated" in s.skipped[0]["reason"]
