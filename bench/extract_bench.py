"""Extraction benchmark, side by side on the same utterances and device:

  bare     the teacher's forward alone over the pipeline's batches (pre-decoded audio, nothing written)
  pipeline extract-features' pipeline: decode threads + exact batched forward + shard writes + commits
  naive    one utterance at a time, decode inline, one .npy file per utterance and layer (fairseq-dumper style)
  bf16     the pipeline with --dtype bfloat16
and peak RSS of the pipeline for a corpus of N and 4N utterances (flat = memory does not grow with the corpus).

    python -m bench.extract_bench [--utterances 24] [--device auto]
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

import numpy as np

from bench.common import hubert_base_teacher, machine, table
from train.pretraining.speech_corpus import voiced_corpus


def bare_forward(teacher, corpus: str, layers: list[int], batch_seconds: float) -> tuple[float, float]:
    from extract.audio import load_audio
    from extract.batching import plan_batches
    from extract.corpus import scan

    _, utts, _ = scan(corpus, teacher.sample_rate)
    waves = [load_audio(u.path, teacher.sample_rate) for u in utts]
    batches = plan_batches([len(w) for w in waves], int(batch_seconds * teacher.sample_rate))
    t = time.perf_counter()
    for b in batches:
        teacher.forward([waves[i] for i in b], layers)
    _sync(teacher)
    return time.perf_counter() - t, sum(len(w) for w in waves) / teacher.sample_rate


def pipeline(teacher, teacher_dir: str, corpus: str, layers: list[int], batch_seconds: float, dtype: str, root: str) -> float:
    from extract.run import ExtractConfig, extract_with

    cfg = ExtractConfig(teacher_dir, corpus, layers=tuple(layers), cache_dir=root, dtype=dtype, batch_seconds=batch_seconds,
                        progress=False, device=str(teacher.device))
    t = time.perf_counter()
    extract_with(cfg, teacher)
    return time.perf_counter() - t


def naive(teacher, corpus: str, layers: list[int], out: str) -> float:
    from extract.audio import load_audio
    from extract.corpus import scan

    _, utts, _ = scan(corpus, teacher.sample_rate)
    t = time.perf_counter()
    for u in utts:
        feats = teacher.forward([load_audio(u.path, teacher.sample_rate)], layers)[0]
        for k in layers:
            path = os.path.join(out, f"layer{k}", u.uid + ".npy")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, feats[k].astype(np.float16))
    return time.perf_counter() - t


def _sync(teacher) -> None:
    import torch

    if teacher.device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss(teacher_dir: str, corpus: str, root: str, device: str) -> float:
    """Peak RSS (MB) of a whole extract-features run in a fresh process.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of this (model-holding)
    process reported the parent's peak when that was higher (707 MB measured one day, 1,201 MB another)."""
    code = ("import sys; from extract.cli import main; sys.argv=sys.argv[1:];\n"
            "try: main()\nexcept SystemExit: pass\n"
            "print('RSS', [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')][0] / 1024)")
    out = subprocess.run([sys.executable, "-c", code, "x", "--teacher", teacher_dir, "--corpus", corpus, "--cache-dir", root,
                          "--layers", "1,2", "--device", device, "--quiet", "--part-seconds", "30"],
                         capture_output=True, text=True, check=True).stdout
    return float(out.split("RSS")[-1])


def rss_table(tmp: str, n: int, device: str) -> str:
    """Peak RSS of whole runs on N and 4N utterances: flat means memory does not grow with the corpus."""
    small = hubert_base_teacher(os.path.join(tmp, "hubert-2-layers"), layers=2)
    rss_n = peak_rss(small, voiced_corpus(os.path.join(tmp, "rss-n"), n, (1.0, 4.0)), os.path.join(tmp, "c1"), device)
    rss_4n = peak_rss(small, voiced_corpus(os.path.join(tmp, "rss-4n"), 4 * n, (1.0, 4.0)), os.path.join(tmp, "c2"), device)
    return (f"peak RSS (VmHWM), whole extract-features run (2-layer HuBERT-base-width teacher, {device}): {n} utterances "
            f"{rss_n:.0f} MB, {4 * n} utterances {rss_4n:.0f} MB (ratio {rss_4n / rss_n:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--utterances", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-seconds", type=float, default=None, help="default: extract-features' (200 on GPU, 0 on CPU)")
    ap.add_argument("--rss-utterances", type=int, default=40)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--rss-only", action="store_true", help="only the peak-RSS comparison (N vs 4N utterances)")
    ap.add_argument("--bf16", action="store_true", help="also bf16 compute on CPU (emulated there: very slow; on by default on GPU)")
    args = ap.parse_args()
    from extract import load_teacher
    from extract.pipeline import auto_batch_seconds

    tmp = tempfile.mkdtemp(prefix="distilcache-bench-")
    if args.rss_only:
        try:
            print(rss_table(tmp, args.rss_utterances, "cpu" if args.device == "auto" else args.device))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    try:
        teacher_dir = hubert_base_teacher(os.path.join(tmp, "hubert-base-shaped"))
        corpus = voiced_corpus(os.path.join(tmp, "corpus"), args.utterances)
        layers = [4, 8, 12]
        res = {}
        from extract.teacher import resolve_device

        gpu = resolve_device(args.device).type == "cuda"
        for dtype in ("float32", "bfloat16") if (gpu or args.bf16) else ("float32",):
            teacher = load_teacher(teacher_dir, device=args.device, compute_dtype=dtype)
            teacher.forward([np.zeros(32000, np.float32)] * 2, layers)  # warm-up
            batch_seconds = auto_batch_seconds(args.batch_seconds, teacher)
            bare, pipe, slow = [], [], []
            for r in range(args.repeat):  # interleaved, best of each: a shared machine's noise hits all alike
                seconds, audio = bare_forward(teacher, corpus, layers, batch_seconds)
                bare.append(seconds)
                pipe.append(pipeline(teacher, teacher_dir, corpus, layers, batch_seconds, dtype, os.path.join(tmp, f"{dtype}{r}")))
                if dtype == "float32":
                    slow.append(naive(teacher, corpus, layers, os.path.join(tmp, f"naive{r}")))
            res[f"bare_{dtype}"], res[f"pipeline_{dtype}"] = min(bare), min(pipe)
            if slow:
                res["naive_float32"] = min(slow)
        device = str(teacher.device)
        rss_line = rss_table(tmp, args.rss_utterances, device)
        rows = [
            ["bare teacher forward, fp32", f"{audio / res['bare_float32']:.1f}x", "1.00"],
            ["pipeline (decode + forward + write), fp32", f"{audio / res['pipeline_float32']:.1f}x",
             f"**{res['bare_float32'] / res['pipeline_float32']:.2f}**"],
            ["naive loop, one file per utterance, fp32", f"{audio / res['naive_float32']:.1f}x",
             f"{res['bare_float32'] / res['naive_float32']:.2f}"],
        ]
        if "bare_bfloat16" in res:
            rows += [["bare teacher forward, bf16", f"{audio / res['bare_bfloat16']:.1f}x",
                      f"{res['bare_float32'] / res['bare_bfloat16']:.2f}"],
                     ["pipeline, bf16", f"{audio / res['pipeline_bfloat16']:.1f}x",
                      f"{res['bare_float32'] / res['pipeline_bfloat16']:.2f}"]]
        print(f"machine: {machine()}; device {device}\ncommand: python -m bench.extract_bench --utterances {args.utterances} "
              f"--batch-seconds {batch_seconds:g} --repeat {args.repeat} (best of {args.repeat}, interleaved)"
              f"\nteacher: HuBERT-base-shaped random weights, layers 4,8,12; "
              f"{args.utterances} utterances, {audio:.0f} s of audio\n")
        print(table(["what", "real-time factor", "throughput / bare fp32 forward"], rows))
        if "bare_bfloat16" in res:
            print(f"\npipeline bf16 / bare bf16 forward: **{res['bare_bfloat16'] / res['pipeline_bfloat16']:.2f}**")
        else:
            print("\nbf16 compute: not run on this CPU (no native bf16; pass --bf16 to force it)")
        print("\n" + rss_line)
        if args.json:
            json.dump({**res, "audio_seconds": audio}, open(args.json, "w"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
