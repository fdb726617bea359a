"""Training crops from S3 (a moto server on loopback) against the same crops from local disk: requests and time.

    python -m bench.s3_crops [--base /tmp/base] [--crops 48] [--rounds 3] [--shape long|librispeech|both]

Two shapes, each written locally and uploaded: "long", one HuBERT-base-shaped cache (layers 4, 8, 12 at 768 wide, fp16,
float32 audio; 2 parts of 300 s, the default layout), where every crop reads the same two parts; and "librispeech",
LibriSpeech's proportions (utterances of 12 s, 49 a part, 4,096-frame shards: ~7 utterances a shard) over 24 parts, the
crops drawn in the training sampler's order (train.data.BucketBatches), so that nearly every crop lands in another part
than the last and pays for whatever a part's first read costs (layers 4 wide there: the requests, not the bytes, count).
Each round times, in fresh processes, the training loader (train.data.CachedCrops) fetching the same crops (up to 780
frames; a 24-crop batch is two rows of this) locally and from S3, for this checkout and,
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
from train.data import BucketBatches, CachedCrops
cache = open_cache(P)
ids = sorted(cache.utterance_ids)
crops = CachedCrops(cache, ids, [4, 8, 12], 250000, seed=0)
order = [k for batch in BucketBatches([min(cache.num_samples(u), 250000) for u in ids], 8, 0).epoch(0) for k in batch]
t = time.perf_counter()
for i in range(N):
    crops[order[i % len(order)]]
print(time.perf_counter() - t)
"""


SHAPES = {"long": dict(parts=2, per_part=20, seconds=15, dim=DIM),  # 2 parts of 300 s: every crop in the same two parts
          "librispeech": dict(parts=24, per_part=49, seconds=12, dim=4)}  # LibriSpeech's proportions, narrow rows


def build(root: str, parts: int = 2, per_part: int = 20, seconds: int = 15, dim: int = DIM, layout=None) -> str:
    """A cache of `parts` parts of `per_part` utterances of `seconds` s, random rows (the default layout unless given)."""
    from store import Layout, PartWriter, create_cache
    from store.index import consolidate
    from store.layout import part_name
    from store.spec import TARGETS_VERSION

    spec = {"format_version": TARGETS_VERSION, "teacher": {"digest": "sha256:s3-bench", "config": {"hidden_size": dim}},
            "layers": list(LAYERS), "dim": dim, "compute_dtype": "float32", "storage_dtype": "float16",
            "preprocessing": {"sample_rate": RATE, "mono": "mean", "resampler": "soxr-HQ", "normalize": False},
            "frame": {"window": 400, "hop": 320}}
    layout = layout or Layout()
    path = create_cache(root, spec, {"teacher": "s3-bench"}, layout)
    rng = np.random.default_rng(0)
    for p in range(parts):
        ids = [f"spk{p:02d}/utt{i:02d}" for i in range(per_part)]
        writer = PartWriter(path, part_name(ids), list(LAYERS), dim, "float16", layout)
        for uid in ids:
            n = seconds * RATE
            frames = (n - 400) // 320 + 1
            feats = {k: rng.standard_normal((frames, dim)).astype(np.float32) for k in LAYERS}
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
    ap.add_argument("--shape", choices=("long", "librispeech", "both"), default="both")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="s3-crops-")
    checkouts = {"this checkout": os.getcwd(), **({"base": os.path.abspath(args.base)} if args.base else {})}
    rows = []
    try:
        with moto_server() as log:
            import s3fs

            s3 = s3fs.S3FileSystem()
            s3.mkdir("crops")
            for shape in ("long", "librispeech") if args.shape == "both" else (args.shape,):
                path = build(os.path.join(root, shape), **SHAPES[shape])
                url = f"s3://crops/{shape}/{os.path.basename(path)}"
                s3.put(path, url, recursive=True)
                results: dict[tuple[str, str], list] = {}
                for _ in range(args.rounds):
                    for label, src in checkouts.items():
                        for where, p in (("local", path), ("S3", url)):
                            before = log.requests(), log.requests("HEAD")
                            seconds = fetch(src, p, args.crops)
                            results.setdefault((label, where), []).append(
                                (seconds, log.requests() - before[0], log.requests("HEAD") - before[1]))
                for label in checkouts:
                    local = [r[0] for r in results[(label, "local")]]
                    remote = [r[0] for r in results[(label, "S3")]]
                    requests = [r[1] for r in results[(label, "S3")]]
                    heads = [r[2] for r in results[(label, "S3")]]
                    ratios = [r / loc for r, loc in zip(remote, local, strict=True)]
                    rows.append([shape, label, f"{min(local) / args.crops * 24:.2f}-{max(local) / args.crops * 24:.2f}",
                                 f"{min(remote) / args.crops * 24:.2f}-{max(remote) / args.crops * 24:.2f}",
                                 f"{min(ratios):.1f}-{max(ratios):.1f}",
                                 f"{min(requests) / args.crops:.1f}-{max(requests) / args.crops:.1f}",
                                 f"{min(heads) / args.crops:.1f}-{max(heads) / args.crops:.1f}"])
        print(table(["shape", "code", "24-crop batch, local disk (s)", "24-crop batch, S3/moto (s)", "S3 / local",
                     "requests per crop (open incl.)", "of which HEAD"], rows))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
