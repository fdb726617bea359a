"""A source file is re-hashed at most once (issue 34, item 2): a racily clean record is refreshed after a re-hash finds
the same bytes, as git refreshes its index; a future mtime does not make a file racy for ever; and "racy" is judged by
the file system's clock, not this host's, whose skew would otherwise trust a same-tick rewrite."""

from __future__ import annotations

import json
import os
import time

import pytest

import store.source_files
from extract import ExtractConfig, extract_features
from store import Cache, verify_cache
from store.layout import index_path, sources_path
from store.source_files import racy
from tests.conftest import build_corpus, count_calls

FAST_TICK = 300_000_000  # RACY_NS for these tests: a file is past its tick after 0.3 s, not 2 s


def _cfg(tiny_teacher, corpus, tmp_path) -> ExtractConfig:
    return ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), part_seconds=2, progress=False)


def _read_in_the_tick_they_were_written(cache: str) -> None:
    """Every record's `taken_ns` set to its file's ctime: what extraction records of a file written in the tick it read
    it (a test cannot hold a slow machine to one tick), then a wait until that tick has passed."""
    latest = 0
    for name in os.listdir(f"{cache}/commits"):
        marker = json.load(open(f"{cache}/commits/{name}"))
        for r in marker["sources"]:
            r["taken_ns"] = r["ctime_ns"]
            latest = max(latest, r["ctime_ns"])
        json.dump(marker, open(f"{cache}/commits/{name}", "w"))
    for f in (index_path(cache), sources_path(cache)):  # the markers are the truth
        os.remove(f)
    time.sleep(max(0.0, (latest + FAST_TICK - time.time_ns()) / 1e9) + 0.1)


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files check_source hashes (extraction's retake and verify --sources), one entry per hash asked for."""
    monkeypatch.setattr(store.source_files, "RACY_NS", FAST_TICK)
    return count_calls(monkeypatch, store.source_files, "file_sha256_at")


def test_a_racily_clean_file_is_rehashed_once_then_trusted(tmp_path, tiny_teacher, hashed):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    cache = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    _read_in_the_tick_they_were_written(cache)
    assert all(racy(r) for r in Cache(cache).sources().values())
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert not again.teacher_work and len(hashed) == 3  # each re-hashed once: same bytes
    assert not any(racy(r) for r in Cache(cache).sources().values())  # and its record refreshed
    hashed.clear()
    third = extract_features(_cfg(tiny_teacher, corpus, tmp_path))
    assert not third.teacher_work and hashed == []
    assert verify_cache(cache, sources=True) == [] and hashed == []


def test_a_file_with_its_mtime_in_the_future_is_not_rehashed_for_ever(tmp_path, tiny_teacher, hashed):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    future = time.time_ns() + 3600 * 10**9
    for d, _, files in os.walk(corpus):
        for f in files:
            os.utime(os.path.join(d, f), ns=(future, future))
    time.sleep(FAST_TICK / 1e9 + 0.1)  # their ctime is past its tick; their mtime an hour ahead
    cache = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    assert not any(racy(r) for r in Cache(cache).sources().values())
    for _ in range(2):
        assert not extract_features(_cfg(tiny_teacher, corpus, tmp_path)).teacher_work
    assert hashed == []


def test_verify_sources_keeps_what_it_rehashed(tmp_path, tiny_teacher, hashed):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    cache = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    _read_in_the_tick_they_were_written(cache)
    assert verify_cache(cache, sources=True) == [] and len(hashed) == 2
    hashed.clear()
    assert verify_cache(cache, sources=True) == [] and hashed == []


def test_racy_is_judged_by_the_file_systems_clock_not_this_hosts(tmp_path, tiny_teacher, monkeypatch):
    """This host's clock a minute ahead of the file system's (a file server lagging it): a file written just before it was
    read must stay racy, so that a same-size rewrite within the tick is hashed, not trusted as unchanged. Timed by
    time.time_ns(), its record would say it was read a minute after it was written: "long unchanged"."""
    ahead = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: ahead() + 60 * 10**9)
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    cache = extract_features(_cfg(tiny_teacher, corpus, tmp_path)).path
    records = list(Cache(cache).sources().values())
    assert records and all(0 <= r["taken_ns"] - r["ctime_ns"] < 30 * 10**9 for r in records)  # seconds, by the same clock
    assert os.path.exists(os.path.join(cache, ".clock"))  # the stamp the run wrote beside its records


def test_the_records_of_one_file_are_hashed_once_in_a_pass_and_never_from_an_older_memo(tmp_path):
    """The segments of one recording share its file: a pass over their racy records reads the file once (not once per
    segment), and not zero times either: this process's memo of the hash taken at extraction is as racy as the record."""
    from store.source_files import check_sources, file_sha256_at, source_record
    from tests.conftest import write_wav

    path = str(tmp_path / "talk.wav")
    write_wav(path, 1.0)
    st, digest, _ = file_sha256_at(path)  # extraction's hash, kept in this process's memo
    record = source_record(path, st, digest, taken_ns=st.st_ctime_ns)  # read in the tick it was written: racy
    assert racy(record)
    reads = []

    def clock() -> int:  # called once for the pass, then once per hash that really reads the file
        reads.append(1)
        return time.time_ns()

    changed, fresh = check_sources([("talk@0-8000", record), ("talk@8000-16000", dict(record))], clock, lambda uid: "p0")
    assert changed == {} and sorted(fresh["p0"]) == ["talk@0-8000", "talk@8000-16000"] and len(reads) == 2
