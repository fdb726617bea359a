"""Training crops from S3 (a moto server on loopback) against the same crops from local disk: requests and time.

    python -m bench.s3_crops [--base /tmp/base] [--crops 48] [--rounds 3]

One HuBERT-base-shaped cache (layers 4, 8, 12 at 768 wide, fp16, float32 audio; 2 parts of 300 s, the default layout)
is written locally and uploaded. Each round times, in fresh processes, the training loader (train.data.CachedCrops)
fetching the same 780-frame crops (a 24-crop batch is two rows of this) locally and from S3, for this checkout and,
with --base, another checkout (a `git worktree` of the commit before), and counts the requests moto answered.
With the loader in worker processes, a batch fetched in less than a student step never stalls the step: compare the
batch times with the step times in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from bench.common import moto_server, table

LAYERS, DIM, PART_SECONDS, RATE = (4, 8, 12), 768, 300, 16000

_CROPS = """
import sys, time
sys.path.insert(0, SRC)
from store import open_cache
from train.data import CachedCrops
cache = open_cache(P)
ids = sorted(cache.utterance_ids)
crops = CachedCrops(cache, ids, [4, 8, 12], 250000, seed=0)
t = time.perf_counter()
for i in range(N):
    crops[(0, i % len(ids))]
print(time.perf_counter() - t)
"""


def build(root: str) -> str:
    from store import Layout, PartWriter, create_cache
    from store.index import consolidate
    from store.layout import part_name
    from store.spec import FORMAT_VERSION

    spec = {"format_version": FORMAT_VERSION, "teacher": {"digest": "sha256:s3-bench", "config": {"hidden_size": DIM}},
            "layers": list(LAYERS), "dim": DIM, "compute_dtype": "float32", "storage_dtype": "float16",
            "preprocessing": {"sample_rate": RATE, "mono": "mean", "resampler": "soxr-HQ", "normalize": False},
            "frame": {"window": 400, "hop": 320}}
    layout = Layout()
    path = create_cache(root, spec, {"teacher": "s3-bench"}, layout)
    rng = np.random.default_rng(0)
    seconds = 15  # utterances of 15 s: 20 per part
    for p in range(2):
        ids = [f"spk{p}/utt{i:02d}" for i in range(PART_SECONDS // seconds)]
        writer = PartWriter(path, part_name(ids), list(LAYERS), DIM, "float16", layout)
        for uid in ids:
            n = seconds * RATE
            frames = (n - 400) // 320 + 1
            feats = {k: rng.standard_normal((frames, DIM)).astype(np.float32) for k in LAYERS}
            writer.add(uid, feats, (0.1 * rng.standard_normal(n)).astype(np.float32))
        writer.commit()
    consolidate(path)
    return path


def fetch(src: str, path: str, crops: int) -> float:
    code = f"SRC, P, N = {src!r}, {path!r}, {crops}\n{_CROPS}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=src)
    if proc.returncode:
        raise SystemExit(f"bench: the crop reader failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="also time this checkout of the code (git worktree of the commit before)")
    ap.add_argument("--crops", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="s3-crops-")
    try:
        path = build(os.path.join(root, "caches"))
        with moto_server() as log:
            import s3fs

            s3 = s3fs.S3FileSystem()
            s3.mkdir("crops")
            url = f"s3://crops/caches/{os.path.basename(path)}"
            s3.put(path, url, recursive=True)
            checkouts = {"this checkout": os.getcwd(), **({"base": os.path.abspath(args.base)} if args.base else {})}
            results: dict[tuple[str, str], list] = {}
            for _ in range(args.rounds):
                for label, src in checkouts.items():
                    for where, p in (("local", path), ("S3", url)):
                        before = log.requests()
                        seconds = fetch(src, p, args.crops)
                        results.setdefault((label, where), []).append((seconds, log.requests() - before))
        rows = []
        for label in checkouts:
            local = [s for s, _ in results[(label, "local")]]
            remote = [s for s, _ in results[(label, "S3")]]
            requests = [r for _, r in results[(label, "S3")]]
            ratios = [r / loc for r, loc in zip(remote, local, strict=True)]
            rows.append([label, f"{min(local) / args.crops * 24:.2f}-{max(local) / args.crops * 24:.2f}",
                         f"{min(remote) / args.crops * 24:.2f}-{max(remote) / args.crops * 24:.2f}",
                         f"{min(ratios):.1f}-{max(ratios):.1f}", f"{min(requests) / args.crops:.1f}-{max(requests) / args.crops:.1f}"])
        print(table(["code", "24-crop batch, local disk (s)", "24-crop batch, S3/moto (s)", "S3 / local", "requests per crop (open incl.)"],
                    rows))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
