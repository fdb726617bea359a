"""The records a cache owns of each utterance (its --corpus input, its recording, its source) and what commands say of
them: info lists corpora and clipping, HDF5 carries the records, verify names the command that repairs, --audio none
caches export and convert."""

import json
import os
import shlex

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from extract.cli import main as extract_cli
from store import open_cache, verify_cache
from store.cli import main as cache_cli
from store.hdf5 import export_hdf5, import_hdf5
from tests.conftest import build_corpus, write_wav


def _cfg(teacher, corpus, root, **kw):
    return ExtractConfig(teacher, str(corpus), **{"layers": (1, 3), "cache_dir": str(root), "progress": False, **kw})


def test_each_corpus_is_recorded_and_info_lists_them(tmp_path, tiny_teacher):
    """A dev set under the training root, extracted with the same teacher, joins the same cache (same spec): the cache
    knows which corpus each utterance came from, and info says so."""
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    a = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    b = extract_features(_cfg(tiny_teacher, f"{corpus}/spk0", tmp_path / "k"))  # the same files under other ids
    assert a.path == b.path
    cache = open_cache(a.path)
    corpora = cache.corpora()
    assert set(corpora) == {os.path.realpath(corpus), os.path.realpath(f"{corpus}/spk0")}
    assert corpora[os.path.realpath(corpus)]["utterances"] == 4 and corpora[os.path.realpath(f"{corpus}/spk0")]["utterances"] == 2
    assert cache.corpus_of("spk0/utt00") == os.path.realpath(corpus) and cache.corpus_of("utt00") == os.path.realpath(f"{corpus}/spk0")
    out = CliRunner().invoke(cache_cli, ["info", a.path]).output
    assert f"corpus             {os.path.realpath(corpus)}: 4 utterances" in out
    assert json.loads(CliRunner().invoke(cache_cli, ["info", a.path, "--json"]).output)["corpora"] == corpora


def test_hdf5_carries_recordings_corpora_and_sources(tmp_path, tiny_teacher):
    """After export/import a segmented cache keeps each window's recording (the held-out split groups by it), its corpus
    and its source record; it used to fall back to window ids."""
    write_wav(str(tmp_path / "long/talk.wav"), 7.0)
    write_wav(str(tmp_path / "long/other.wav"), 5.0, seed=2)
    s = extract_features(_cfg(tiny_teacher, tmp_path / "long", tmp_path / "k", segment_seconds=2.0))
    cache = open_cache(s.path)
    assert cache.has_recordings
    export_hdf5(s.path, str(tmp_path / "x.h5"))
    back = import_hdf5(str(tmp_path / "x.h5"), str(tmp_path / "imported"))
    assert back.fingerprint == cache.fingerprint and back.has_recordings
    assert {u: back.recording(u) for u in back.utterance_ids} == {u: cache.recording(u) for u in cache.utterance_ids}
    assert back.corpora() == cache.corpora()
    assert all(back.segment(u) == cache.segment(u) for u in cache.utterance_ids)


def test_clipped_audio_is_said_by_the_run_and_by_info(tmp_path, tiny_teacher):
    os.makedirs(tmp_path / "c")
    sf.write(str(tmp_path / "c/loud.wav"), np.full(16000, 1.5, np.float32) * np.sign(np.sin(np.arange(16000))), 16000, subtype="FLOAT")
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", str(tmp_path / "c"), "--cache-dir", str(tmp_path / "k"),
                                         "--layers", "1", "--audio", "int16", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "audio samples are beyond int16 full scale and stored clipped (--audio int16)" in r.stderr
    path = r.stdout.strip().splitlines()[-1]
    assert open_cache(path).audio_clipped > 15000
    assert "audio clipped" in CliRunner().invoke(cache_cli, ["info", path]).output


def test_verify_names_the_command_that_repairs_checksum_damage(tmp_path, tiny_teacher):
    """The advice used to be "re-run with the same arguments", which then said "cache complete": a flipped byte passes the
    structural check every run makes. The command verify prints repairs it."""
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    cache = open_cache(s.path)
    shard = os.path.join(cache.path, "parts", cache.part_dirs[cache.parts[0]], "layer_3", "c", "0", "0")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 3] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    r = CliRunner().invoke(cache_cli, ["verify", s.path])
    assert r.exit_code == 1 and "repair with: extract-features --teacher" in r.stderr, r.output
    command = r.stderr.split("repair with: ")[1].strip()
    args = shlex.split(command)
    assert args[0] == "extract-features" and args[-1] == "--repair"
    fixed = CliRunner().invoke(extract_cli, args[1:] + ["--quiet"])
    assert fixed.exit_code == 0 and "extracted 1 part(s)" in fixed.stderr, fixed.output
    assert verify_cache(s.path) == []


def test_an_audio_none_cache_exports_imports_and_converts(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", audio="none"))
    cache = open_cache(s.path)
    r = CliRunner().invoke(cache_cli, ["export", s.path, str(tmp_path / "n.h5")])
    assert r.exit_code == 0, r.output
    back = import_hdf5(str(tmp_path / "n.h5"), str(tmp_path / "imported"))
    uid = cache.utterance_ids[0]
    assert back.fingerprint == cache.fingerprint and back.num_samples(uid) == cache.num_samples(uid)
    assert np.array_equal(back.read(uid, 3), cache.read(uid, 3)) and back.source(uid) == cache.source(uid)
    r = CliRunner().invoke(cache_cli, ["convert", s.path, "--storage", "int8", "--json"])
    assert r.exit_code == 0, r.output
    derived = open_cache(json.loads(r.stdout.strip().splitlines()[-1])["path"])
    assert derived.audio_mode == "none" and len(derived) == 3 and derived.source(uid) == cache.source(uid)
    r = CliRunner().invoke(cache_cli, ["convert", s.path, "--storage", "int8", "--audio", "float32"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "re-extract with --audio float32" in r.stderr


def test_an_import_refuses_source_records_it_could_not_check_files_by(tmp_path, tiny_teacher):
    import h5py

    from store.hdf5 import ImportError_

    s = extract_features(_cfg(tiny_teacher, build_corpus(str(tmp_path / "c"), n=2), tmp_path / "k"))
    export_hdf5(s.path, str(tmp_path / "x.h5"))
    with h5py.File(tmp_path / "x.h5", "r+") as f:
        records = json.loads(bytes(f["records"][()]).decode())
        next(iter(records.values()))["source"] = {"path": 7}
        del f["records"]
        f["records"] = np.frombuffer(json.dumps(records).encode(), np.uint8)
    import pytest

    with pytest.raises(ImportError_, match="a source record lacks path, size, mtime_ns or sha256"):
        import_hdf5(str(tmp_path / "x.h5"), str(tmp_path / "imported"))
    assert not os.path.exists(tmp_path / "imported") or not os.listdir(tmp_path / "imported")
