"""The one script to run when a session is lent a GPU (about 5 minutes on an H100):

    python -m bench.gpu_check            # prints the tables for docs/benchmarks.md

1. exactness on the GPU: a padded fp32 batch vs each utterance alone (max abs diff, goal <= 1e-4),
   and bf16 compute vs fp32 (cosine), on HuBERT-base-shaped weights;
2. extraction: bare forward vs the pipeline, fp32 and bf16 (bench.extract_bench);
3. a training step at the recipe's shapes: pure vs cached vs online (bench.train_bench);
4. the writer thread against the teacher: encoding (and, for lossy modes, measuring the error of) 10 s of
   layers 4, 8, 12 per storage mode on the CPU, beside one bf16 forward of 10 s on the GPU (batch 16): a ratio
   above 1 means the writer, not the teacher, bounds extraction in that mode.
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


def writer_against_forward() -> None:
    import tempfile
    import time

    import torch

    from extract import load_teacher
    from store import Layout, PartWriter, create_cache
    from store.modes import TARGET_MODES

    tmp = tempfile.mkdtemp()
    teacher = load_teacher(hubert_base_teacher(os.path.join(tmp, "t")), device="cuda", compute_dtype="bfloat16")
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(160_000)).astype(np.float32) for _ in range(16)]
    teacher.forward(waves[:2], [4, 8, 12])
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        teacher.forward(waves, [4, 8, 12])
    torch.cuda.synchronize()
    forward = (time.perf_counter() - t) / 3 / len(waves)
    feats = {k: rng.standard_normal((499, 768)).astype(np.float32) for k in (4, 8, 12)}
    print(f"\nbf16 forward on the GPU: {1000 * forward:.1f} ms per 10 s of audio (batch of 16)")
    for mode in ("float16", "int8", "int4", "pq"):
        stats = {k: TARGET_MODES[mode].fit([rng.standard_normal((4000, 768)).astype(np.float32)]) for k in (4, 8, 12)} \
            if TARGET_MODES[mode].needs_stats else None
        spec = {"format_version": 0, "teacher": {"digest": f"sha256:{mode}", "config": {}}, "layers": [4, 8, 12], "dim": 768,
                "compute_dtype": "bfloat16", "audio": "none",
                "storage_dtype": mode, "frame": {"window": 400, "hop": 320},
                "preprocessing": {"sample_rate": 16000, "mono": "mean", "resampler": "soxr-HQ", "normalize": False}}
        from store.spec import TARGETS_VERSION

        spec["format_version"] = TARGETS_VERSION
        if stats:
            from store.modes import stats_digest

            spec["storage_stats"] = stats_digest(stats)
        path = create_cache(os.path.join(tmp, mode), spec, {}, Layout(), stats)
        writer = PartWriter(path, "pbench", [4, 8, 12], 768, mode, Layout(), stats, audio="none")
        t = time.perf_counter()
        for i in range(8):
            writer.add(f"u{i}", feats, None, samples=160_000)
        write = (time.perf_counter() - t) / 8
        print(f"writer, {mode}: {1000 * write:.1f} ms per 10 s on the CPU, {write / forward:.2f}x the bf16 forward")


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="prints the tables for docs/benchmarks.md").parse_args()
    exactness()
    writer_against_forward()
    for argv in (["bench.extract_bench", "--device", "cuda", "--utterances", "64", "--repeat", "2"],
                 ["bench.train_bench", "--device", "cuda", "--batch-size", "24", "--crop-samples", "250000", "--steps", "10",
                  "--workers", "8"]):
        print(f"\n$ python -m {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, "-m", *argv], check=True)


if __name__ == "__main__":
    main()
