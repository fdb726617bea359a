"""The one script to run when a session is lent a GPU (about 5 minutes on an H100):

    python -m bench.gpu_check            # prints the tables for docs/benchmarks.md

1. exactness on the GPU: a padded fp32 batch vs each utterance alone (max abs diff, goal <= 1e-4),
   and bf16 compute vs fp32 (cosine), on HuBERT-base-shaped weights;
2. extraction: bare forward vs the pipeline, fp32 and bf16 (bench.extract_bench);
3. a training step at the recipe's shapes: pure vs cached vs online (bench.train_bench).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from bench.common import hubert_base_teacher, machine


def exactness() -> None:
    from extract import load_teacher

    tmp = tempfile.mkdtemp()
    path = hubert_base_teacher(os.path.join(tmp, "t"))
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (15.0, 11.3, 8.0, 2.1, 0.5)]
    fp32 = load_teacher(path, device="cuda")
    batch = fp32.forward(waves, [4, 8, 12])
    worst = max(float(np.abs(b[k] - fp32.forward([w], [4, 8, 12])[0][k]).max()) for w, b in zip(waves, batch, strict=True)
                for k in (4, 8, 12))
    bf16 = load_teacher(path, device="cuda", compute_dtype="bfloat16").forward(waves, [12])
    cos = min(float(np.min((b[12] * a[12]).sum(-1) / np.linalg.norm(b[12], axis=-1) / np.linalg.norm(a[12], axis=-1)))
              for a, b in zip(batch, bf16, strict=True))
    print(f"machine: {machine()}")
    print(f"exact batching on GPU, fp32 (TF32 off): max |batched - alone| = {worst:.2e} (goal <= 1e-4)")
    print(f"bf16 compute vs fp32, layer 12: min per-frame cosine = {cos:.4f}")


def main() -> None:
    exactness()
    for argv in (["bench.extract_bench", "--device", "cuda", "--utterances", "64", "--repeat", "2"],
                 ["bench.train_bench", "--device", "cuda", "--batch-size", "24", "--crop-samples", "250000", "--steps", "10",
                  "--workers", "8"]):
        print(f"\n$ python -m {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, "-m", *argv], check=True)


if __name__ == "__main__":
    main()
