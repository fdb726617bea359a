"""Compact caches side by side: bytes per audio second, error against exact targets, and crop-read speed per mode.

    python -m bench.compact_bench [--utterances 60]

One fp32 extraction (the demo's corpus: espeak-ng speech when installed) with a HuBERT-base-shaped teacher
(random weights: real HuBERT activations differ),
then `feature-cache convert` to every other mode, so each mode's error is measured against exact targets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from bench.common import hubert_base_teacher, machine, table

LAYERS = (4, 8, 12)
LIBRISPEECH_SECONDS = 960 * 3600


def _bytes(part_dir: str, prefix: str) -> int:
    """Bytes on disk of a part's arrays whose names start with `prefix` (layer_ or audio)."""
    return sum(os.path.getsize(os.path.join(d, f)) for name in os.listdir(part_dir) if name.startswith(prefix)
               for d, _, files in os.walk(os.path.join(part_dir, name)) for f in files)


def _crop_speed(cache, seconds: float = 3.0, crop: int = 780) -> float:
    rng = np.random.default_rng(0)
    ids, n, t0 = cache.utterance_ids, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        uid = ids[rng.integers(len(ids))]
        nf = cache.num_frames(uid)
        start = int(rng.integers(0, max(1, nf - crop)))
        for layer in LAYERS:
            cache.read(uid, layer, start, min(nf, start + crop)).astype(np.float32)
        n += min(nf, start + crop) - start
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=60)
    args = ap.parse_args()
    from extract import ExtractConfig, extract_features
    from store import open_cache
    from store.convert import convert_cache
    from train.demo import make_corpus

    tmp = tempfile.mkdtemp(prefix="compact-bench-")
    try:
        teacher = hubert_base_teacher(os.path.join(tmp, "teacher"))
        corpus = os.path.join(tmp, "corpus")
        kind = make_corpus(corpus, args.utterances)  # espeak-ng speech when installed: audio bytes like real speech
        src = open_cache(extract_features(ExtractConfig(teacher, corpus, layers=LAYERS, cache_dir=os.path.join(tmp, "k"),
                                                        storage_dtype="float32", device="cpu", progress=False)).path)
        audio_s = src.total_samples / 16000
        rows = []
        for storage, audio in [("float32", "float32"), ("float16", "float32"), ("bfloat16", "float32"), ("int8", "float32"),
                               ("int8", "int16"), ("int8", "flac"), ("int4", "flac"), ("int8", "none")]:
            cache = src if storage == "float32" else convert_cache(src.path, storage, audio)
            targets = sum(_bytes(os.path.join(cache.path, "parts", d), "layer_") for d in cache.part_dirs.values())
            audio_b = sum(_bytes(os.path.join(cache.path, "parts", d), "audio") for d in cache.part_dirs.values())  # audio, audio_flac
            if storage == "float32":
                err = "exact"
            else:
                from store.modes import fidelity

                held = src.utterance_ids[:16]
                m = fidelity(storage, cache.stats[12] if cache.stats else None, [src.read(u, 12) for u in held])
                err = f"{m['rel_l2_mean']:.4f} / {m['rel_l2_worst']:.4f} / {m['cos_min']:.5f}"
            per_s = (targets + audio_b) / audio_s
            rows.append([f"{storage} + {audio} audio", f"{targets / audio_s:,.0f}", f"{audio_b / audio_s:,.0f}", f"{per_s:,.0f}",
                         f"{per_s * LIBRISPEECH_SECONDS / 1e9:,.0f}", err, f"{_crop_speed(cache):,.0f}"])
        print(f"machine: {machine()}\ncommand: python -m bench.compact_bench --utterances {args.utterances}\n"
              f"teacher: HuBERT-base-shaped, random weights; layers 4,8,12; {len(src)} utterances ({kind}), {audio_s:.0f} s; "
              "codec blosc-zstd (default)\n")
        print(table(["mode", "target B/s", "audio B/s", "total B/s", "LibriSpeech 960 h, GB", "layer 12 rel L2 mean / worst / cos min",
                     "crop reads, frames/s (3 layers, 1 process)"], rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
