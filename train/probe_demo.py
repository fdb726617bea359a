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

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # SUPERB KS's ten commands


def make_keywords(root: str) -> tuple[str, str]:
    """(labels TSV, what the audio is): VOICE/WORD-RATE.wav, label WORD."""
    import shutil as sh

    import numpy as np
    import soundfile as sf

    labels = os.path.join(os.path.dirname(root), "keywords.tsv")
    espeak = sh.which("espeak-ng")
    if not (os.path.isdir(root) and os.listdir(root)):
        rng = np.random.default_rng(0)
        for v, voice in enumerate(("en", "en-us", "en-gb", "en-sc")):
            os.makedirs(os.path.join(root, f"v{v}"), exist_ok=True)
            for w, word in enumerate(WORDS):
                for rate in (130, 160, 190):
                    path = os.path.join(root, f"v{v}", f"{word}-{rate}.wav")
                    if espeak:
                        subprocess.run([espeak, "-v", voice, "-s", str(rate), "-w", path, word], check=True, capture_output=True)
                        continue
                    t = np.arange(int(16000 * 0.5 * 160 / rate)) / 16000  # a word: its own two-formant chirp, voice-shifted
                    f = (200 + 60 * w) * (1 + 0.1 * v) * (1 + 0.5 * t * (w % 3 - 1))
                    x = np.sin(2 * np.pi * np.cumsum(f) / 16000) + 0.5 * np.sin(2 * np.pi * np.cumsum(f * (2 + w % 4)) / 16000)
                    sf.write(path, (0.2 * x * np.hanning(len(t)) + 0.003 * rng.standard_normal(len(t))).astype(np.float32), 16000)
    with open(labels, "w") as f:
        for v in sorted(os.listdir(root)):
            for name in sorted(os.listdir(os.path.join(root, v))):
                f.write(f"{v}/{os.path.splitext(name)[0]}\t{name.split('-')[0]}\n")
    return labels, "espeak-ng speech" if espeak else "numpy-made chirps (install espeak-ng for speech)"


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
    labels, kind = make_keywords(corpus)
    print(f"task: keyword spotting, {len(WORDS)} words x 4 voices x 3 rates ({kind})", flush=True)
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
