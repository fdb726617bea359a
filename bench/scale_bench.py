"""LibriSpeech-scale index, tiny payload: what every command that reads no payload costs at full size.

    python -m bench.scale_bench                 # 281,241 utterances in 5,740 parts, locally
    python -m bench.scale_bench --scale 0.05 --s3   # also on a moto S3 server on loopback (a 5% cache)

Builds the real index shape (ids, parts of 49 utterances, commit markers with source records) with a
5-frame, 4-dim payload per utterance: one template part written by PartWriter, copied per part, each
with its own marker. Each command runs in a fresh process; we report its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import table

UTTERANCES, PER_PART = 281_241, 49  # LibriSpeech 960 h; ~600 s of audio per part

SNIPPETS = {
    "open": "from store import open_cache; c = open_cache(P); print(len(c))",
    "ls": "from store import list_caches; print(len(list_caches(os.path.dirname(P))))",
    "info": "from store import open_cache, describe; d = describe(open_cache(P)); print(d['utterances'])",
    "verify (structure)": "from store.verify import damaged_parts; from store import open_cache; print(len(damaged_parts(open_cache(P))))",
    "verify (every crc32c)": "from store import verify_cache; print(len(verify_cache(P)))",
    "split_ids (by recording)": ("from store import open_cache; from train.data import split_ids; c = open_cache(P);"
                                 "print(len(split_ids(c.utterance_ids, 0.01, c.recording)[1]))"),
    "resume skip (100k steps)": ("from store import open_cache; from train.data import BucketBatches; c = open_cache(P);"
                                 "b = BucketBatches([min(c.num_samples(u), 250000) for u in c.utterance_ids], 24, 0);"
                                 "next(b.from_step(100000))"),
}


def build(root: str, utterances: int) -> str:
    from store import Layout, PartWriter, create_cache
    from store.index import consolidate
    from store.layout import commit_path, part_name
    from store.writer import audio_digest

    spec = {"format_version": 2, "teacher": {"digest": "sha256:scale", "config": {"hidden_size": 4}}, "layers": [4, 8, 12], "dim": 4,
            "compute_dtype": "float32", "storage_dtype": "float16",
            "preprocessing": {"sample_rate": 16000, "mono": "mean", "resampler": "soxr-HQ", "normalize": False},
            "frame": {"window": 400, "hop": 320}}
    from store.spec import FORMAT_VERSION

    spec["format_version"] = FORMAT_VERSION
    layout = Layout()
    path = create_cache(root, spec, {"teacher": "scale-bench"}, layout)
    import numpy as np

    audio = np.zeros(400 + 320 * 4, np.float32)
    feats = {k: np.zeros((5, 4), np.float32) for k in (4, 8, 12)}
    template = PartWriter(path, "template", [4, 8, 12], 4, "float16", layout)
    for j in range(PER_PART):
        template.add(f"t{j}", feats, audio)
    marker = template.commit()
    os.remove(commit_path(path, "template"))
    utterances = -(-utterances // PER_PART) * PER_PART  # whole parts: the template's arrays hold PER_PART utterances
    ids = [f"{s // 1000}/{s // 100}/{s // 1000}-{s // 100}-{s:04d}" for s in range(utterances)]
    for start in range(0, utterances, PER_PART):
        chunk = ids[start : start + PER_PART]
        name = part_name(chunk)
        d = f"{name}.000000000000"
        shutil.copytree(f"{path}/parts/{marker['dir']}", f"{path}/parts/{d}")
        m = dict(marker, part=name, dir=d, ids=chunk, frames=[5] * len(chunk), samples=[len(audio)] * len(chunk),
                 sha256=[audio_digest(audio)] * len(chunk), total_frames=5 * len(chunk), total_samples=len(audio) * len(chunk),
                 sources=[{"path": f"/data/LibriSpeech/{u}.flac", "size": 1, "mtime_ns": 1, "sha256": "0" * 64} for u in chunk])
        with open(commit_path(path, name), "w") as f:
            json.dump(m, f)
    shutil.rmtree(f"{path}/parts/{marker['dir']}")
    consolidate(path)
    return path


_PEAK = ("\nprint([int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")


def measure(path: str, snippet: str) -> tuple[float, float]:
    """Wall time and peak RSS of a fresh process. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec,
    so every child would report this (index-building) process's peak."""
    code = f"import os, sys; P = {path!r}\n{snippet}{_PEAK}"
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t, int(out.split()[-1]) / 1024


def s3_rows(path: str) -> list[list]:
    """Upload the cache to a moto S3 server on loopback; open it with and without the consolidated index, counting
    the requests moto logs (one line each) and the time."""
    import socket

    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(os.path.join(tempfile.mkdtemp(), "moto.log"), "w+")
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = s3fs.S3FileSystem()
        fs.mkdir("scale")
        url = f"s3://scale/caches/{os.path.basename(path)}"
        fs.put(path, url, recursive=True)
        rows = []
        for label in ("open, consolidated index", "open, markers only (no index.json)"):
            if "no index" in label:
                fs.rm(f"{url}/index.json")
            log.seek(0, os.SEEK_END)
            before = log.tell()
            seconds, rss = measure(url, "import store\nfrom store import open_cache; print(len(open_cache(P)))")
            log.seek(before)
            requests = sum(1 for line in log.read().splitlines() if '" 20' in line or '" 40' in line)
            rows.append([label, f"{seconds:.2f}", str(requests), f"{rss:.0f}"])
        return rows
    finally:
        moto.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of LibriSpeech's 281,241 utterances")
    ap.add_argument("--keep", default=None, help="build (or reuse) the cache under this directory")
    ap.add_argument("--s3", action="store_true", help="also open it from a moto S3 server on loopback (uploads it: use --scale)")
    args = ap.parse_args()
    n = int(UTTERANCES * args.scale)
    root = args.keep or tempfile.mkdtemp(prefix="scale-")
    existing = [d for d in os.listdir(root) if not d.startswith(".")] if os.path.isdir(root) else []
    t = time.perf_counter()
    path = os.path.join(root, existing[0]) if existing else build(root, n)
    parts = len(os.listdir(os.path.join(path, "commits")))
    print(f"cache: {parts * PER_PART} utterances in {parts} parts, built in {time.perf_counter() - t:.0f} s")
    base = {imp: measure(path, f"import {imp}") for imp in ("store", "store, train.data")}
    rows = []
    for name, snippet in SNIPPETS.items():
        imp = "store, train.data" if "train" in snippet else "store"
        seconds, rss = measure(path, f"import {imp}\n" + snippet)
        rows.append([name, f"{seconds:.2f}", f"{seconds - base[imp][0]:.2f}", f"{rss:.0f}", f"{rss - base[imp][1]:.0f}"])
    print(table(["command (fresh process, local disk)", "seconds", "minus imports", "peak RSS MB", "minus imports"], rows))
    full = float(rows[4][2]) - float(rows[0][2])
    print(f"imports alone: store {base['store'][0]:.2f} s / {base['store'][1]:.0f} MB; with torch (train.data) "
          f"{base['store, train.data'][0]:.2f} s / {base['store, train.data'][1]:.0f} MB")
    print(f"verify's overhead per part (every crc32c, minus open): {1000 * full / parts:.2f} ms")
    if args.s3:
        print(table(["on S3 (moto, loopback; fresh process)", "seconds", "requests", "peak RSS MB"], s3_rows(path)))
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
