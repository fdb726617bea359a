import multiprocessing as mp
import os

import numpy as np
import pytest

from store import Layout, PartWriter, WriteError, create_cache, open_cache
from tests.conftest import DIM, fake_utterance, make_spec, write_parts

LAYOUT = Layout(chunk_frames=8, shard_frames=32)


def _write(path, part, utts):
    write_parts(path, {part: utts}, layout=LAYOUT)


def test_parallel_writers_in_processes_do_not_tear(tmp_path):
    path = create_cache(str(tmp_path), make_spec(), layout=LAYOUT)
    jobs = {f"p{i:06d}": [(f"s{i}/u{j}", 5 + 13 * j + i) for j in range(6)] for i in range(4)}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write, args=(path, p, u)) for p, u in jobs.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = open_cache(path)
    assert len(cache) == 24 and cache.parts == sorted(jobs)
    for utts in jobs.values():
        for uid, n in utts:
            np.testing.assert_array_equal(cache.read(uid, 1), fake_utterance(uid, n)[0][1].astype(np.float16))


def _die_mid_part(path):
    w = PartWriter(path, "p000001", [1, 2, 3], DIM, "float16", LAYOUT)
    for j in range(5):
        w.add(f"dead/{j}", *fake_utterance(f"dead/{j}", 40))
    os._exit(9)  # like kill -9: no cleanup, no commit


def test_killed_writer_leaves_no_visible_part_and_rerun_completes(tmp_path):
    path = create_cache(str(tmp_path), make_spec(), layout=LAYOUT)
    write_parts(path, {"p000000": [("alive", 10)]}, layout=LAYOUT)
    p = mp.get_context("fork").Process(target=_die_mid_part, args=(path,))
    p.start()
    p.join(60)
    assert any(d.startswith("p000001.") for d in os.listdir(os.path.join(path, "parts")))  # it did write data
    cache = open_cache(path)
    assert cache.utterance_ids == ["alive"]
    write_parts(path, {"p000001": [(f"dead/{j}", 40) for j in range(5)]}, layout=LAYOUT)
    cache.refresh()
    assert len(cache) == 6
    np.testing.assert_array_equal(cache.read("dead/4", 3), fake_utterance("dead/4", 40)[0][3].astype(np.float16))


def _write_with_small_disk(path, q):
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))  # every file past 30 kB fails: a full disk
    try:
        write_parts(path, {"p000001": [("big", 2000)]}, layout=Layout(chunk_frames=8, shard_frames=1024, codec="none"))
        q.put("no error")
    except WriteError as e:
        q.put(str(e))


def test_failed_write_leaves_cache_as_before(tmp_path):
    path = create_cache(str(tmp_path), make_spec(), layout=LAYOUT)
    write_parts(path, {"p000000": [("kept", 10)]}, layout=LAYOUT)
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_write_with_small_disk, args=(path, q))
    p.start()
    p.join(60)
    msg = q.get(timeout=5)
    assert "p000001" in msg and "re-run" in msg
    assert not any(d.startswith("p000001") for d in os.listdir(os.path.join(path, "parts")))
    assert open_cache(path).utterance_ids == ["kept"]


def test_writer_refuses_mismatched_layers(tmp_path):
    path = create_cache(str(tmp_path), make_spec(), layout=LAYOUT)
    w = PartWriter(path, "p000000", [1, 2, 3], DIM, "float16", LAYOUT)
    feats, audio = fake_utterance("x", 3, layers=(1, 2))
    with pytest.raises(ValueError, match="expected layers"):
        w.add("x", feats, audio)


def test_same_spec_same_cache(tmp_path):
    a = create_cache(str(tmp_path), make_spec())
    b = create_cache(str(tmp_path), make_spec(layers=[3, 1, 2]))
    assert a == b
    assert create_cache(str(tmp_path), make_spec(storage_dtype="float32")) != a


def test_orphan_cleanup_never_removes_a_live_attempt(tmp_path):
    """A dask task can outlive the coordinator that started it: its attempt directory is leased (flock) while its writer
    lives, and cleanup takes only attempts whose writer is gone (a kill -9 releases the lease)."""
    import subprocess
    import sys

    from extract.plan import orphan_attempts
    from extract.run import remove_orphans
    from tests.conftest import make_spec

    path = create_cache(str(tmp_path / "root"), make_spec(), {}, Layout(chunk_frames=8, shard_frames=32))
    live = PartWriter(path, "p_live", [1, 2, 3], 16, "float16", Layout(chunk_frames=8, shard_frames=32))
    code = ("import sys, time; from store import PartWriter, Layout; "
            "w = PartWriter(sys.argv[1], 'p_dead', [1, 2, 3], 16, 'float16', Layout(chunk_frames=8, shard_frames=32)); "
            "print(w.dir, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
    dead = child.stdout.readline().strip()
    assert sorted(orphan_attempts(open_cache(path))) == []  # both writers alive
    child.kill()
    child.wait()
    remove_orphans(open_cache(path))
    left = os.listdir(os.path.join(path, "parts"))
    assert live.dir in left and dead not in left
    feats, audio = fake_utterance("u", 5)
    live.add("u", feats, audio)
    live.commit()
    assert open_cache(path).read("u", 1).shape == (5, 16) and not os.path.exists(os.path.join(path, "parts", live.dir, ".lock"))


_SLOW_CONSOLIDATION = """
import os, sys, time
from store import fs
from store.oneline import cli_errors

def stuck(*args):  # the temp file is written; the rename never comes (a consolidation of a big index, killed here)
    print("written", flush=True)
    time.sleep(60)

os.replace = stuck

@cli_errors(kept="test")
def main():
    fs.write_json_atomic(sys.argv[1], {"parts": {}})

main()
"""


def test_sigterm_during_an_index_write_leaves_no_temp_file(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONSOLIDATION, str(tmp_path / "index.json")], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), text=True)
    assert proc.stdout.readline().strip() == "written"
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130
    assert os.listdir(tmp_path) == []


def test_the_next_writer_removes_temp_files_of_dead_processes_only(tmp_path, tiny_teacher):
    """kill -9 runs no handler: the next extraction (under the cache's lock) removes our temp names of processes that are
    gone, and keeps a live process's and any name that is not ours."""
    import subprocess

    from extract import ExtractConfig, extract_features
    from tests.conftest import build_corpus

    cfg = ExtractConfig(tiny_teacher, build_corpus(str(tmp_path / "c"), n=2), layers=(1,), cache_dir=str(tmp_path / "k"), progress=False)
    path = extract_features(cfg).path
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        names = [f"index.json.tmp-{dead.pid}-0123abcd", f"sources.json.tmp-{dead.pid}-89abcdef",
                 f"index.json.tmp-{alive.pid}-0123abcd", "index.json.tmp-notes", "mine.txt"]
        for n in names:
            open(os.path.join(path, n), "w").write("x" * 100)
        extract_features(cfg)
        left = set(os.listdir(path))
        assert not left & set(names[:2]) and set(names[2:]) <= left
    finally:
        alive.kill()
