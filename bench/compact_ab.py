"""Student A/B: the same run trained on fp16 and on int8 targets, both judged against exact (fp32) targets.

    python -m bench.compact_ab [--steps 150]

The demo's corpus and teacher (make demo builds them: 48 espeak utterances, a 6-layer 256-wide HuBERT with random
weights, layers 2,4,6): one fp32 extraction, converted to fp16 and int8, then train-student on each with
--eval-cache pointing at the fp32 cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from bench.common import ab_args, demo_cache, machine, table


def main() -> None:
    args = ab_args(__doc__)
    from store.convert import convert_cache
    from train.config import TrainConfig
    from train.loop import train

    tmp = tempfile.mkdtemp(prefix="compact-ab-")
    try:
        exact = demo_cache(args.demo_out, tmp, "float32")["cache"]
        rows = []
        for mode in ("float16", "int8"):
            cache = convert_cache(exact, mode)
            out = os.path.join(tmp, mode)
            train(TrainConfig(cache=cache.path, out=out, steps=args.steps, batch_size=8, max_crop_samples=32000, valid_fraction=0.1,
                              eval_interval=args.steps, num_workers=1, progress=False, eval_cache=exact))
            ev = json.load(open(os.path.join(out, "eval.json")))
            rows.append([mode, f"{ev['loss']:.4f}", *(f"{ev[f'l1_layer{k}']:.4f}" for k in (2, 4, 6)), ev["utterances"]])
        gap = float(rows[1][1]) / float(rows[0][1]) - 1
        print(f"machine: {machine()}\ncommand: python -m bench.compact_ab --steps {args.steps}\n"
              "teacher: the demo's 6-layer 256-wide HuBERT, random weights; 48 espeak utterances; batch 8 x 32000 samples\n")
        print(table(["trained on", "held-out loss vs exact targets", "L1 layer 2", "L1 layer 4", "L1 layer 6", "held-out utts"], rows))
        print(f"\nint8 / fp16 held-out loss: {1 + gap:.4f} ({100 * gap:+.2f} %)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
