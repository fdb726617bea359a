"""A re-run recognises known files from their stat, checks structure from stamps and rewrites no unchanged index; each
shortcut must still notice every change it stands in for (issue 22, item 1)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from extract import ExtractConfig, extract_features
from extract.corpus import KnownFiles, scan
from store import Cache
from store.layout import checked_path, index_path, sources_path
from tests.conftest import age_files, build_corpus, write_wav


def _cfg(tiny_teacher, corpus, tmp_path, **kw) -> ExtractConfig:
    return ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), **{"part_seconds": 2, "progress": False, **kw})


def _count_header_reads(monkeypatch) -> list[str]:
    import extract.corpus

    opened: list[str] = []
    real = extract.corpus._info

    def info(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(extract.corpus, "_info", info)  # the scan's header reads (the pipeline decodes new files anyway)
    return opened


def test_a_rerun_opens_no_known_file_and_only_the_new_one(tmp_path, tiny_teacher, monkeypatch):
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    age_files(corpus)
    cache = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    opened = _count_header_reads(monkeypatch)
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert opened == [] and not again.teacher_work
    write_wav(f"{corpus}/spk0/new.wav", 1.0, seed=9)
    age_files(f"{corpus}/spk0/new.wav")
    grown = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert opened == [f"{corpus}/spk0/new.wav"] and grown.utterances == 6
    # the recorded header is what the file's own header says
    records = Cache(cache).sources()
    assert records["spk0/new"]["header"] == [16000, 16000, 1]


def test_a_file_rewritten_with_its_size_and_mtime_put_back_is_read_again(tmp_path, tiny_teacher, capfd):
    """Same size, mtime set back (what `cp -p` or `touch -d` can do), another length: the ctime and inode differ, so
    the header is read from the file, not taken from the record, and the part is re-extracted."""
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    path = f"{corpus}/spk0/utt00.wav"
    st = os.stat(path)
    data, rate = sf.read(path, dtype="int16")
    half = np.resize(data[: len(data) // 2], len(data))  # another waveform of the same length and byte size
    sf.write(path + ".tmp.wav", half, rate // 2, subtype="PCM_16")  # ... and half the sample rate: twice as long
    os.replace(path + ".tmp.wav", path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    capfd.readouterr()
    known = KnownFiles(Cache(extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path).sources())
    plan = [line for line in capfd.readouterr().err.splitlines() if "utterances to extract" in line]
    assert len(plan) == 1 and " 0 of 3" not in plan[0] and " 0 B " not in plan[0], plan  # the retaken part, not the forecast's 0
    _, utts, _ = scan(corpus, 16000, known=known)
    utt = next(u for u in utts if u.uid == "spk0/utt00")
    assert utt.sample_rate == rate // 2 and utt.samples == len(half)
    cache = next(n for n in os.listdir(tmp_path / "k") if not n.startswith("."))  # beside it: the root's .teachers.json
    assert Cache(str(tmp_path / "k" / cache)).source("spk0/utt00")["header"] == [rate // 2, len(half), 1]


def test_a_recorded_header_that_is_garbage_is_not_used(tmp_path):
    corpus = build_corpus(str(tmp_path / "c"), n=1)
    path = f"{corpus}/spk0/utt00.wav"
    st = os.stat(path)
    record = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    for header in ([16000, -1, 1], [0, 10, 1], [16000, 10], "x", [16000.0, 10, 1], [16000, 10, 99999]):
        _, (utt,), _ = scan(corpus, 16000, known=KnownFiles({"u": {**record, "header": header}}))
        assert utt.samples == sf.info(path).frames
    _, (utt,), _ = scan(corpus, 16000, known=KnownFiles({"u": {**record, "header": [16000, 12345, 1]}}))
    assert utt.samples == 12345  # a sane record of an unchanged file is used (that is the point): same stat, same file


def test_structure_stamps_still_notice_a_removed_shard_and_garbage_memos(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    extract_features(_cfg(tiny_teacher, corpus, tmp_path))  # the first check of the parts made by the run before
    checked = json.load(open(checked_path(s.path)))["parts"]
    cache = Cache(s.path)
    assert sorted(checked) == sorted(cache.parts)
    part = cache.parts[0]
    shard_dir = os.path.join(s.path, "parts", cache.part_dirs[part], "layer_1", "c")
    shard = next(os.path.join(d, f) for d, _, fs in os.walk(shard_dir) for f in fs)
    os.remove(shard)
    redo = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert redo.parts_done_now == 1 and redo.utterances == 4
    for garbage in (b"not json", b'{"parts": []}', b'{"parts": {"%s": 7}}' % part.encode()):
        with open(checked_path(s.path), "wb") as f:
            f.write(garbage)
        assert not extract_features(_cfg(tiny_teacher, corpus, tmp_path)).teacher_work
        assert sorted(json.load(open(checked_path(s.path)))["parts"]) == sorted(Cache(s.path).parts)  # checked again, rewritten


def test_an_unchanged_index_is_not_rewritten_and_a_changed_one_is(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    age_files(corpus)  # a racily clean record is refreshed (sources.npz rewritten) once: tests/extract/test_rehash_once.py
    path = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    before = [os.stat(p).st_mtime_ns for p in (index_path(path), sources_path(path))]
    extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert [os.stat(p).st_mtime_ns for p in (index_path(path), sources_path(path))] == before
    os.remove(index_path(path))  # lost: the next run writes it again
    extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert os.path.exists(index_path(path))
    write_wav(f"{corpus}/spk1/more.wav", 1.0, seed=5)
    extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert "spk1/more" in json.dumps(json.load(open(index_path(path))))


def test_refresh_if_changed_sees_a_commit_made_after_the_open(tmp_path, tiny_teacher):
    """The extraction opens the cache before taking its lock; a part another process committed meanwhile is seen."""
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    path = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    early = Cache(path)
    assert not early.refresh_if_changed()
    write_wav(f"{corpus}/spk1/late.wav", 1.0, seed=7)
    extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert "spk1/late" not in early and early.refresh_if_changed() and "spk1/late" in early


def test_a_run_killed_late_leaves_an_index_covering_most_parts(tmp_path, tiny_teacher, monkeypatch):
    """The index is consolidated every CONSOLIDATE_EVERY parts during a run (issue 22 item 3: an S3 open of a cache whose
    run died before its end read every marker, one GET each)."""
    import pytest

    import extract.pipeline
    import extract.run
    import extract.run_progress
    from store.index import read_index

    monkeypatch.setattr(extract.run_progress, "CONSOLIDATE_EVERY", 2)
    real, done = extract.pipeline.extract_part, []

    def dies_at_the_sixth(*a, **k):
        if len(done) == 5:
            raise KeyboardInterrupt  # killed
        real(*a, **k)
        done.append(1)

    monkeypatch.setattr(extract.pipeline, "extract_part", dies_at_the_sixth)
    corpus = build_corpus(str(tmp_path / "c"), n=10)
    with pytest.raises(KeyboardInterrupt):
        extract_features(_cfg(tiny_teacher, corpus, tmp_path, part_seconds=0.5))
    path = os.path.join(tmp_path / "k", next(n for n in os.listdir(tmp_path / "k") if not n.startswith(".")))
    committed = len(os.listdir(os.path.join(path, "commits")))
    assert committed == 5 and len(read_index(path)) >= 2  # consolidated during the run (after part 2, and 4 unless busy)


def _give_records_the_files_stat(cache: str, path: str, taken_ns) -> None:
    """Every record of `path` gets the file's stat now, read at `taken_ns`: what a same-size rewrite within the timestamp
    tick of extraction's read leaves (a test cannot set a ctime back, so the record is moved to the file instead)."""
    st = os.stat(path)
    for name in os.listdir(f"{cache}/commits"):
        marker = json.load(open(f"{cache}/commits/{name}"))
        for r in marker["sources"]:
            if r and r["path"] == path:
                r.update(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, taken_ns=taken_ns(st))
        json.dump(marker, open(f"{cache}/commits/{name}", "w"))
    for f in (index_path(cache), sources_path(cache)):  # speed only: the markers are the truth
        os.remove(f)


@pytest.mark.parametrize("racy", [True, False])
def test_a_racily_clean_rewrite_is_hashed_again(tmp_path, tiny_teacher, racy):
    """git's racy-clean rule: a file whose mtime is not older than the moment extraction read it may have been rewritten
    within that timestamp tick, same size, unseen by its stat; the next run hashes it and re-extracts. A file read well
    after its last write keeps the stat shortcut (the control)."""
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    cache = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    path = f"{corpus}/spk0/utt00.wav"
    data, rate = sf.read(path, dtype="int16")
    sf.write(path, data[::-1].copy(), rate, subtype="PCM_16")  # same size, other samples
    _give_records_the_files_stat(cache, path, (lambda st: st.st_mtime_ns) if racy else (lambda st: st.st_mtime_ns + 3 * 10**9))
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert again.teacher_work == racy
    from store.source_files import file_sha256

    assert (Cache(cache).source("spk0/utt00")["sha256"] == file_sha256(path)[1]) == racy
