"""Student designs side by side: parameters and training-step time per preset (HuBERT-base shapes), then a short
training of two designs on one cache with their held-out loss per step.

    python -m bench.designs_bench [--batch-size 2] [--crop-samples 64000] [--repeats 3] [--steps 150]

Step times are interleaved (preset A, B, C, D, then again) and reported as a range; the A/B training uses the
demo's corpus (espeak-ng speech when installed) and a small HuBERT with random weights, so the losses compare
the designs' ability to fit a random teacher, not speech quality.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from bench.common import machine, table


def step_times(presets: list[str], batch: int, crop: int, repeats: int) -> dict[str, list[float]]:
    from transformers import HubertConfig

    from train.design import resolve
    from train.loss import distill_loss
    from train.model import Student, student_config

    base = HubertConfig().to_dict()
    torch.manual_seed(0)
    models = {p: Student(student_config(base, 0.1, resolve(p, 0, 0, 0, 0, "", base)), 3, target_dim=768).train() for p in presets}
    wave, lengths = torch.randn(batch, crop), torch.full((batch,), crop)
    frames = int(models[presets[0]].num_frames(torch.tensor(crop)))
    target, mask = torch.randn(batch, 3, frames, 768), torch.ones(batch, frames, dtype=torch.bool)
    times: dict[str, list[float]] = {p: [] for p in presets}
    for r in range(repeats + 1):  # the first round warms up
        for p in presets:
            t = time.perf_counter()
            loss = distill_loss(models[p](wave, lengths), target, mask)[0]
            loss.backward()
            if r:
                times[p].append(time.perf_counter() - t)
    return times


def ab(tmp: str, steps: int) -> tuple[str, dict[str, list[dict]]]:
    from extract import ExtractConfig, extract_features
    from train.config import TrainConfig
    from train.demo import small_teacher
    from train.loop import train
    from train.pretraining.speech_corpus import demo_corpus

    kind = demo_corpus(os.path.join(tmp, "corpus"), 48)
    teacher = small_teacher(os.path.join(tmp, "teacher"))
    s = extract_features(ExtractConfig(teacher, os.path.join(tmp, "corpus"), layers=(2, 4, 6), cache_dir=os.path.join(tmp, "k"),
                                       progress=False))
    curves = {}
    thin = {"preset": "deep-thin", "student_layers": 6, "student_width": 128, "student_heads": 4, "student_ffn": 256,
            "match": "2:2,4:4,6:6"}
    for name, kw in (("distilhubert 2 x 256, heads", {}), ("deep-thin 6 x 128, match 2:2,4:4,6:6", thin)):
        out = os.path.join(tmp, name.split()[0])
        train(TrainConfig(cache=s.path, out=out, steps=steps, batch_size=4, max_crop_samples=64000, num_workers=0, valid_fraction=0.1,
                          eval_interval=max(1, steps // 5), progress=False, **kw))
        rows = [json.loads(line)["eval"] for line in open(os.path.join(out, "metrics.jsonl")) if line.startswith('{"eval"')]
        final = json.load(open(os.path.join(out, "eval.json")))
        design = json.load(open(os.path.join(out, "design.json")))
        curves[f"{name} ({design['parameters'] / 1e6:.2f}M)"] = [*rows, final]
    return kind, curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--crop-samples", type=int, default=64000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    from train.design import PRESETS

    presets = list(PRESETS)
    times = step_times(presets, args.batch_size, args.crop_samples, args.repeats)
    base = times["distilhubert"]
    print(f"machine: {machine()}")
    print(f"command: python -m bench.designs_bench --batch-size {args.batch_size} --crop-samples {args.crop_samples} "
          f"--repeats {args.repeats} --steps {args.steps}\n")
    print(f"Training step (forward + backward, fp32, batch {args.batch_size} x {args.crop_samples} samples), HuBERT-base shapes, "
          f"{args.repeats} interleaved repeats:\n")
    rows = [[p, f"{min(t):.3f}-{max(t):.3f}", f"{min(t) / max(base):.2f}-{max(t) / min(base):.2f}"] for p, t in times.items()]
    print(table(["preset", "step s (min-max)", "÷ distilhubert (range)"], rows))
    with tempfile.TemporaryDirectory() as tmp:
        kind, curves = ab(tmp, args.steps)
    print(f"\nTwo designs, one cache ({kind}; small HuBERT teacher, 6 layers x 256, random weights), batch 4, crops <= 4 s; "
          "held-out loss by step:\n")
    steps = sorted({r["step"] for c in curves.values() for r in c})
    print(table(["step", *curves], [[s, *[next((f"{r['loss']:.4f}" for r in c if r["step"] == s), "-") for c in curves.values()]]
                                    for s in steps]))


if __name__ == "__main__":
    main()
