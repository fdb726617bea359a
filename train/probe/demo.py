"""`make probe-demo`: is the demo's student any good? Teacher, distilled student and a randomly initialised student of the
same design, each cached once with every layer (`extract-features --layers all`), then the same SUPERB-style probe on
each, side by side with `compare-runs`. The task is SUPERB's keyword spotting in miniature: ten Speech Commands words
spoken by espeak-ng in four voices at three rates (120 utterances; label: the word), numpy-made word-like chirps when
espeak-ng is missing.

Uses (and, if missing, first makes) `make demo`'s teacher and student under demo-out/.
"""

from __future__ import annotations

import os
import subprocess
import time

from train.demo import HUB_TEACHER, OUT, hub_reachable, run, script, small_teacher
from train.demo import main as demo_main
from train.pretraining.speech_corpus import KEYWORDS, keyword_corpus


def random_student(run_dir: str, out: str) -> str:
    """The distilled student's design with random weights: the baseline a probe must beat to credit distillation."""
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    HubertModel(HubertConfig.from_pretrained(os.path.join(run_dir, "student"))).save_pretrained(out)
    Wav2Vec2FeatureExtractor.from_pretrained(os.path.join(run_dir, "student")).save_pretrained(out)
    return out


def main() -> None:
    t0 = time.time()
    run_dir = os.path.join(OUT, "run")
    if not os.path.exists(os.path.join(run_dir, "student", "config.json")):
        print("probe-demo: no demo student yet, running make demo's pipeline first", flush=True)
        demo_main()
    corpus = os.path.join(OUT, "keywords")
    labels, kind = keyword_corpus(corpus)
    print(f"task: keyword spotting, {len(KEYWORDS)} words x 4 voices x 3 rates ({kind})", flush=True)
    teacher = HUB_TEACHER if hub_reachable(HUB_TEACHER) else small_teacher(os.path.join(OUT, "small-hubert"))
    upstreams = {"teacher": teacher, "student": os.path.join(run_dir, "student"),
                 "random-student": random_student(run_dir, os.path.join(OUT, "random-student"))}
    probes = []
    for name, upstream in upstreams.items():
        cache = run(["extract-features", "--teacher", upstream, "--corpus", corpus, "--layers", "all", "--cache-dir",
                     os.path.join(OUT, "probe-caches"), "--quiet"])
        out = os.path.join(OUT, "probes", name)
        run(["probe-features", "--cache", cache, "--task", "classify", "--labels", labels, "--test-fraction", "0.25", "--out", out])
        probes.append(out)
    table = subprocess.run([script("compare-runs"), *probes], stdout=subprocess.PIPE, text=True, check=True).stdout
    print(f"\n{table}\ndone in {time.time() - t0:.0f} s: layers.png in each of {os.path.join(OUT, 'probes')}/*; the teacher here is "
          f"{'hubert-base' if teacher == HUB_TEACHER else 'a small random-weight HuBERT (no hub)'}, so read the gaps, not the values")


if __name__ == "__main__":
    main()
