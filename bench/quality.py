"""The quality benchmark: DistilHuBERT's headline in miniature, with a teacher that knows speech, made here.

    python -m bench.quality [--out quality-out] [--student-steps 600]      (make quality; ~70 min on 2 CPU cores)

1. espeak-ng corpora (train.speech_corpus): 1 h of random word sequences in 24 voices for the teacher and the
   distillation; 20 other voices x (24 sentences + 22 keywords) for the probes.
2. The teacher: a 6-layer HuBERT pretrained by masked prediction of MFCC k-means clusters (train.pretrain, ~25 min).
3. Its layers 2, 4, 6 cached once in float16, converted to int8, int4 and pq (each timed: the bytes criterion).
4. Students, same design, steps and seed: distilled from each cache (initialised from the teacher, DistilHuBERT's way),
   one distilled from a random init, and the random-init student itself, never trained.
5. Every upstream cached with --layers all on the probe corpus, then SUPERB-style probes with train/dev/test splits:
   speaker id (20 voices), keyword spotting (10 words + unknown), phone recognition (CTC, PER), with 95% intervals;
   log-mel (80 bins) as the no-upstream baseline.

Every stage is kept under --out and reused by the next run (the teacher, caches, runs, probes); the table goes to
OUT/quality.md and OUT/quality.json, and its goals are judged, with their numbers, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

TASKS = {"speaker id": ("classify", "speakers.tsv", "accuracy"), "keywords": ("classify", "keywords.tsv", "accuracy"),
         "phones": ("ctc", "phones-closed.txt", "PER")}
MODES = ("float16", "int8", "int4", "pq")


def say(line: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def corpora(out: str) -> tuple[str, str]:
    from train.speech_corpus import make_corpus

    pre, probe = os.path.join(out, "speech", "pretrain"), os.path.join(out, "speech", "probe")
    say(f"pretraining corpus: {make_corpus(pre, 24, 60, 1)['hours']} h")
    made = make_corpus(probe, 20, 24, 2, keywords_per_speaker=22)
    say(f"probe corpus: {made['hours']} h, {made['utterances']} utterances")
    with open(os.path.join(probe, "speakers.tsv")) as f:  # speaker id on the sentences (keyword clips are too short)
        rows = [line for line in f if "/u" in line.split("\t")[0]]
    with open(os.path.join(probe, "sentence-speakers.tsv"), "w") as f:
        f.writelines(rows)
    closed_phone_set(os.path.join(probe, "phones.txt"), os.path.join(probe, "phones-closed.txt"))
    return pre, probe


def closed_phone_set(src: str, dst: str, least: int = 20) -> None:
    """espeak's phonemes with its variant mark (#) folded into the base phone, and phones heard fewer than `least` times
    in the whole corpus dropped: a symbol that only the test split holds cannot be learned (probe-features refuses it)."""
    from collections import Counter

    with open(src) as f:
        rows = [line.split() for line in f if line.strip()]
    rows = [(r[0], [t.rstrip("#") or t for t in r[1:]]) for r in rows]
    counts = Counter(t for _, ts in rows for t in ts)
    with open(dst, "w") as f:
        f.writelines(f"{uid} {' '.join(t for t in ts if counts[t] >= least)}\n" for uid, ts in rows)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def made_before(cache_path: str, since: float) -> bool:
    """Whether a cache's parts were all committed before `since` (this run found it made: its time is not this run's)."""
    commits = os.path.join(cache_path, "commits")
    stamps = [os.stat(os.path.join(commits, n)).st_mtime for n in os.listdir(commits) if n.endswith(".json")]
    return bool(stamps) and max(stamps) < since


def record_made(made_path: str, made: dict, mode: str, fn) -> dict:
    """Run one stage (fn() -> the cache's path), and keep its time in made.json as soon as it ends: a run killed after it
    must not report the next run's no-op as its cost. A cache found made with no time kept says so (None), never 0.4 s."""
    t = time.time()
    cache = fn()
    if mode not in made:
        made[mode] = None if made_before(cache, t) else round(time.time() - t, 1)
        with open(made_path + ".tmp", "w") as f:
            json.dump(made, f)
        os.replace(made_path + ".tmp", made_path)
    return {"path": cache, "seconds": made[mode]}


def distillation_caches(teacher: str, corpus: str, cache_dir: str) -> dict[str, dict]:
    """The float16 cache of layers 2, 4, 6 and its conversions, each timed when made (kept in cache_dir/made.json: a
    second run finds them made and must not report its no-op as their cost)."""
    from extract import ExtractConfig, extract_features
    from store import open_cache
    from store.convert import convert_cache

    os.makedirs(cache_dir, exist_ok=True)
    made_path = os.path.join(cache_dir, "made.json")
    made = json.load(open(made_path)) if os.path.exists(made_path) else {}
    cfg = ExtractConfig(teacher, corpus, layers=(2, 4, 6), cache_dir=cache_dir, progress=False)
    caches = {"float16": record_made(made_path, made, "float16", lambda: extract_features(cfg).path)}
    source = caches["float16"]["path"]
    for mode in MODES[1:]:
        caches[mode] = record_made(made_path, made, mode, lambda m=mode: convert_cache(source, m, cache_dir=cache_dir).path)
    for mode, c in caches.items():
        cache = open_cache(c["path"])
        c["bytes"] = cache.bytes  # targets and float32 audio, as written
        c["target_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for part in cache.part_dirs.values()
                                for d, _, files in os.walk(os.path.join(c["path"], "parts", part)) for f in files
                                if os.path.relpath(d, os.path.join(c["path"], "parts", part)).startswith("layer_"))
        c["target_bytes_per_frame"] = round(c["target_bytes"] / max(cache.total_frames, 1), 1)
        c["fidelity"] = {k: round(v["rel_l2_mean"], 4) for k, v in ((cache.provenance.get("fidelity") or {}).get("layers") or {}).items()}
        say(f"cache {mode}: {c['target_bytes'] / 1e6:.1f} MB of targets ({c['bytes'] / 1e6:.1f} MB with audio), made in "
            f"{c['seconds'] if c['seconds'] is not None else 'an unknown time (an earlier run)'} s")
    return caches


def student(cache: str, out: str, steps: int, init: str = "teacher") -> str:
    from train.config import TrainConfig
    from train.loop import train

    if not os.path.exists(os.path.join(out, "eval.json")):
        _, seconds = timed(train, TrainConfig(cache=cache, out=out, steps=steps, batch_size=8, max_crop_samples=48_000, lr=5e-4,
                                              init=init, seed=0, log_interval=50, eval_interval=steps, checkpoint_interval=steps,
                                              num_workers=1, valid_fraction=0.02, progress=False))
        say(f"student {os.path.basename(out)}: {steps} steps in {seconds:.0f} s")
    return os.path.join(out, "student")


def upstream_speed(model_dir: str) -> float:
    """ms of CPU forward per second of audio (10 s of noise, best of 3 after a warm-up)."""
    import torch
    from transformers import AutoModel

    from bench.common import best_of

    model = AutoModel.from_pretrained(model_dir).eval()
    wave = torch.from_numpy((0.1 * np.random.default_rng(0).standard_normal(160_000)).astype(np.float32))[None]
    with torch.no_grad():
        return best_of(lambda: model(wave)) * 100  # per audio second, in ms


def probe_all(name: str, cache: str, probe_corpus: str, out: str, features: str = "cache") -> dict:
    from train.probe import ProbeConfig, probe_features

    found = {}
    for task, (kind, labels, _) in TASKS.items():
        where = os.path.join(out, name.replace(" ", "_"), task.replace(" ", "_"))
        label_file = os.path.join(probe_corpus, "sentence-speakers.tsv" if task == "speaker id" else labels)
        if os.path.exists(os.path.join(where, "result.json")):
            with open(os.path.join(where, "result.json")) as f:
                found[task] = json.load(f)
            continue
        cfg = ProbeConfig(cache=cache, task=kind, labels=label_file, out=where, features=features,
                          tokens="phone" if kind == "ctc" else "char", epochs=60, patience=8, seed=0)
        found[task], seconds = timed(probe_features, cfg)
        r = found[task]
        say(f"probe {name} / {task}: {r['metric']} {r['value']:.3f} (epoch {r['best_epoch']}) in {seconds:.0f} s")
    return found


def cell(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def goals(rows: dict, caches: dict) -> list[str]:
    """The issue's goals, judged on the numbers (a missed goal is said with its number)."""
    per = {name: r["probes"]["phones"] for name, r in rows.items()}
    fp16, rand, teacher, mel = per["distilled (float16)"], per["random-init student"], per["teacher"], per["log-mel"]
    lines = []
    beats = fp16["ci95"][1] < rand["ci95"][0]
    lines.append(f"float16 student vs its random init on phones: PER {fp16['value']:.3f} vs {rand['value']:.3f}; intervals "
                 f"{'do not overlap: MET' if beats else 'overlap: NOT MET'}")
    margin_t, margin_s = mel["value"] - teacher["value"], mel["value"] - fp16["value"]
    kept = margin_s / margin_t if margin_t > 0 else float("nan")
    lines.append(f"teacher's margin over log-mel on phones: {margin_t:+.3f} PER; the float16 student keeps {margin_s:+.3f} "
                 f"({kept:.0%}): {'MET' if margin_t > 0 and kept > 0.5 else 'NOT MET'} (most = over half)")
    if margin_t <= 0:
        lines.append("the teacher does not beat log-mel on phones: the pretraining here did not learn enough for that (see pretrain.json)")
    lo, hi = fp16["ci95"]
    within = [m for m in MODES if lo <= per[f"distilled ({m})"]["value"] <= hi]
    smallest = min(within, key=lambda m: caches[m]["target_bytes"]) if within else None
    lines.append(f"smallest storage whose student's PER lies in the float16 student's interval [{lo:.3f}, {hi:.3f}]: "
                 + (f"{smallest} ({caches[smallest]['target_bytes'] / caches['float16']['target_bytes']:.2f}x float16's target bytes)"
                    if smallest else "none"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="quality-out")
    ap.add_argument("--student-steps", type=int, default=600)
    args = ap.parse_args()
    import torch

    from extract import ExtractConfig, extract_features
    from store import open_cache
    from train.pretrain import PretrainConfig, pretrain
    from train.probe import upstream_parameters
    from train.probe_demo import random_student

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    out = os.path.abspath(args.out)
    pre, probe = corpora(out)
    teacher = os.path.join(out, "teacher")
    record = pretrain(PretrainConfig(pre, teacher))
    say(f"teacher: {record['seconds']:.0f} s of pretraining; held-out masked cluster accuracy {record['masked_accuracy_held_out']}")
    caches = distillation_caches(teacher, pre, os.path.join(out, "caches"))
    runs = os.path.join(out, "runs")
    upstreams = {"teacher": teacher}
    for mode in MODES:
        upstreams[f"distilled ({mode})"] = student(caches[mode]["path"], os.path.join(runs, mode), args.student_steps)
    upstreams["distilled from random init (float16)"] = student(caches["float16"]["path"], os.path.join(runs, "float16-random-init"),
                                                               args.student_steps, init="random")
    upstreams["random-init student"] = random_student(os.path.join(runs, "float16"), os.path.join(out, "random-student"))
    rows: dict[str, dict] = {}
    probe_caches = os.path.join(out, "probe-caches")
    for name, model_dir in upstreams.items():
        s = extract_features(ExtractConfig(model_dir, probe, layers="all", cache_dir=probe_caches, progress=False))
        spec = open_cache(s.path).spec
        rows[name] = {"cache": s.path, "parameters": upstream_parameters(spec), "ms_per_audio_second": round(upstream_speed(model_dir), 2),
                      "probes": probe_all(name, s.path, probe, os.path.join(out, "probes"))}
    rows["log-mel"] = {"cache": rows["teacher"]["cache"], "parameters": 0, "ms_per_audio_second": None,
                       "probes": probe_all("log-mel", rows["teacher"]["cache"], probe, os.path.join(out, "probes"), features="logmel")}
    header = "| upstream | parameters | ms per audio s (CPU) | speaker id acc | keyword acc | phones PER |"
    table = [header, "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        speed = "-" if r["ms_per_audio_second"] is None else f"{r['ms_per_audio_second']:.1f}"
        table.append(f"| {name} | {r['parameters']:,} | {speed} | " + " | ".join(cell(r["probes"][t]) for t in TASKS) + " |")
    storage = ["| targets | target bytes on disk | per frame (3 layers) | with float32 audio | made in | rel L2 (layer 2/4/6) |",
               "|---|---|---|---|---|---|"]
    for mode, c in caches.items():
        took = "?" if c["seconds"] is None else c["seconds"]
        made = f"teacher run {took} s" if mode == "float16" else f"convert {took} s"
        storage.append(f"| {mode} | {c['target_bytes'] / 1e6:.1f} MB | {c['target_bytes_per_frame']} B | {c['bytes'] / 1e6:.1f} MB "
                       f"| {made} | "
                       f"{' / '.join(str(v) for v in c['fidelity'].values()) or '-'} |")
    judged = goals(rows, caches)
    report = "\n".join([*table, "", *storage, "", *(f"- {line}" for line in judged),
                        f"\n(teacher: {json.dumps(record['masked_accuracy_held_out'])} held-out masked cluster accuracy; "
                        f"{record['hours']} h of speech, {record['seconds']:.0f} s of pretraining)"])
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump({"rows": rows, "caches": caches, "goals": judged, "teacher": {k: v for k, v in record.items() if k != "log"}}, f,
                  indent=1)
    print(report)
    say(f"done in {time.time() - t0:.0f} s; {os.path.join(out, 'quality.md')}")


if __name__ == "__main__":
    main()
