"""A re-run with nothing to do names its cache without loading the teacher (issue 34: the load was most of a small re-run
and a third of a LibriSpeech-sized one). The record is trusted only while the teacher's files are what they were, and a
run with work checks it against the real teacher: wrong is loud, never a wrong cache."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import extract.teacher
import store.source_files
from extract import ExtractConfig, ExtractError, extract_features
from extract.known_teacher import MEMO, KnownTeacher
from store import verify_cache
from tests.conftest import age_files, build_corpus, build_tiny_family, build_tiny_teacher, count_calls, write_wav


@pytest.mark.parametrize("family", ["hubert", "wav2vec2-layer", "wavlm", "data2vec-audio"])
def test_the_remembered_spec_is_the_loaded_teachers(tmp_path, family):
    path = build_tiny_teacher(str(tmp_path / family)) if family == "hubert" else build_tiny_family(str(tmp_path / family), family)
    teacher = extract.teacher.load_teacher(path)
    record = json.loads(json.dumps(teacher.known().__dict__))  # through JSON, as .teachers.json keeps it
    known = KnownTeacher(**record)
    for layers, storage, audio in (([1, 2], "float16", "float32"), ([0], "int8", "none")):
        assert known.spec(layers, storage, audio) == teacher.spec(layers, storage, audio)
    assert (known.hop, known.window) == (teacher.hop, teacher.window)
    assert [known.num_frames(n) for n in range(0, 2000, 37)] == [teacher.num_frames(n) for n in range(0, 2000, 37)]


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The teachers loaded, one entry per load_teacher call."""
    monkeypatch.setattr(store.source_files, "RACY_NS", 0)  # files written by this test a moment ago are not racy
    return count_calls(monkeypatch, extract.teacher, "load_teacher")


def _cfg(teacher, corpus, tmp_path) -> ExtractConfig:
    return ExtractConfig(teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), part_seconds=2, progress=False)


def test_a_rerun_with_nothing_to_do_never_loads_the_teacher_nor_imports_torch(tmp_path, loads):
    teacher = build_tiny_teacher(str(tmp_path / "t"))
    age_files(teacher)  # saved long before it was read: not racily clean for the other process, whose tick is 2 s
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    first = extract_features(_cfg(teacher, corpus, tmp_path))
    assert loads == [teacher] and os.path.exists(tmp_path / "k" / MEMO)
    again = extract_features(_cfg(teacher, corpus, tmp_path))
    assert loads == [teacher] and not again.teacher_work and again.path == first.path and again.utterances == 4
    code = ("import sys\nfrom extract.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    run = subprocess.run([sys.executable, "-c", code, "--teacher", teacher, "--corpus", corpus, "--layers", "1,3", "--cache-dir",
                          str(tmp_path / "k"), "--part-seconds", "2", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for option in ({"device": "tpu"}, {"device": "cuda:x"}, {"dtype": "float8"}):  # bad options: one line, loaded or not
        with pytest.raises(ExtractError, match=f"--{next(iter(option))} "):
            extract_features(dataclasses.replace(_cfg(teacher, corpus, tmp_path), **option))
    write_wav(f"{corpus}/spk9/new.wav", 1.0, seed=9)  # work: the teacher is loaded, checked against the record, used
    grown = extract_features(_cfg(teacher, corpus, tmp_path))
    assert loads == [teacher, teacher] and grown.teacher_work and grown.utterances == 5 and grown.path == first.path
    assert verify_cache(grown.path) == []


def test_a_teacher_file_written_since_is_loaded_again(tmp_path, loads):
    teacher = build_tiny_teacher(str(tmp_path / "t"))
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    extract_features(_cfg(teacher, corpus, tmp_path))
    config = os.path.join(teacher, "config.json")
    data = open(config, "rb").read()
    open(config, "wb").write(data)  # the same bytes, written again: its ctime moved, which nothing can set back
    extract_features(_cfg(teacher, corpus, tmp_path))
    assert len(loads) == 2
    extract_features(_cfg(teacher, corpus, tmp_path))  # remembered again after that load
    assert len(loads) == 2


def test_a_record_written_within_a_tick_of_its_files_is_not_trusted(tmp_path, loads, monkeypatch):
    teacher = build_tiny_teacher(str(tmp_path / "t"))
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    extract_features(_cfg(teacher, corpus, tmp_path))
    monkeypatch.setattr(store.source_files, "RACY_NS", 10**18)  # every file "written in the tick it was read"
    extract_features(_cfg(teacher, corpus, tmp_path))
    assert len(loads) == 2


def test_an_edited_or_garbage_record_is_loud_or_ignored_never_a_wrong_cache(tmp_path, loads):
    teacher = build_tiny_teacher(str(tmp_path / "t"))
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    first = extract_features(_cfg(teacher, corpus, tmp_path))
    memo = tmp_path / "k" / MEMO
    data = json.loads(memo.read_text())
    data["teachers"][0]["teacher"]["identity"]["digest"] = "sha256:" + "0" * 64  # another teacher's, by hand
    memo.write_text(json.dumps(data))
    with pytest.raises(ExtractError, match=f"--teacher {teacher}: it is not what .*{MEMO} recorded of it"):
        extract_features(_cfg(teacher, corpus, tmp_path))
    assert [n for n in os.listdir(tmp_path / "k") if not n.startswith(".")] == [os.path.basename(first.path)]  # none made
    memo.write_text("{not json")
    again = extract_features(_cfg(teacher, corpus, tmp_path))  # loaded, and remembered anew
    assert again.path == first.path and not again.teacher_work and len(loads) == 3
