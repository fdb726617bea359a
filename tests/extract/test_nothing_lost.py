"""Issue 10: nothing lost or mixed up, whoever writes a part and whatever happened to the cache since."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from extract import ExtractConfig, ExtractError, extract_features
from store import PartWriter, open_cache, verify_cache
from store.cli import main as cache_cli
from store.hdf5 import export_hdf5, import_hdf5
from tests.conftest import build_corpus, fake_utterance, write_wav


def _cfg(teacher, corpus, cache_dir, **kw):
    return ExtractConfig(teacher, corpus, **{"layers": (1, 3), "cache_dir": str(cache_dir), "part_seconds": 2, "progress": False, **kw})


def _complete(path, n):
    cache = open_cache(path)
    assert len(cache) == n and not cache.duplicates and not cache.damaged
    assert verify_cache(path) == []
    return cache


def test_import_then_extract_keeps_every_utterance_once(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    half = str(tmp_path / "half")
    os.makedirs(f"{half}/spk0")
    for f in sorted(os.listdir(f"{corpus}/spk0"))[:2]:
        shutil.copy(f"{corpus}/spk0/{f}", f"{half}/spk0/{f}")
    a = extract_features(_cfg(tiny_teacher, half, tmp_path / "a"))
    export_hdf5(a.path, str(tmp_path / "a.h5"))
    imported = import_hdf5(str(tmp_path / "a.h5"), str(tmp_path / "d"))
    assert len(imported) == 2
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "d"))
    assert s.path == imported.path
    _complete(s.path, 6)


def test_a_retried_attempt_never_touches_the_committed_one(tmp_path):
    from store import Layout, create_cache
    from tests.conftest import make_spec

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path), make_spec(), layout=layout)
    first = PartWriter(path, "pX", [1, 2, 3], 16, "float16", layout)
    second = PartWriter(path, "pX", [1, 2, 3], 16, "float16", layout)  # a dask retry while the first still runs
    for w in (first, second):
        w.add("u", *fake_utterance("u", 50))
    first.commit()
    second.abort()  # the retry's cleanup
    third = PartWriter(path, "pX", [1, 2, 3], 16, "float16", layout)
    third.add("u", *fake_utterance("u", 50))
    assert third.commit()["dir"] == first.dir  # lost the race: the published attempt stays, its own files go
    assert sorted(os.listdir(f"{path}/parts")) == sorted(["zarr.json", first.dir])
    assert not os.path.exists(f"{path}/parts/{third.dir}") and not os.path.exists(f"{path}/parts/{second.dir}")
    np.testing.assert_array_equal(open_cache(path).read("u", 1), fake_utterance("u", 50)[0][1].astype(np.float16))


@pytest.mark.parametrize("damage", ["layer shard", "audio shard", "data_type", "garbage marker"])
def test_damage_is_found_by_verify_and_re_extracted(tmp_path, tiny_teacher, damage, capfd):
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    cache = open_cache(s.path)
    part = cache.parts[0]
    pdir = f"{s.path}/parts/{cache.part_dirs[part]}"
    if damage == "layer shard":
        os.remove(f"{pdir}/layer_3/c/0/0")
    elif damage == "audio shard":
        os.remove(f"{pdir}/audio/c/0")
    elif damage == "data_type":
        meta = json.load(open(f"{pdir}/layer_1/zarr.json"))
        meta["data_type"] = "uint16"
        json.dump(meta, open(f"{pdir}/layer_1/zarr.json", "w"))
    else:
        open(f"{s.path}/commits/{part}.json", "w").write("\x00garbage")
    problems = verify_cache(s.path)
    assert problems and all("Traceback" not in p for p in problems)
    r = CliRunner().invoke(cache_cli, ["verify", s.path])
    assert r.exit_code == 1 and "damaged:" in r.output
    capfd.readouterr()
    # missing files and metadata are checked on every run; a marker the consolidated index covers, with --repair
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", repair=damage == "garbage marker"))
    assert again.teacher_work and "re-extracting" in capfd.readouterr().err
    _complete(again.path, 4)


@pytest.mark.parametrize("plan", ["removed", "truncated"])
def test_a_lost_plan_costs_nothing(tmp_path, tiny_teacher, plan):
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    if plan == "removed":
        os.remove(f"{s.path}/plan.json")
    else:
        open(f"{s.path}/plan.json", "w").write('{"parts": [{"na')
    os.remove(sorted(f"{corpus}/spk0/{f}" for f in os.listdir(f"{corpus}/spk0"))[0])
    write_wav(f"{corpus}/spk2/new1.wav", 0.8, seed=21)
    write_wav(f"{corpus}/spk2/new2.wav", 1.1, seed=22)
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    _complete(again.path, 6)  # the 4 kept (a removed file's targets stay) + 2 new, none twice


def test_a_file_rewritten_in_place_is_noticed_and_re_extracted(tmp_path, tiny_teacher, capfd):
    corpus = build_corpus(str(tmp_path / "c"), n=4)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    victim = sorted(f"{corpus}/spk1/{f}" for f in os.listdir(f"{corpus}/spk1"))[0]
    uid = os.path.relpath(victim, corpus)[:-4]
    old = open_cache(s.path).read_audio(uid)
    write_wav(victim, 1.3, seed=77)
    r = CliRunner().invoke(cache_cli, ["verify", s.path, "--sources"])
    assert r.exit_code == 1 and "changed since it was extracted" in r.output
    capfd.readouterr()
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert "changed source files, re-extracting" in capfd.readouterr().err
    cache = _complete(again.path, 4)
    new = cache.read_audio(uid)
    assert len(new) != len(old) and np.array_equal(new, sf.read(victim, dtype="float32")[0])
    assert CliRunner().invoke(cache_cli, ["verify", s.path, "--sources"]).exit_code == 0


def test_a_skipped_file_fixed_later_is_picked_up(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    bad = f"{corpus}/spk0/nan.wav"
    sf.write(bad, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", on_error="skip"))
    assert s.utterances == 3 and any("NaN" in x["reason"] for x in s.skipped)
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", on_error="skip"))
    assert not again.teacher_work  # unchanged bad file: not retried every run
    write_wav(bad, 1.0, seed=5)
    fixed = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", on_error="skip"))
    assert fixed.utterances == 4 and not fixed.skipped


def test_symlink_loops_and_fifos_are_walked_safely(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    os.symlink("..", f"{corpus}/spk0/up")
    os.symlink("../spk0", f"{corpus}/spk1/loop")
    os.mkfifo(f"{corpus}/spk1/x.wav")
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert s.utterances == 2 and sorted(open_cache(s.path).utterance_ids) == ["spk0/utt00", "spk1/utt01"]


@pytest.mark.parametrize("line,says", [
    ("../outside.wav\t16000", "outside the root"),
    ("/etc/passwd\t5", "outside the root"),
    ("spk0/utt00.wav\t16000\textra", "line 2"),
    ("spk0/utt00.wav\tlots", "line 2"),
])
def test_tsv_manifests_are_validated_line_by_line(tmp_path, tiny_teacher, line, says):
    corpus = build_corpus(str(tmp_path / "c"), n=2)
    tsv = tmp_path / "m.tsv"
    tsv.write_text(f"{corpus}\n{line}\n")
    with pytest.raises(ExtractError, match=says):
        extract_features(_cfg(tiny_teacher, str(tsv), tmp_path / "k"))
    tsv.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ExtractError, match="not a text TSV"):
        extract_features(_cfg(tiny_teacher, str(tsv), tmp_path / "k"))


def test_rm_deletes_caches_only(small_cache, tmp_path):
    cache, _ = small_cache
    runner = CliRunner()
    link = tmp_path / "link"
    os.symlink(cache.path, link)
    r = runner.invoke(cache_cli, ["rm", str(link), "--yes"])
    assert r.exit_code == 2 and "symbolic link" in r.output and os.path.exists(cache.path)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    shutil.copy(f"{cache.path}/zarr.json", stranger / "zarr.json")
    (stranger / "thesis.tex").write_text("precious")
    r = runner.invoke(cache_cli, ["rm", str(stranger), "--yes"])
    assert r.exit_code == 2 and "refusing" in r.output and (stranger / "thesis.tex").exists()
    os.remove(f"{cache.path}/zarr.json")  # an interrupted rm
    r = runner.invoke(cache_cli, ["rm", cache.path, "--yes"])
    assert r.exit_code == 0 and not os.path.exists(cache.path)


def test_hdf5_import_validates_and_export_handles_prefix_ids(tmp_path):
    import h5py

    from store import Layout, create_cache
    from tests.conftest import make_spec, write_parts

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path / "r"), make_spec(), layout=layout)
    write_parts(path, {"p0": [("a", 5), ("a/b", 7)]}, layout=layout)
    out = str(tmp_path / "x.h5")
    assert export_hdf5(path, out) == 2
    back = import_hdf5(out, str(tmp_path / "back"))
    assert sorted(back.utterance_ids) == ["a", "a/b"]
    def shorter_audio(f):
        del f["audio/a"]
        f.create_dataset("audio/a", data=np.zeros(500, np.float32))

    for edit, says in [(shorter_audio, "shape"),
                       (lambda f: f["layer_1/a"].__setitem__((0, 0), np.nan), "NaN"),
                       (lambda f: f.__delitem__("layer_2"), "no group 'layer_2'"),
                       (lambda f: f.attrs.__setitem__("distilcache", "{not json"), "not a valid export header")]:
        bad = str(tmp_path / "bad.h5")
        shutil.copy(out, bad)
        with h5py.File(bad, "a") as f:
            edit(f)
        r = CliRunner().invoke(cache_cli, ["import", bad, "--cache-dir", str(tmp_path / "fresh")])
        assert r.exit_code == 2 and says in r.output and r.output.count("\n") == 1, r.output
        assert not os.path.exists(tmp_path / "fresh") or not any(
            os.listdir(tmp_path / "fresh" / d / "commits") for d in os.listdir(tmp_path / "fresh"))


def test_one_skipped_window_never_drops_the_rest_of_its_recording(tmp_path, tiny_teacher):
    """Skips are remembered per utterance: after a crash, the other windows of a recording with one bad window are
    still extracted (keyed by path, every uncommitted window of that file was left out and the cache said complete)."""
    from store.index import uncommit

    rec = tmp_path / "audio" / "rec.wav"
    rec.parent.mkdir()
    wave = (0.1 * np.sin(np.arange(48000) / 7)).astype(np.float32)
    wave[16000:32000] = np.nan  # the middle second is bad
    sf.write(str(rec), wave, 16000, subtype="FLOAT")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"rec {rec}\n")
    (kaldi / "segments").write_text("w1 rec 0.0 1.0\nw2 rec 1.0 2.0\nw3 rec 2.0 3.0\n")
    cfg = _cfg(tiny_teacher, str(kaldi), tmp_path / "k", on_error="skip", part_seconds=0.5)
    s = extract_features(cfg)
    assert sorted(open_cache(s.path).utterance_ids) == ["w1", "w3"] and [x["uid"] for x in s.skipped] == ["w2"]
    cache = open_cache(s.path)
    part = cache.part_of("w3")
    uncommit(cache.path, part, cache.part_dirs[part])  # the part of w3 was in flight when the machine died
    again = extract_features(cfg)
    assert again.teacher_work and sorted(open_cache(s.path).utterance_ids) == ["w1", "w3"]
    assert not extract_features(cfg).teacher_work  # the bad window itself is not retried while its file is unchanged


def test_verify_in_worker_processes_finds_what_one_process_finds(tmp_path, tiny_teacher):
    """verify checks parts in one process per core (issue 22 item 5): the same problems, in the parts' order."""
    corpus = build_corpus(str(tmp_path / "c"), n=10)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", part_seconds=1))
    cache = open_cache(s.path)
    assert len(cache.parts) >= 4
    for part in (cache.parts[1], cache.parts[-1]):
        shard = f"{s.path}/parts/{cache.part_dirs[part]}/layer_3/c/0/0"
        data = bytearray(open(shard, "rb").read())
        data[len(data) // 3] ^= 0xFF  # one flipped byte inside a chunk: only its crc32c tells
        open(shard, "wb").write(bytes(data))
    one = verify_cache(s.path, workers=1)
    seen = []
    many = verify_cache(s.path, workers=2, progress=seen.append)
    assert len(one) == 2 and many == one and sorted(seen) == sorted(cache.parts)
    assert cache.part_dirs[cache.parts[1]] in one[0] and cache.part_dirs[cache.parts[-1]] in one[1]
