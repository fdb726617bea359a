"""The quality benchmark: can it tell students apart, and how many bytes does a target need?

    python -m bench.quality [--out quality-out] [--student-steps 600] [--seeds 3]      (make quality)
    python -m bench.quality --quick                 (a smoke run of every stage at toy sizes, ~10 min: not a result)

1. espeak-ng corpora (train.pretraining.speech_corpus): 1 h of random word sequences in 24 voices for the teacher and the
   distillation; 20 other voices (none of the first 24) x (24 sentences + 22 keywords) for the probes.
2. The teacher: a 6-layer HuBERT pretrained by masked prediction of MFCC k-means clusters (train.pretraining.pretrain, ~25 min).
3. Its layers 2, 4, 6 cached once in float16, converted to int8, int4, pq, rvq16 and rvq8 (each timed: the bytes
   criterion), and a positive control: the float16 targets shuffled across utterances (bench.damage).
4. Students, same design, steps and seed: distilled from each cache (initialised from the teacher, DistilHuBERT's way),
   from the damaged cache, from a random init, and from the rvq16/rvq8 codes by cross-entropy over each codebook
   (--loss codebook-ce, icefall's objective) beside regression to their decoded vectors; the controls: the
   teacher-initialised student at step 0, the random-init student never trained, the teacher truncated to the
   student's depth (its layers 0-2), log-mel.
5. Every upstream cached with --layers all on the probe corpus, then SUPERB-style probes over --seeds seeds: phones
   and characters (CTC: PER, CER; the content tasks that decide), speaker id and keywords (secondary: espeak voices
   differ in timbre, which log-mel carries). Every upstream is compared with the float16 student clip by clip
   (train.probe.paired: paired bootstrap; "as good as" = the difference's 95% interval within ±0.02 PER).

Every stage is kept under --out and reused by the next run. The probes go task by task, phones first for every upstream
in the order the goals need them (the float16 student, the damaged control, the step-0 copy, log-mel, the truncated
teacher, then rvq16 by both objectives, the whole teacher, rvq8 by both, pq, int4, int8), and OUT/quality.md and
OUT/quality.json are rewritten after each probe: a run stopped part-way still reports the goals its probes decide, with
their numbers, and names what is not measured yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

#: task -> (probe kind, label file in the probe corpus, tokens, metric); the content tasks first: they decide
TASKS = {"phones": ("ctc", "phones-closed.txt", "phone", "PER"), "characters": ("ctc", "text.txt", "char", "CER"),
         "speaker id": ("classify", "sentence-speakers.tsv", "char", "accuracy"),
         "keywords": ("classify", "keywords.tsv", "char", "accuracy")}
PRIMARY = ("phones", "characters")
MODES = ("float16", "int8", "int4", "pq", "rvq16", "rvq8")
CODED = ("rvq16", "rvq8")  # also trained by cross-entropy over their codes (train-student --loss codebook-ce)
REFERENCE = "distilled (float16)"
SIZES = dict(full=dict(pre=(24, 60), probe=(20, 24, 22), pretrain_steps=1600, ctc_epochs=200, classify_epochs=100, patience=20),
             quick=dict(pre=(4, 6), probe=(6, 6, 4), pretrain_steps=20, ctc_epochs=4, classify_epochs=4, patience=4))


def say(line: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def corpora(out: str, size: dict) -> tuple[str, str]:
    """The pretraining corpus and the probe corpus, whose voices are none of the pretraining's (espeak accent+variant)."""
    from train.pretraining.speech_corpus import make_corpus

    pre, probe = os.path.join(out, "speech", "pretrain"), os.path.join(out, "speech", "probe-new-voices")
    made_pre = make_corpus(pre, *size["pre"], 1)
    say(f"pretraining corpus: {made_pre['hours']} h")
    n, per, kw = size["probe"]
    made = make_corpus(probe, n, per, 2, keywords_per_speaker=kw, exclude_voices=tuple(s["voice"] for s in made_pre["speakers"]))
    say(f"probe corpus: {made['hours']} h, {made['utterances']} utterances, voices disjoint from the teacher's")
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
        from store.fs import write_json_atomic

        made[mode] = None if made_before(cache, t) else round(time.time() - t, 1)
        write_json_atomic(made_path, made)
    return {"path": cache, "seconds": made[mode]}


def distillation_cache(mode: str, teacher: str, corpus: str, cache_dir: str, source: str = "") -> dict:
    """The float16 cache of layers 2, 4, 6, or its conversion to `mode` from `source` (the float16 cache's path), timed
    when made (kept in cache_dir/made.json: a second run finds it made and must not report its no-op as its cost)."""
    from extract import ExtractConfig, extract_features
    from extract.forecast import row_bytes
    from store import open_cache
    from store.convert import convert_cache

    os.makedirs(cache_dir, exist_ok=True)
    made_path = os.path.join(cache_dir, "made.json")
    made = json.load(open(made_path)) if os.path.exists(made_path) else {}
    cfg = ExtractConfig(teacher, corpus, layers=(2, 4, 6), cache_dir=cache_dir, progress=False)
    if mode == "float16":
        c = record_made(made_path, made, "float16", lambda: extract_features(cfg).path)
    else:
        c = record_made(made_path, made, mode, lambda: convert_cache(source, mode, cache_dir=cache_dir).path)
    cache = open_cache(c["path"])
    c["bytes"] = cache.bytes  # targets and float32 audio, as written
    c["target_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for part in cache.part_dirs.values()
                            for d, _, files in os.walk(os.path.join(c["path"], "parts", part)) for f in files
                            if os.path.relpath(d, os.path.join(c["path"], "parts", part)).startswith("layer_"))
    c["target_bytes_per_frame"] = round(c["target_bytes"] / max(cache.total_frames, 1), 1)
    c["fidelity"] = {k: round(v["rel_l2_mean"], 4) for k, v in ((cache.provenance.get("fidelity") or {}).get("layers") or {}).items()}
    c["row_bytes"] = row_bytes(mode, cache.spec["dim"])
    say(f"cache {mode}: {c['target_bytes'] / 1e6:.1f} MB of targets ({c['bytes'] / 1e6:.1f} MB with audio), made in "
        f"{c['seconds'] if c['seconds'] is not None else 'an unknown time (an earlier run)'} s")
    return c


def student(cache: str, out: str, steps: int, init: str = "teacher", loss: str = "l1-cos") -> str:
    from train.config import TrainConfig
    from train.loop import train

    if not os.path.exists(os.path.join(out, "eval.json")):
        _, seconds = timed(train, TrainConfig(cache=cache, out=out, steps=steps, batch_size=8, max_crop_samples=48_000, lr=5e-4,
                                              init=init, seed=0, log_interval=50, eval_interval=max(steps, 1), loss=loss,
                                              checkpoint_interval=max(steps, 1),
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


def probe_one(name: str, task: str, cache: str, probe_corpus: str, out: str, size: dict, seeds: int,
              features: str = "cache", layers: tuple[int, ...] = ()) -> dict:
    """One task's probe of one upstream over `seeds` seeds (kept under out/<name>/<task>, reused)."""
    from train.probe.features import ProbeConfig, probe_features

    kind, labels, tokens, _ = TASKS[task]
    where = os.path.join(out, name.replace(" ", "_").replace("(", "").replace(")", ""), task.replace(" ", "_"))
    if os.path.exists(os.path.join(where, "result.json")):
        with open(os.path.join(where, "result.json")) as f:
            return json.load(f)
    epochs = size["ctc_epochs" if kind == "ctc" else "classify_epochs"]
    cfg = ProbeConfig(cache=cache, task=kind, labels=os.path.join(probe_corpus, labels), out=where, features=features,
                      tokens=tokens, layers=layers, epochs=epochs, patience=size["patience"], seed=0, seeds=seeds)
    r, seconds = timed(probe_features, cfg)
    say(f"probe {name} / {task}: {r['metric']} {r['value']:.3f} (seeds {r['value_range'][0]:.3f}-{r['value_range'][1]:.3f}, "
        f"epochs {[x['best_epoch'] for x in r['seeds']]}{', STILL IMPROVING AT THE CAP' if r['still_improving_at_cap'] else ''}) "
        f"in {seconds:.0f} s")
    return r


def cell(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def paired_with_reference(rows: dict) -> dict:
    """name -> task -> the paired difference (name - float16 student) and its verdict, on the primary tasks both have
    probed so far (the report is written after every probe: a partial run still says what it measured)."""
    from train.probe.paired import margin_for, paired_difference, per_clip, verdict

    out: dict[str, dict] = {}
    ref = rows.get(REFERENCE, {}).get("probes", {})
    for name, r in rows.items():
        for task in PRIMARY:
            if name == REFERENCE or task not in ref or task not in r["probes"]:
                continue
            this = r["probes"][task]
            d = paired_difference(per_clip(ref[task]), per_clip(this))
            m = margin_for(this["metric"])
            out.setdefault(name, {})[task] = {**d, "margin": m, "verdict": verdict(this["metric"], d, m)}
    return out


def as_good(d: dict) -> bool:
    """Equivalent within the margin (the paired interval inside ±margin, even if it excludes 0), or better."""
    lo, hi = d["ci95"]
    return -d["margin"] <= lo and hi <= d["margin"] or d["verdict"].startswith("better")


def goals(caches: dict, paired: dict) -> list[str]:
    """Issue 38's goals, judged on the paired numbers (a missed goal is said with its number; one not measured yet, so)."""
    lines = []

    def diff(name: str) -> str:
        d = paired[name]["phones"]
        return f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

    def measured(name: str) -> bool:
        return "phones" in paired.get(name, {})

    def judged(name: str, said: str, verdict) -> str:  # verdict(lo, hi) of the paired interval: the goal's words
        if "phones" not in paired.get(name, {}):
            return said + "not measured yet"
        return said + f"PER {diff(name)}: " + verdict(*paired[name]["phones"]["ci95"])

    lines.append(judged("distilled (damaged targets)",
                        "positive control (targets shuffled across utterances) vs the float16 student on phones: ",
                        lambda lo, _: "MET, the bench separates them" if lo > 0 else "NOT MET: the bench cannot separate a damaged target"))
    for control in ("teacher-initialised student at step 0", "log-mel"):
        lines.append(judged(control, f"float16 student beats {control} on phones (the control's PER minus the student's): ",
                            lambda lo, _: "MET" if lo > 0 else "NOT MET"))
    lines.append(judged("teacher truncated to the student's depth",
                        "truncated teacher (layers up to the student's depth) vs the float16 student on phones: ",
                        lambda lo, hi: "the student is better" if lo > 0 else "the student is worse" if hi < 0
                        else "equal within the interval"))
    trained = [(m, f"distilled ({m})") for m in MODES[1:]] + [(m, f"distilled ({m}, codebook-ce)") for m in CODED]
    equivalent = [(m, name) for m, name in trained if measured(name) and as_good(paired[name]["phones"])]
    smallest = min(equivalent, key=lambda e: caches[e[0]]["target_bytes"]) if equivalent else None
    unmeasured = [name for _, name in trained if not measured(name)]
    lines.append("smallest storage as good as float16 on phones (paired interval within ±0.02 PER, or better): "
                 + (f"{smallest[1]}, {caches[smallest[0]]['row_bytes']} B a frame a layer "
                    f"({'MET' if caches[smallest[0]]['row_bytes'] <= 16 else 'NOT MET'}: goal <= 16 B)" if smallest
                    else "none so far" if unmeasured else "none (NOT MET)")
                 + (f"; not measured yet: {', '.join(unmeasured)}" if unmeasured else ""))
    return lines


def librispeech_sizes() -> dict[str, float]:
    """--dry-run's target bytes of LibriSpeech-960 layers 4, 8, 12 (768 wide, 50 frames a second) per mode, in GB."""
    from extract.forecast import sizes

    frames = int(960.9 * 3600 * 50)
    return {m: round(b / 1e9, 1) for m, b in sizes(frames, 0, 3, 768)["targets"].items() if m in MODES}


def plan(out: str, teacher: str, cache, steps: int) -> dict[str, tuple]:
    """name -> (make: () -> the upstream's model dir, probe options), in the order the goals need them: the float16
    student, the positive control, the step-0 copy, log-mel and the truncated teacher first, then the codebook modes
    (16 B, the whole teacher, then 8 B a frame), pq, int4, int8, then the random-init controls. `cache(mode)` makes or
    finds a distillation cache."""
    from bench.damage import shuffled_cache
    from train.probe.demo import random_student

    runs = os.path.join(out, "runs")

    def distilled(mode: str, sub: str = "", n: int = steps, **kw):
        return lambda: student(cache(mode)["path"], os.path.join(runs, sub or mode), n, **kw)

    def student_depth() -> tuple[int, ...]:  # the student's hidden states: 0..its depth
        with open(os.path.join(distilled("float16")(), "config.json")) as f:
            return tuple(range(json.load(f)["num_hidden_layers"] + 1))

    found: dict[str, tuple] = {
        REFERENCE: (distilled("float16"), {}),
        "distilled (damaged targets)": (lambda: student(shuffled_cache(cache("float16")["path"]).path,
                                                        os.path.join(runs, "damaged"), steps), {}),
        "teacher-initialised student at step 0": (distilled("float16", "step-0", 0), {}),
        "log-mel": (lambda: teacher, {"features": "logmel"}),
        "teacher truncated to the student's depth": (lambda: teacher, {"layers": student_depth})}
    for mode in ("rvq16", "rvq8", "pq", "int4", "int8"):  # the goal's 16 B first; rvq8 (8 B) takes ~1 h to convert here
        found[f"distilled ({mode})"] = (distilled(mode), {})
        if mode in CODED:  # the codes as targets: cross-entropy over each codebook (icefall's objective), same steps
            found[f"distilled ({mode}, codebook-ce)"] = (distilled(mode, f"{mode}-ce", loss="codebook-ce"), {})
        if mode == "rvq16":  # the whole teacher: context, no goal rests on it
            found["teacher"] = (lambda: teacher, {})
    found["distilled from random init (float16)"] = (distilled("float16", "float16-random-init", init="random"), {})
    found["random-init student"] = (lambda: random_student(os.path.dirname(distilled("float16")()),
                                                           os.path.join(out, "random-student")), {})
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="quality-out")
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=3, help="probe seeds per cell")
    ap.add_argument("--quick", action="store_true", help="every stage at toy sizes: checks the pipeline, measures nothing")
    args = ap.parse_args()
    import torch

    from extract import ExtractConfig, extract_features
    from store import open_cache
    from train.pretraining.pretrain import PretrainConfig, pretrain
    from train.probe.features import upstream_parameters

    size = SIZES["quick" if args.quick else "full"]
    steps = 3 if args.quick else args.student_steps
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    out = os.path.abspath(args.out)
    pre, probe = corpora(out, size)
    teacher = os.path.join(out, "teacher")
    record = pretrain(PretrainConfig(pre, teacher, steps=size["pretrain_steps"]))
    say(f"teacher: {record['seconds']:.0f} s of pretraining; held-out masked cluster accuracy {record['masked_accuracy_held_out']}")
    caches: dict[str, dict] = {}

    def cache(mode: str) -> dict:
        if mode not in caches:
            source = "" if mode == "float16" else cache("float16")["path"]
            caches[mode] = distillation_cache(mode, teacher, pre, os.path.join(out, "caches"), source)
        return caches[mode]

    rows: dict[str, dict] = {}
    probe_caches, probes = os.path.join(out, "probe-caches"), os.path.join(out, "probes")
    # task by task, the deciding one first, every upstream's probe of it before the next task: the report written after
    # each probe holds the goals as soon as their upstreams are probed on phones, however far a run gets
    for task in TASKS:
        for name, (make, options) in plan(out, teacher, cache, steps).items():
            if name not in rows:
                model_dir = make()
                s = extract_features(ExtractConfig(model_dir, probe, layers="all", cache_dir=probe_caches, progress=False))
                whole = not options  # log-mel and the truncated teacher have no parameters or speed of their own
                rows[name] = {"cache": s.path, "probes": {},
                              "parameters": upstream_parameters(open_cache(s.path).spec) if whole else
                              0 if options.get("features") == "logmel" else None,
                              "ms_per_audio_second": round(upstream_speed(model_dir), 2) if whole else None}
            opts = {k: v() if callable(v) else v for k, v in options.items()}
            rows[name]["probes"][task] = probe_one(name, task, rows[name]["cache"], probe, probes, size, args.seeds, **opts)
            write_report(out, rows, caches, record, args.seeds)
    print(open(os.path.join(out, "quality.md")).read())
    say(f"done in {time.time() - t0:.0f} s; {os.path.join(out, 'quality.md')}")


def write_report(out: str, rows: dict, caches: dict, record: dict, seeds: int) -> None:
    from store.fs import write_bytes, write_json_atomic

    paired = paired_with_reference(rows)
    write_bytes(os.path.join(out, "quality.md"), (render(rows, caches, paired, record, seeds) + "\n").encode(), durable=False)
    write_json_atomic(os.path.join(out, "quality.json"),
                      {"rows": rows, "caches": caches, "paired": paired, "goals": goals(caches, paired),
                       "librispeech_960_target_gb": librispeech_sizes(),
                       "teacher": {k: v for k, v in record.items() if k != "log"}})


def render(rows: dict, caches: dict, paired: dict, record: dict, seeds: int) -> str:
    header = "| upstream | parameters | ms per audio s (CPU) | " + " | ".join(f"{t} {v[3]}" for t, v in TASKS.items()) + " |"
    table = [f"Probes: {seeds} seeds per cell, value [pooled 95% interval over clips].", "", header,
             "|---" * (3 + len(TASKS)) + "|"]
    for name, r in rows.items():
        speed = "-" if r["ms_per_audio_second"] is None else f"{r['ms_per_audio_second']:.1f}"
        params = "-" if r["parameters"] is None else f"{r['parameters']:,}"
        table.append(f"| {name} | {params} | {speed} | " + " | ".join(cell(r["probes"][t]) if t in r["probes"] else "-"
                                                                     for t in TASKS) + " |")
    versus = ["", "Paired with the float16 student, clip by clip (difference, 95% interval, verdict):", "",
              "| upstream | " + " | ".join(PRIMARY) + " |", "|---" * (1 + len(PRIMARY)) + "|"]
    for name, by_task in paired.items():
        versus.append(f"| {name} | " + " | ".join(f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['verdict']}"
                                                 if (d := by_task.get(t)) else "-" for t in PRIMARY) + " |")
    gb = librispeech_sizes()
    storage = ["", "| targets | B a frame a layer | target bytes on disk (here) | LibriSpeech-960, layers 4,8,12 | made in "
               "| rel L2 (layer 2/4/6) |", "|---|---|---|---|---|---|"]
    for mode, c in caches.items():
        took = "?" if c["seconds"] is None else c["seconds"]
        made = f"teacher run {took} s" if mode == "float16" else f"convert {took} s"
        storage.append(f"| {mode} | {c['row_bytes']} | {c['target_bytes'] / 1e6:.1f} MB | {gb[mode]} GB | {made} | "
                       f"{' / '.join(str(v) for v in c['fidelity'].values()) or '-'} |")
    judged = goals(caches, paired)
    return "\n".join([*table, *versus, *storage, "", *(f"- {line}" for line in judged),
                      f"\n(teacher: {json.dumps(record['masked_accuracy_held_out'])} held-out masked cluster accuracy; "
                      f"{record['hours']} h of speech, {record['seconds']:.0f} s of pretraining)"])


if __name__ == "__main__":
    main()
