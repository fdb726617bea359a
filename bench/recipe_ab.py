"""Cached training against the paper's own setup: the same student trained from the cache (our recipe), online with
our recipe, and online with `--recipe s3prl`; held-out loss per run and wall time per step, in one run.

    python -m bench.recipe_ab [--steps 150]

The demo's corpus and teacher (48 espeak utterances; a 6-layer 256-wide HuBERT with random weights; layers 2,4,6),
batch 8 x 32000 samples. Each run's held-out loss is measured its own way (cached: the cache's full-utterance
targets; online: the teacher on the held-out crops), both exact and unpadded, so read the losses as each recipe's
own yardstick and the times side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from bench.common import ab_args, demo_cache, machine, table


def main() -> None:
    args = ab_args(__doc__)
    from train.config import TrainConfig
    from train.loop import train

    tmp = tempfile.mkdtemp(prefix="recipe-ab-")
    try:
        demo = demo_cache(args.demo_out, tmp)
        cache, corpus, kind, teacher = demo["cache"], demo["corpus"], demo["kind"], demo["teacher"]
        common = dict(out="", steps=args.steps, batch_size=8, max_crop_samples=32000, valid_fraction=0.1, eval_interval=args.steps,
                      num_workers=1, progress=False, layers=(2, 4, 6), seed=0)
        runs = {"cached (distilcache)": dict(cache=cache), "online (distilcache)": dict(teacher=teacher, corpus=corpus),
                "online (--recipe s3prl)": dict(teacher=teacher, corpus=corpus, recipe="s3prl")}
        rows = []
        for name, kw in runs.items():
            out = os.path.join(tmp, name.split()[0] + ("-s3prl" if "s3prl" in name else ""))
            t = time.perf_counter()
            train(TrainConfig(**{**common, "out": out, **kw}))
            seconds = time.perf_counter() - t
            ev = json.load(open(os.path.join(out, "eval.json")))
            rows.append([name, f"{ev['loss']:.4f}", *(f"{ev[f'cos_layer{k}']:.4f}" for k in (2, 4, 6)), f"{seconds / args.steps:.3f}"])
        print(f"machine: {machine()}\ncommand: python -m bench.recipe_ab --steps {args.steps}\n"
              f"teacher: the demo's 6-layer 256-wide HuBERT, random weights; 48 utterances ({kind}); batch 8 x 32000 samples\n")
        print(table(["run", "held-out loss", "cos layer 2", "cos layer 4", "cos layer 6", "s per step (incl. setup and eval)"], rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
