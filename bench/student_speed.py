"""The paper's size/speed table, measured: the teacher and every student preset, side by side on one device in one run.

    python -m bench.student_speed [--seconds 10 --batch 8 --rounds 3 --device auto]

HuBERT-base shapes (random weights: speed and size do not depend on them). For each model: parameters (the encoder,
as exported; heads are for training only), inference wall time per audio second at batch 1 and batched (`--batch`
utterances of `--seconds` each), fp32, no grad; rounds interleave the models so the machine's noise hits all alike,
and the table shows the median and range. Peak memory is the resident memory one batched forward adds on top of
the model and its input (CPU: Linux's peak-RSS mark, reset just before; CUDA: peak allocated), in a fresh process
per model.
DistilHuBERT's claim: 75% smaller and 73% faster than HuBERT-base.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench.common import machine

MEMORY = """
import json, sys, torch
sys.path.insert(0, ".")
from bench.student_speed import build
def status(key):  # kB in /proc/self/status
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key))) * 1024
name, seconds, batch, device = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = build(name).to(device).eval()
x = torch.randn(batch, int(seconds * 16000), device=device) * 0.1
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
else:
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak-RSS mark (Linux), so VmHWM is this forward's peak
before = status("VmRSS:")
with torch.no_grad():
    model(x)
peak = torch.cuda.max_memory_allocated() if device == "cuda" else status("VmHWM:") - before
print(json.dumps({"forward": peak, "weights": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


def teacher_config() -> dict:
    from transformers import HubertConfig

    return HubertConfig().to_dict()  # HuBERT-base: 12 layers, 768 wide


def build(name: str):
    """'teacher' (HuBERT-base) or a student preset's encoder, as train-student builds and exports it."""
    import torch
    from transformers import HubertConfig, HubertModel

    from train.design import resolve
    from train.model import student_config

    torch.manual_seed(0)
    if name == "teacher":
        return HubertModel(HubertConfig())
    return HubertModel(student_config(teacher_config(), design=resolve(name, 0, 0, 0, 0, "", teacher_config())))


def _seconds(model, x) -> float:
    import torch

    with torch.no_grad():
        t = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t


def main() -> None:
    import torch

    from extract.teacher import resolve_device
    from train.design import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    names = ["teacher", *PRESETS]
    models = {n: build(n).to(device).eval() for n in names}
    one = torch.randn(1, int(args.seconds * 16000), device=device) * 0.1
    many = torch.randn(args.batch, int(args.seconds * 16000), device=device) * 0.1
    for m in models.values():  # warm-up
        _seconds(m, one)
    times: dict[str, dict[str, list[float]]] = {n: {"1": [], "batched": []} for n in names}
    for _ in range(args.rounds):
        for n, m in models.items():
            times[n]["1"].append(_seconds(m, one) / args.seconds)
            times[n]["batched"].append(_seconds(m, many) / (args.seconds * args.batch))
    memory = {}
    for n in names:
        done = subprocess.run([sys.executable, "-c", MEMORY, n, str(args.seconds), str(args.batch), device.type],
                              capture_output=True, text=True, check=True)
        memory[n] = json.loads(done.stdout.strip().splitlines()[-1])["forward"]
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    t_med = {n: statistics.median(times[n]["1"]) for n in names}
    b_med = {n: statistics.median(times[n]["batched"]) for n in names}
    print(f"machine: {machine()}")
    print(f"command: python -m bench.student_speed --seconds {args.seconds:g} --batch {args.batch} --rounds {args.rounds} "
          f"--device {args.device}")
    print("| model | parameters | vs teacher | ms per audio s, batch 1 (median, range) | faster | "
          f"ms per audio s, batch {args.batch} | faster | peak memory (batch {args.batch}) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        r1, rb = times[n]["1"], times[n]["batched"]
        print(f"| {n} | {params[n] / 1e6:.2f}M | {1 - params[n] / params['teacher']:.0%} smaller | "
              f"{t_med[n] * 1e3:.1f} ({min(r1) * 1e3:.1f}-{max(r1) * 1e3:.1f}) | {1 - t_med[n] / t_med['teacher']:.0%} | "
              f"{b_med[n] * 1e3:.1f} ({min(rb) * 1e3:.1f}-{max(rb) * 1e3:.1f}) | {1 - b_med[n] / b_med['teacher']:.0%} | "
              f"{memory[n] / 2**20:.0f} MiB |")
    print(json.dumps({"parameters": params, "s_per_audio_s_batch1": t_med, "s_per_audio_s_batched": b_med, "peak_bytes": memory}))


if __name__ == "__main__":
    main()
