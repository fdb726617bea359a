"""An existing dask cluster (a real `dask scheduler` and two `dask worker` processes on loopback):
a worker killed mid-run has its part rerun elsewhere, and the bytes equal a one-worker run."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

from extract import ExtractConfig, extract_features
from store import verify_cache
from tests.conftest import build_corpus
from tests.extract.test_resume_and_input import _tree

BIN = os.path.dirname(sys.executable)


def _start(cmd, env):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def test_scheduler_address_and_a_killed_worker(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=24)
    base = dict(teacher=tiny_teacher, corpus=corpus, layers=(1, 3), part_seconds=1, device="cpu", progress=False)
    reference = extract_features(ExtractConfig(**base, cache_dir=str(tmp_path / "ref"), workers=1))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as LocalCluster's 1-thread workers
    sched_file = str(tmp_path / "scheduler.json")
    procs = [_start([f"{BIN}/dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                     "--scheduler-file", sched_file], env)]
    try:
        deadline = time.time() + 60
        while not os.path.exists(sched_file) and time.time() < deadline:
            time.sleep(0.2)
        address = json.load(open(sched_file))["address"]
        workers = [_start([f"{BIN}/dask", "worker", "--scheduler-file", sched_file, "--nthreads", "1", "--no-nanny",
                           "--host", "127.0.0.1", "--name", f"w{i}"], env) for i in range(2)]
        procs += workers
        commits = tmp_path / "k" / reference.fingerprint / "commits"
        killed = []

        def kill_one_worker_mid_run():
            while time.time() < deadline + 120:
                if commits.exists() and len(list(commits.glob("*.json"))) >= 3:
                    os.killpg(workers[0].pid, signal.SIGKILL)
                    killed.append(len(list(commits.glob("*.json"))))
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_one_worker_mid_run)
        killer.start()
        summary = extract_features(ExtractConfig(**base, cache_dir=str(tmp_path / "k"), scheduler=address))
        killer.join()
        assert killed and killed[0] < summary.parts_total, "the worker must die mid-run for this test to mean anything"
        assert workers[0].wait(10) == -signal.SIGKILL
        assert summary.utterances == 24 and summary.parts_done_now == summary.parts_total
        assert _tree(summary.path) == _tree(reference.path)
        assert verify_cache(summary.path) == []
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
