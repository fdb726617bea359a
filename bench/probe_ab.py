"""Is the student any good, and which target storage is good enough? One probe task, every upstream, side by side.

    python -m bench.probe_ab [--steps 150 --demo-out demo-out]

The task: make probe-demo's keyword spotting (ten Speech Commands words, four espeak voices, three rates; numpy-made
chirps without espeak-ng); the label is the word, so the answer is known. Students are distilled on make demo's
48-utterance corpus, then every upstream is cached over the keywords and probed the same way (probe-features'
classify head: softmax-weighted layers, mean-pool, linear; hash split by recording, 25% test; 95% bootstrap interval):
- the teacher (the demo's: hubert-base when the hub is reachable, else a small random-weight HuBERT);
- students distilled from its float16 cache and from int8, int4 and pq copies of it (same steps, same seed);
- a student of the same design with random weights (what distillation must beat);
- a log-mel baseline (`probe-features --features logmel`: 80 bins, 25 ms / 20 ms; no upstream at all).
The criterion for lossy storage that matters: the smallest storage whose student probes as well as the float16
one (within the bootstrap interval).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from bench.common import ab_args, demo_inputs, machine


def main() -> None:
    args = ab_args(__doc__)
    from extract import ExtractConfig, extract_features
    from store import open_cache
    from store.convert import convert_cache
    from train.config import TrainConfig
    from train.loop import train
    from train.probe.features import ProbeConfig, probe_features

    corpus, kind, teacher = demo_inputs(args.demo_out)
    tmp = tempfile.mkdtemp(prefix="distilcache-probe-ab-")
    try:
        from train.pretraining.speech_corpus import keyword_corpus

        keywords = os.path.join(tmp, "keywords")
        labels, task_kind = keyword_corpus(keywords)
        layers = (4, 8, 12) if teacher.startswith("facebook/") else (2, 4, 6)  # the demo's targets
        fp16 = extract_features(ExtractConfig(teacher, corpus, layers=layers, cache_dir=os.path.join(tmp, "k"), progress=False)).path
        targets = {"float16": fp16, **{m: convert_cache(fp16, m, cache_dir=os.path.join(tmp, "k")).path for m in ("int8", "int4", "pq")}}
        upstreams = {"teacher": teacher}
        for storage, cache in targets.items():
            out = os.path.join(tmp, f"run-{storage}")
            train(TrainConfig(cache=cache, out=out, steps=args.steps, batch_size=8, max_crop_samples=32000, num_workers=1,
                              valid_fraction=0.1, eval_interval=10**6, checkpoint_interval=10**6, progress=False))
            upstreams[f"student ({storage} targets)"] = os.path.join(out, "student")
        random_dir = os.path.join(tmp, "random-student")
        from train.probe.demo import random_student

        upstreams["student, random weights"] = random_student(os.path.join(tmp, "run-float16"), random_dir)
        results = {}
        probe = dict(task="classify", labels=labels, test_fraction=0.25)
        for name, upstream in upstreams.items():
            cache = extract_features(ExtractConfig(upstream, keywords, layers="all", cache_dir=os.path.join(tmp, "all"), progress=False))
            results[name] = probe_features(ProbeConfig(cache=cache.path, out=os.path.join(tmp, "p", name.replace(" ", "_")), **probe))
        first = open_cache(extract_features(ExtractConfig(teacher, keywords, layers=layers, cache_dir=os.path.join(tmp, "kw"),
                                                          progress=False)).path)  # its audio, for the log-mel baseline
        results["log-mel baseline"] = probe_features(ProbeConfig(cache=first.path, out=os.path.join(tmp, "p", "logmel"),
                                                                 features="logmel", **probe))
        print(f"machine: {machine()}")
        print(f"command: python -m bench.probe_ab --steps {args.steps}  (distilled on: {kind}; probe task: {task_kind}; "
              f"teacher: {teacher})")
        print("| upstream | parameters | keyword accuracy (95% interval) | chance |\n|---|---|---|---|")
        for name, r in results.items():
            params = r["upstream"].get("parameters") if name != "log-mel baseline" else 0
            lo, hi = r["ci95"]
            print(f"| {name} | {params / 1e6 if params else 0:.2f}M | {r['value']:.3f} ({lo:.3f}-{hi:.3f}) | {r['chance']:.3f} |")
        print(json.dumps({k: {"value": v["value"], "ci95": v["ci95"]} for k, v in results.items()}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
