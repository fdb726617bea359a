"""Source records as columns (issue 34, item 1): every record comes back exactly as its marker held it, whatever it holds;
a damaged or hand-edited sources.npz is never believed (the markers are the truth); the vectorised stat comparison is
store.source_files.same_stat's, row for row."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from store import Cache
from store.index import consolidate, read_sources, write_sources
from store.layout import sources_path
from store.source_files import racy, same_stat
from store.source_table import NONE, SourceTable, concat, table_from_bytes
from tests.conftest import build_corpus

RECORDS = [
    {"path": "/c/a.flac", "size": 616, "mtime_ns": 1796676548960463557, "ctime_ns": 1796676548960463558, "ino": 3335182,
     "sha256": "af" * 32, "header": [16000, 195918, 1], "taken_ns": 1796676549000000000},
    None,  # an import's utterance: no record
    {"path": "/c/talk é.wav", "size": 1, "mtime_ns": 5, "ctime_ns": 6, "ino": 7, "sha256": "0" * 64, "start": 480000,
     "stop": None, "sample_rate": 8000, "channel": 1, "recording": "talks/day1"},  # a window, a non-ASCII path
    {"path": "/c/old.wav", "size": 3, "mtime_ns": 9, "sha256": "AB" * 32},  # an older record: no ctime, ino; upper-case hex
    {"path": "/c/odd.wav", "size": True, "mtime_ns": 2**70, "sha256": None, "header": [1, 2], "taken_ns": "x", "new_key": [1]},
    {"path": "", "size": 0, "mtime_ns": 0, "ctime_ns": 0, "ino": 0, "sha256": "f" * 64},
]


def _entries() -> dict:
    return {"pA": {"dir": "pA.0123456789ab", "ids": ["a", "b", "c"], "sources": RECORDS[:3], "skipped": [{"file": "x", "why": "y"}]},
            "pB": {"dir": "pB.0123456789ab", "ids": ["d", "e", "f", "g"], "sources": RECORDS[3:], "skipped": []}}


def test_every_record_comes_back_exactly_as_the_marker_held_it():
    table = table_from_bytes(SourceTable.from_entries(_entries()).to_bytes())
    for i, entry in enumerate(_entries().values()):
        back = table.entry(i)
        assert back["dir"] == entry["dir"] and back["ids"] == entry["ids"] and back["skipped"] == entry["skipped"]
        assert back["sources"] == entry["sources"] + [None] * (len(entry["ids"]) - len(entry["sources"]))  # a short list: None
    assert dict(table) == {u: r for e in _entries().values() for u, r in zip(e["ids"], e["sources"], strict=False) if r is not None}
    assert "b" not in table and "g" not in table and table.parts == ["pA", "pB"]
    picked = concat([table.select([1]), table.select([0])])
    assert picked.parts == ["pB", "pA"] and picked.entry(1) == table.entry(0) and picked.entry(0) == table.entry(1)
    assert table_from_bytes(SourceTable.from_entries({}).to_bytes()).rows() == 0


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "wrong shape"])
def test_a_damaged_table_is_refused_never_misread(damage):
    data = bytearray(SourceTable.from_entries(_entries()).to_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":  # one bit inside a compressed column: zip's CRC-32 refuses it
        data[len(data) // 3] ^= 0x10
    elif damage == "garbage":
        data = bytearray(b"PK\x03\x04" + os.urandom(200))
    else:
        table = SourceTable.from_entries(_entries())
        table.cols["stat"] = table.cols["stat"][:-1]
        data = bytearray(table.to_bytes())
    assert table_from_bytes(bytes(data)) is None


def test_the_vectorised_stat_comparison_is_same_stat_row_for_row(tmp_path):
    files = []
    for i in range(6):
        p = tmp_path / f"f{i}.wav"
        p.write_bytes(b"x" * (i + 1))
        files.append(str(p))
    sts = [os.stat(f) for f in files]

    def record(st, f, **over):
        return {"path": f, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
                "sha256": "0" * 64, "taken_ns": st.st_mtime_ns + 10**10, **over}
    records = [record(sts[0], files[0]), record(sts[1], files[1], size=99), record(sts[2], files[2], taken_ns=sts[2].st_mtime_ns),
               record(sts[3], files[3], ino=1), {k: v for k, v in record(sts[4], files[4]).items() if k != "ctime_ns"},
               record(sts[5], files[5], taken_ns=None)]
    table = SourceTable.from_entries({"p": {"dir": "p.0123456789ab", "ids": list("uvwxyz"), "sources": records}})
    observed = np.array([(s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in sts], np.int64)
    expected = [same_stat(s, r) for s, r in zip(sts, records, strict=True)]
    assert table.unchanged_rows(observed).tolist() == expected == [True, False, False, False, False, True]
    assert table.racy().tolist() == [racy(r) for r in records]
    observed[0] = NONE  # a file not looked at (gone, or not in the corpus) is never unchanged
    assert not table.unchanged_rows(observed)[0]


def test_a_cache_whose_sources_npz_is_damaged_or_edited_reads_its_markers(tmp_path, tiny_teacher):
    from extract import ExtractConfig, extract_features

    corpus = build_corpus(str(tmp_path / "c"), n=4)
    path = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), part_seconds=2,
                                          progress=False)).path
    truth = dict(Cache(path).sources())
    assert len(truth) == 4 and all(r["path"].startswith(corpus) for r in truth.values())
    table = read_sources(path)
    assert dict(table) == truth
    table.cols["path"] = np.array([b"/elsewhere/x.wav"] * table.rows())
    table.cols["dir"] = np.array([b"p0000000000000000.0123456789ab"] * len(table.parts))  # records of another attempt
    write_sources(path, table)
    assert dict(Cache(path).sources()) == truth  # taken from the markers
    edited = read_sources(path)
    edited.cols["uid"] = edited.cols["uid"][::-1].copy()  # ids that are not the markers': every record from the markers
    write_sources(path, edited)
    assert dict(Cache(path).sources()) == truth
    with open(sources_path(path), "r+b") as f:
        f.truncate(100)
    cache = Cache(path)
    assert dict(cache.sources()) == truth and not cache.consolidated  # the next extraction rewrites it
    consolidate(path)
    assert dict(read_sources(path)) == truth and json.loads(json.dumps(truth)) == truth


def test_files_seen_unchanged_are_known_in_a_table_read_again(tmp_path):
    """The scan sees files unchanged in one table; a cache refreshed before retake (a part committed meanwhile) has
    another: what was seen is carried over by uid and recorded stat, never by row."""
    from extract.corpus import KnownFiles

    files = [tmp_path / f"f{i}.wav" for i in range(4)]
    for i, f in enumerate(files):
        f.write_bytes(b"x" * (i + 1))
    records = []
    for f in files:
        st = os.stat(f)
        records.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                        "ino": st.st_ino, "sha256": "0" * 64, "header": [16000, st.st_size, 1], "taken_ns": st.st_ctime_ns + 10**10})
    records[2]["size"] = 99  # changed since
    table = SourceTable.from_entries({"p": {"dir": "p.0123456789ab", "ids": list("abcd"), "sources": records}})
    known = KnownFiles(table)
    assert set(known.headers([str(f) for f in files])) == {str(files[i]) for i in (0, 1, 3)}
    assert known.seen(table).tolist() == [True, True, False, True]
    again = concat([table.select([0]), SourceTable.from_entries({"q": {"dir": "q.0123456789ab", "ids": ["e"], "sources": [records[0]]}})])
    assert known.seen(again).tolist() == [True, True, False, True, False]  # 'e' was never seen, though its file was
