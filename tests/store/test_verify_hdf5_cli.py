import os

import numpy as np
import pytest
from click.testing import CliRunner

from store import open_cache, verify_cache
from store.cli import main
from store.hdf5 import export_hdf5, import_hdf5


def test_verify_finds_a_flipped_byte(small_cache):
    cache, _ = small_cache
    assert verify_cache(cache.path) == []
    shard = os.path.join(cache.path, "parts", cache.part_dirs["p000000"], "layer_2", "c", "1", "0")
    data = bytearray(open(shard, "rb").read())
    data[40] ^= 0x01
    open(shard, "wb").write(bytes(data))
    problems = verify_cache(cache.path)
    assert len(problems) == 1 and "layer_2/c/1/0: damaged" in problems[0] and "rows 32-40" in problems[0]
    result = CliRunner().invoke(main, ["verify", cache.path])
    assert result.exit_code == 1 and "damaged:" in result.output and "Traceback" not in result.output


def test_verify_finds_index_mismatch(small_cache):
    import json

    cache, _ = small_cache
    marker = os.path.join(cache.path, "commits", "p000001.json")
    m = json.load(open(marker))
    m["frames"] = [m["frames"][0] + 1]
    json.dump(m, open(marker, "w"))
    assert any("p000001.json: its total_frames/total_samples disagree" in p for p in verify_cache(cache.path))
    m["total_frames"] += 1  # consistent with itself, not with the samples the teacher's convs map to those frames
    json.dump(m, open(marker, "w"))
    assert any("p000001.json: its frame counts disagree with its sample counts" in p for p in verify_cache(cache.path))


def test_rows_rewritten_with_valid_checksums_are_found_by_verify_not_by_quick(small_cache):
    """A part's rows shuffled, or two utterances' audio swapped, and written back through zarr: every chunk's crc32c is
    valid, and verify said ok while 17 (2) utterances read other values. The commit marker's digests tell."""
    import zarr

    cache, truth = small_cache
    part = os.path.join(cache.path, "parts", cache.part_dirs["p000000"])
    layer = zarr.open_array(os.path.join(part, "layer_2"), mode="r+")
    rows = layer[...]
    layer[...] = rows[np.random.default_rng(0).permutation(len(rows))]
    problems = verify_cache(cache.path, workers=1)
    assert len(problems) == 1 and "layer_2: its rows are not the ones committed" in problems[0]
    assert verify_cache(cache.path, full=False, workers=1) == []  # the structure check does not read rows
    layer[...] = rows
    assert verify_cache(cache.path, workers=1) == []
    audio = zarr.open_array(os.path.join(part, "audio"), mode="r+")
    wave = audio[...]
    n = cache.num_samples("a/one")
    swapped = wave.copy()
    swapped[:n], swapped[n : 2 * n] = wave[n : 2 * n], wave[:n]
    audio[...] = swapped
    problems = verify_cache(cache.path, workers=1)
    assert any("audio: its rows are not the ones committed" in p for p in problems)
    assert any("the audio of 2 utterance(s) is not what the teacher saw (first: 'a/one')" in p for p in problems)


def test_swapped_flac_files_are_found_by_verify(tmp_path):
    from store import Layout, PartWriter, create_cache
    from tests.conftest import DIM, fake_utterance, make_spec

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path / "root"), make_spec(audio="flac"), {"teacher": "tiny"}, layout)
    w = PartWriter(path, "p000000", [1, 2, 3], DIM, "float16", layout, audio="flac")
    for uid, frames in (("a", 25), ("b", 25)):  # equal lengths: the swap keeps every file's sample count
        feats, audio = fake_utterance(uid, frames)
        w.add(uid, feats, audio * 0.1)
    w.commit()
    assert verify_cache(path, workers=1) == []
    flac = os.path.join(path, "parts", open_cache(path).part_dirs["p000000"], "audio_flac")
    names = sorted(os.listdir(flac))
    a, b = (os.path.join(flac, n) for n in names)
    data_a, data_b = open(a, "rb").read(), open(b, "rb").read()
    open(a, "wb").write(data_b)
    open(b, "wb").write(data_a)
    problems = verify_cache(path, workers=1)
    assert len(problems) == 1 and "its audio files are not the ones committed" in problems[0]


def test_hdf5_round_trip(small_cache, tmp_path):
    cache, truth = small_cache
    out = str(tmp_path / "x.h5")
    assert export_hdf5(cache.path, out) == len(truth)
    back = import_hdf5(out, str(tmp_path / "other-root"))
    assert back.fingerprint == cache.fingerprint and back.utterance_ids == cache.utterance_ids
    for uid in truth:
        for k in cache.layers:
            np.testing.assert_array_equal(back.read(uid, k), cache.read(uid, k))
        np.testing.assert_array_equal(back.read_audio(uid), cache.read_audio(uid))
    assert verify_cache(back.path) == []
    again = import_hdf5(out, str(tmp_path / "other-root"))  # idempotent: nothing new to import
    assert again.parts == back.parts


def test_cli_ls_info_rm(small_cache):
    cache, _ = small_cache
    root = os.path.dirname(cache.path)
    runner = CliRunner()
    out = runner.invoke(main, ["ls", "--cache-dir", root]).output
    assert cache.fingerprint in out and "utterances=4" in out
    info = runner.invoke(main, ["info", cache.fingerprint, "--cache-dir", root])
    assert info.exit_code == 0 and "parts_done         2" in info.output and "parts_pending" in info.output
    missing = runner.invoke(main, ["info", "/no/such/cache"])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "feature-cache ls" in missing.output
    assert runner.invoke(main, ["rm", cache.path, "--yes"]).exit_code == 0
    assert not os.path.exists(cache.path)
    assert open_cache  # noqa: B018 - imported API stays public


def _many_parts(tmp_path, n: int = 24):
    from store import Layout, create_cache
    from tests.conftest import make_spec, write_parts

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path / "root"), make_spec(), layout=layout)
    write_parts(path, {f"p{i:06d}": [(f"u{i}/a", 40), (f"u{i}/b", 9)] for i in range(n)}, layout=layout)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_verify_racing_a_retake_is_no_traceback_and_no_false_damage(tmp_path, workers):
    """An extraction may take a part back (uncommit: marker, then files) after verify listed it; worker processes open the
    cache later and no longer know it (a KeyError traceback), one process finds its files gone (false damage). A part
    retaken and committed again is checked as it is now."""
    from store import Cache
    from store.index import uncommit
    from store.verify import check_parts
    from tests.conftest import write_parts

    path = _many_parts(tmp_path, 6)
    cache = Cache(path)  # verify's listing
    uncommit(path, "p000001", cache.part_dirs["p000001"])
    uncommit(path, "p000003", cache.part_dirs["p000003"])
    write_parts(path, {"p000003": [("u3/a", 40), ("u3/b", 9)]}, layout=cache.layout)  # redone by the extraction
    assert check_parts(cache, full=True, workers=workers) == []
    os.remove(shard_of(path, "p000004"))  # real damage is still found
    assert any("p000004" in line for line in check_parts(Cache(path), full=True, workers=workers))


def shard_of(path: str, part: str) -> str:
    from store import Cache

    d = os.path.join(path, "parts", Cache(path).part_dirs[part], "layer_1", "c")
    return os.path.join(d, "0", "0")


def test_sigterm_ends_verifys_workers_and_frees_its_output(tmp_path):
    """verify --workers 2 killed by SIGTERM left its workers blocked, holding the index and verify's output pipes: the
    caller reading that output hung. Now the workers end with it."""
    import signal
    import subprocess
    import sys
    import time

    path = _many_parts(tmp_path)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "feature-cache"), "verify", path, "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children: list[int] = []
    deadline = time.time() + 60
    while len(children) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            children = [int(x) for x in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        except OSError:
            children = []
    assert len(children) >= 2, "verify never started its workers"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)  # hung here before: the workers held the pipes
    assert proc.returncode == 130 and b"interrupted" in err
    time.sleep(0.5)
    assert not [c for c in children if os.path.exists(f"/proc/{c}") and "Z" not in open(f"/proc/{c}/stat").read().split()[2]]


@pytest.mark.parametrize("plan", ['{"parts": 7, "skipped": "x"}', '{"parts": {"a": 1}, "skipped": [1, {"uid": "u"}]}', "[]", "{bad"])
def test_import_and_convert_read_a_hostile_plan_json_as_extraction_does(small_cache, tmp_path, plan):
    """plan.json is untrusted: extraction checked its parts/skipped lists, HDF5 import and convert traced back on a
    plan whose `parts` or `skipped` is not a list. One check (Cache.plan) for every reader."""
    from store.convert import convert_cache

    cache, truth = small_cache
    out = str(tmp_path / "x.h5")
    export_hdf5(cache.path, out)
    open(os.path.join(cache.path, "plan.json"), "w").write(plan)
    derived = convert_cache(cache.path, "int8", cache_dir=str(tmp_path / "derived"))
    assert derived.utterance_ids == cache.utterance_ids
    target = os.path.join(str(tmp_path / "again"), cache.fingerprint)
    import_hdf5(out, str(tmp_path / "again"))
    open(os.path.join(target, "plan.json"), "w").write(plan)
    os.remove(os.path.join(target, "commits", sorted(os.listdir(os.path.join(target, "commits")))[0]))  # something to import
    assert import_hdf5(out, str(tmp_path / "again")).utterance_ids == cache.utterance_ids
    assert isinstance(open_cache(target).skipped, list)


def _spawned_children() -> list[int]:
    """This process's multiprocessing workers (spawned: `... spawn_main ...` in their command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                spawned = b"spawn_main" in f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and spawned:
            found.append(int(pid))
    return found


def test_a_verify_worker_killed_breaks_nothing_the_rest_is_checked_and_said(tmp_path, capfd):
    """issue 34: `verify --workers 2` died with BrokenProcessPool (a worker terminated abruptly) and checked nothing more.
    A worker killed (the OOM killer's SIGKILL) now costs its own checks only: the rest are checked in this process, said in
    one line, and damage is still found."""
    import signal
    import threading

    from store import Cache
    from store.verify import check_parts

    path = _many_parts(tmp_path, 12)
    os.remove(shard_of(path, "p000007"))
    stop, earlier = threading.Event(), set(_spawned_children())  # another test's pool, still ending, is not this one

    def kill_the_first_worker():
        while not stop.is_set():
            if children := [c for c in _spawned_children() if c not in earlier]:
                os.kill(children[0], signal.SIGKILL)
                return
            stop.wait(0.01)

    killer = threading.Thread(target=kill_the_first_worker)
    killer.start()
    try:
        problems = check_parts(Cache(path), full=True, workers=2)
    finally:
        stop.set()
        killer.join()
    assert len(problems) == 1 and "p000007" in problems[0]
    err = capfd.readouterr().err
    assert "a verify worker process died (exit code -9" in err and "in this process" in err


def test_verify_checks_the_markers_record_of_chunk_sizes(tmp_path):
    """An object store's reader takes each shard's index from the commit marker's `shards` record: verify compares it with
    the shards' own indexes, so a record edited by hand is damage found, not a remote read gone wrong later."""
    import base64
    import json

    path = _many_parts(tmp_path, 2)
    assert verify_cache(path) == []
    name = os.path.join(path, "commits", "p000001.json")
    marker = json.load(open(name))
    sizes = np.frombuffer(base64.b64decode(marker["shards"]["layer_1"]), "<u4").copy()
    assert sizes[:2].all()
    sizes[[0, 1]] = sizes[[1, 0]] + np.array([1, 0], "<u4")
    marker["shards"]["layer_1"] = base64.b64encode(sizes.tobytes()).decode()
    json.dump(marker, open(name, "w"))
    problems = verify_cache(path)
    assert len(problems) == 1 and "layer_1: shard 0's chunk index is not the one its commit marker records" in problems[0]
