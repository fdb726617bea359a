"""Training-step benchmark, same batches, one run:

  pure    student step with the targets already in memory (the floor)
  cached  student step fed by the DataLoader from the cache (what train-student --cache does)
  online  the teacher's forward on the batch, then the student step (what s3prl does)
  int8    cached, from an int8 copy of the cache: the loader ships codes, the step decodes them on its device

    python -m bench.train_bench [--batch-size 4] [--crop-samples 64000] [--steps 8]

HuBERT-base shapes (teacher 94.7M, student 23.5M); batch and crop reduced on CPU (say which).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.common import hubert_base_teacher, machine, table
from train.pretraining.speech_corpus import voiced_corpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop-samples", type=int, default=64000)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from extract import ExtractConfig, load_teacher
    from extract.run import extract_with
    from extract.teacher import resolve_device
    from store import open_cache
    from train.data import BucketBatches, CachedCrops, collate
    from train.loop import _Batches
    from train.loss import distill_loss
    from train.model import Student, init_from_teacher, student_config
    from train.recipe import decay_groups
    from train.targets import teacher_batch

    device = resolve_device(args.device)
    tmp = tempfile.mkdtemp(prefix="distilcache-bench-")
    try:
        teacher_dir = hubert_base_teacher(os.path.join(tmp, "teacher"))
        corpus = voiced_corpus(os.path.join(tmp, "corpus"), 3 * args.batch_size,
                               (0.6 * args.crop_samples / 16000, 1.1 * args.crop_samples / 16000))  # most crops are full length
        teacher = load_teacher(teacher_dir, device=str(device))
        layers = [4, 8, 12]
        summary = extract_with(ExtractConfig(teacher_dir, corpus, layers=tuple(layers), cache_dir=os.path.join(tmp, "c"),
                                             progress=False, device=str(device)), teacher)
        cache = open_cache(summary.path)
        ds = CachedCrops(cache, cache.utterance_ids, layers, args.crop_samples, seed=0)
        batches = BucketBatches(ds.lengths(), args.batch_size, seed=0)
        amp = torch.bfloat16 if device.type == "cuda" else None
        student = Student(student_config(teacher.config.to_dict()), len(layers)).to(device)
        init_from_teacher(student, teacher.model)
        opt = torch.optim.AdamW(decay_groups(student, 0.01), lr=2e-4, betas=(0.9, 0.98), eps=1e-6)

        from store.convert import convert_cache
        from train.decode import DeviceDecoder

        cache8 = convert_cache(cache.path, "int8")
        ds8 = CachedCrops(cache8, cache8.utterance_ids, layers, args.crop_samples, seed=0)
        decode8 = DeviceDecoder(cache8, layers, device)

        def step(batch: dict) -> None:
            wave, lengths = batch["wave"].to(device), batch["lengths"].to(device)
            frames = batch["frames"].to(device)
            targets = decode8(batch["codes"].to(device), batch["scales"].to(device)) if "codes" in batch else batch["targets"].to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                pred = student(wave, lengths)
            mask = torch.arange(targets.shape[2], device=device)[None, :] < frames[:, None]
            loss, _, _ = distill_loss(pred, targets, mask)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()

        in_memory = [collate([ds[k] for k in b]) for b in itertools_take(batches.from_step(0), args.steps + 1)]
        step(in_memory[0])  # warm-up
        loader = DataLoader(ds, batch_sampler=_Batches(batches.from_step(1), args.steps), collate_fn=collate,
                            num_workers=args.workers, prefetch_factor=4 if args.workers else None)
        it = iter(loader)
        it8 = iter(DataLoader(ds8, batch_sampler=_Batches(batches.from_step(1), args.steps), collate_fn=collate,
                              num_workers=args.workers, prefetch_factor=4 if args.workers else None))
        times: dict[str, list[float]] = {"pure": [], "cached": [], "online": [], "int8": []}
        waited = 0.0
        for b in in_memory[1:]:  # interleaved rounds: the machine's noise hits all three alike
            t = time.perf_counter()
            step(b)
            times["pure"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fetched = next(it)
            waited += time.perf_counter() - t
            step(fetched)
            times["cached"].append(time.perf_counter() - t)
            t = time.perf_counter()
            step({**b, **teacher_batch(teacher, {"wave": b["wave"], "lengths": b["lengths"]}, layers)})
            times["online"].append(time.perf_counter() - t)
            t = time.perf_counter()
            step(next(it8))
            times["int8"].append(time.perf_counter() - t)
        pure, cached, online, int8 = (float(np.median(times[k])) for k in ("pure", "cached", "online", "int8"))
        wait_fraction = waited / sum(times["cached"])

        print(f"machine: {machine()}; device {device}\ncommand: python -m bench.train_bench --batch-size {args.batch_size} "
              f"--crop-samples {args.crop_samples} --steps {args.steps} --workers {args.workers} (median of interleaved steps)\n"
              f"shapes: HuBERT-base teacher (random weights), 23.49M student, batch {args.batch_size} x {args.crop_samples} samples "
              f"(recipe: 24 x <=250,000), layers 4,8,12\n")
        print(table(["step", "s/step", "ratio"], [
            ["pure student (targets in memory)", f"{pure:.3f}", "1.00"],
            ["cached (DataLoader from the cache)", f"{cached:.3f}", f"cached / pure = **{cached / pure:.3f}**"],
            ["online teacher + student", f"{online:.3f}", f"online / cached = **{online / cached:.2f}**"],
            ["cached from int8 (decoded in the step)", f"{int8:.3f}", f"int8 / pure = **{int8 / pure:.3f}**"],
        ]))
        print(f"\nloader-wait fraction of the cached steps: {wait_fraction:.3f}")
        if args.json:
            json.dump({"pure": pure, "cached": cached, "online": online, "int8": int8, "wait_fraction": wait_fraction},
                      open(args.json, "w"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def itertools_take(stream, n: int) -> list:
    import itertools

    return list(itertools.islice(stream, n))


if __name__ == "__main__":
    main()
