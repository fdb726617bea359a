"""The real training loop (train.loop.train) of this checkout against another commit's, side by side in one run.

    python -m bench.loop_ab --against 584fa6b [--steps 30 --rounds 3]

Both run `train()` on the same demo cache (make demo's corpus and teacher: layers 2,4,6, float16) with the same
config, in fresh processes, alternating A, B, A, B... so the machine's noise hits both alike; each reports the
median wall time per step after its first step (metrics.jsonl's steps_per_s, logged every step). The other
commit is checked out with `git worktree` into a temporary directory and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.common import demo_cache, machine

CHILD = """
import json, os, statistics, sys
sys.path.insert(0, sys.argv[1])
os.chdir(sys.argv[1])
from train.config import TrainConfig
from train.loop import train
train(TrainConfig(cache=sys.argv[2], out=sys.argv[3], steps=int(sys.argv[4]), batch_size=4, max_crop_samples=32000,
                  num_workers=1, log_interval=1, eval_interval=10**6, checkpoint_interval=10**6, init="random",
                  valid_fraction=0.1, progress=False))
rows = [json.loads(l) for l in open(os.path.join(sys.argv[3], "metrics.jsonl")) if '"steps_per_s"' in l]
print(json.dumps(statistics.median(1 / r["steps_per_s"] for r in rows[1:])))
"""


def one(tree: str, cache: str, steps: int, tmp: str) -> float:
    out = tempfile.mkdtemp(dir=tmp)
    shutil.rmtree(out)
    done = subprocess.run([sys.executable, "-c", CHILD, tree, cache, out, str(steps)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default="HEAD~1", help="the other commit")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--demo-out", default="demo-out")
    args = ap.parse_args()
    here = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="distilcache-loop-ab-")
    other = os.path.join(tmp, "other")
    subprocess.run(["git", "worktree", "add", "--detach", other, args.against], check=True, capture_output=True)
    try:
        cache = demo_cache(args.demo_out, tmp)["cache"]
        times: dict[str, list[float]] = {"this checkout": [], args.against: []}
        for _ in range(args.rounds):
            times["this checkout"].append(one(here, cache, args.steps, tmp))
            times[args.against].append(one(other, cache, args.steps, tmp))
        print(f"machine: {machine()}")
        print(f"command: python -m bench.loop_ab --against {args.against} --steps {args.steps} --rounds {args.rounds}")
        print("| loop | s/step per round (median of its steps) | median |\n|---|---|---|")
        for name, ts in times.items():
            print(f"| {name} | {', '.join(f'{t:.4f}' for t in ts)} | {statistics.median(ts):.4f} |")
        ratios = [a / b for a, b in zip(times["this checkout"], times[args.against], strict=True)]
        print(f"ratio this/{args.against} per round: {', '.join(f'{r:.3f}' for r in ratios)}")
        print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", other], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
