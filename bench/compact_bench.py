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


def _crop_speed_at(path: str, seconds: float = 3.0) -> float:
    from store import open_cache

    return _crop_speed(open_cache(path), seconds)


def _crop_speed_4(cache) -> float:
    """Frames/s of 4 reader processes together (as 4 DataLoader workers would read)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        return sum(pool.map(_crop_speed_at, [cache.path] * 4))


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


def entropy_rows(cache) -> list[list]:
    """What lossless coders add on top of int8 codes: zstd alone, and blosc with byte or bit shuffle (measured, not stored)."""
    import numcodecs

    codes = np.concatenate([cache.read_stored(u, 12)[""] for u in cache.utterance_ids])
    raw = codes.nbytes / len(codes)
    blosc = numcodecs.Blosc
    coders = {"none": None, "zstd 3 (--codec zstd)": numcodecs.Zstd(level=3),
              "blosc zstd 3, byte shuffle (the default codec)": blosc("zstd", 3, blosc.SHUFFLE, blocksize=4096 * 768),
              "blosc zstd 3, bit shuffle": blosc("zstd", 3, blosc.BITSHUFFLE, blocksize=4096 * 768),
              "zstd 19": numcodecs.Zstd(level=19)}
    rows = []
    for name, coder in coders.items():
        size = codes.nbytes if coder is None else sum(len(coder.encode(np.ascontiguousarray(codes[i : i + 4096])))
                                                      for i in range(0, len(codes), 4096))
        rows.append([name, f"{size / len(codes):.1f}", f"{size / codes.nbytes:.3f}" if coder else f"1 ({raw:.0f} B)"])
    return rows


def pca_int4_rows(src) -> list[list]:
    """Does rotating each layer onto its principal axes (fitted on the sample) lower int4's error? Measured here only."""
    from store.fidelity import stats_sample
    from store.modes import TARGET_MODES, fit_stats

    fit, held = stats_sample(src.utterance_ids)
    held = held or fit
    x_fit = np.concatenate([src.read(u, 12) for u in fit]).astype(np.float32)
    x = np.concatenate([src.read(u, 12) for u in held]).astype(np.float32)
    stats = fit_stats([x_fit])
    z_fit = (x_fit - stats["mean"]) / stats["std"]
    _, _, vt = np.linalg.svd(z_fit - z_fit.mean(0), full_matrices=False)  # rows of vt: principal axes
    mode = TARGET_MODES["int4"]

    def err(y):
        rel = np.linalg.norm(y - x, axis=1) / np.linalg.norm(x, axis=1)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        return [f"{rel.mean():.4f}", f"{rel.max():.4f}", f"{cos.min():.5f}"]

    plain = mode.decode(mode.encode(x, stats), stats)
    z = (x - stats["mean"]) / stats["std"]
    rotated = z @ vt.T  # decorrelated channels, most energy first
    rstats = fit_stats([z_fit @ vt.T])
    back = mode.decode(mode.encode(rotated, rstats), rstats) @ vt
    return [["per-channel + per-row (today)", *err(plain)],
            ["PCA rotation, then per-channel + per-row", *err(back * stats["std"] + stats["mean"])]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=60)
    args = ap.parse_args()
    from extract import ExtractConfig, extract_features
    from store import open_cache
    from store.convert import convert_cache
    from train.pretraining.speech_corpus import demo_corpus

    tmp = tempfile.mkdtemp(prefix="compact-bench-")
    try:
        teacher = hubert_base_teacher(os.path.join(tmp, "teacher"))
        corpus = os.path.join(tmp, "corpus")
        kind = demo_corpus(corpus, args.utterances)  # espeak-ng speech when installed: audio bytes like real speech
        src = open_cache(extract_features(ExtractConfig(teacher, corpus, layers=LAYERS, cache_dir=os.path.join(tmp, "k"),
                                                        storage_dtype="float32", device="cpu", progress=False)).path)
        audio_s = src.total_samples / 16000
        rows = []
        for storage, audio in [("float32", "float32"), ("float16", "float32"), ("bfloat16", "float32"), ("int8", "float32"),
                               ("int8", "int16"), ("int8", "flac"), ("int4", "flac"), ("pq", "flac"), ("int8", "none")]:
            cache = src if storage == "float32" else convert_cache(src.path, storage, audio)
            targets = sum(_bytes(os.path.join(cache.path, "parts", d), "layer_") for d in cache.part_dirs.values())
            audio_b = sum(_bytes(os.path.join(cache.path, "parts", d), "audio") for d in cache.part_dirs.values())  # audio, audio_flac
            if storage == "float32":
                err = "exact"
            else:
                from store.fidelity import fidelity

                held = src.utterance_ids[:16]
                m = fidelity(storage, cache.stats[12] if cache.stats else None, [src.read(u, 12) for u in held])
                err = f"{m['rel_l2_mean']:.4f} / {m['rel_l2_worst']:.4f} / {m['cos_min']:.5f}"
            per_s = (targets + audio_b) / audio_s
            if (storage, audio) == ("int8", "float32"):
                int8_cache = cache
            rows.append([f"{storage} + {audio} audio", f"{targets / audio_s:,.0f}", f"{audio_b / audio_s:,.0f}", f"{per_s:,.0f}",
                         f"{per_s * LIBRISPEECH_SECONDS / 1e9:,.0f}", err, f"{_crop_speed(cache):,.0f}",
                         f"{_crop_speed_4(cache):,.0f}"])
        print(f"machine: {machine()}\ncommand: python -m bench.compact_bench --utterances {args.utterances}\n"
              f"teacher: HuBERT-base-shaped, random weights; layers 4,8,12; {len(src)} utterances ({kind}), {audio_s:.0f} s; "
              "codec blosc-zstd (default)\n")
        print(table(["mode", "target B/s", "audio B/s", "total B/s", "LibriSpeech 960 h, GB", "layer 12 rel L2 mean / worst / cos min",
                     "crop reads, frames/s (3 layers, 1 process)", "4 processes"], rows))
        print("\nLossless coding of the int8 codes (layer 12, all utterances), bytes per layer-frame (codes only; +4 B scale):\n")
        print(table(["codec", "B / layer-frame", "÷ raw int8"], entropy_rows(int8_cache)))
        print("\nint4 with a per-layer rotation (PCA of the standardised fitting sample) before quantising, layer 12, "
              "held-out utterances:\n")
        print(table(["int4 variant", "rel L2 mean", "rel L2 worst", "cos min"], pca_int4_rows(src)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
