"""Full-context vs crop-alone targets: how different are the teacher's features for the same frames when it hears
the whole utterance (our default cache) and when it hears only the 250,000-sample crop (the official recipe,
and `--segment-seconds 15.625` caches)?

    python -m bench.crop_context [--utterances 6] [--seconds 35]

Utterances of LibriSpeech's longest length (~35 s) are made by joining the demo corpus' espeak-ng speech;
crops of 250,000 samples are taken at the start, the middle and the end (at frame boundaries, as training
does). Per layer: cosine and relative L2 between the two views on the crop's frames, over all frames and
over the frames more than 2 s from the crop's edges. HuBERT-base-shaped teacher with random weights:
trained HuBERT attends differently, so read the numbers as a method and an order of magnitude, not as
HuBERT's own.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from bench.common import hubert_base_teacher, machine, table

LAYERS = (4, 8, 12)
CROP = 250_000
RATE, HOP = 16000, 320


def _long_utterances(corpus: str, n: int, seconds: float) -> list[np.ndarray]:
    from extract.audio import load_audio
    from extract.corpus import scan

    _, utts, _ = scan(corpus, RATE)
    waves = [load_audio(u.path, RATE) for u in utts]
    out, i = [], 0
    for _ in range(n):
        parts, total = [], 0
        while total < seconds * RATE:
            parts.append(waves[i % len(waves)])
            total += len(parts[-1])
            i += 1
        out.append(np.concatenate(parts)[: int(seconds * RATE)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=35.0)
    args = ap.parse_args()
    from extract import load_teacher
    from train.pretraining.speech_corpus import demo_corpus

    with tempfile.TemporaryDirectory() as tmp:
        kind = demo_corpus(os.path.join(tmp, "corpus"), 48)
        teacher = load_teacher(hubert_base_teacher(os.path.join(tmp, "hubert-base")), device="cpu")
        cos = {k: [] for k in LAYERS}
        inner = {k: [] for k in LAYERS}
        rel = {k: [] for k in LAYERS}
        for wave in _long_utterances(os.path.join(tmp, "corpus"), args.utterances, args.seconds):
            full = teacher.forward([wave], list(LAYERS))[0]
            last = (len(wave) - CROP) // HOP
            for k0 in (0, last // 2, last):  # crop starts in frames: start, middle, end
                alone = teacher.forward([wave[k0 * HOP : k0 * HOP + CROP]], list(LAYERS))[0]
                for k in LAYERS:
                    a, b = alone[k], full[k][k0 : k0 + len(alone[k])]
                    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                    edge = 2 * RATE // HOP
                    cos[k].append(c)
                    inner[k].append(c[edge:-edge])
                    rel[k].append(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1))
    rows = []
    for k in LAYERS:
        c, ci, r = np.concatenate(cos[k]), np.concatenate(inner[k]), np.concatenate(rel[k])
        rows.append([k, f"{c.mean():.4f}", f"{c.min():.4f}", f"{ci.mean():.4f}", f"{r.mean():.3f}", f"{r.max():.3f}"])
    print(f"machine: {machine()}")
    print(f"command: python -m bench.crop_context --utterances {args.utterances} --seconds {args.seconds:g}")
    print(f"audio: {kind}, joined into {args.utterances} utterances of {args.seconds:g} s; crops of {CROP} samples at the "
          "start, middle and end of each; HuBERT-base-shaped teacher, random weights\n")
    print(table(["layer", "cos mean", "cos min", "cos mean, > 2 s from the crop's edges", "rel L2 mean", "rel L2 max"], rows))


if __name__ == "__main__":
    main()
