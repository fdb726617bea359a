"""Store benchmark: write MB/s, random 780-frame 3-layer crops (1 and 4 reader processes), bytes/frame per codec.

    python -m bench.store_bench [--frames 200000]

Targets are real teacher activations where we have them: a HuBERT-base-shaped model with random
weights over numpy-made voiced audio (no hub here); real HuBERT activations compress a little
differently (REFERENCE.md: zstd 0.92, shuffle+zstd 0.85 of raw fp16).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time

import numpy as np

from bench.common import hubert_base_teacher, machine, table
from store import TARGETS_VERSION, Layout, PartWriter, create_cache, open_cache
from train.pretraining.speech_corpus import voiced_corpus

CROP = 780  # frames in a 250,000-sample crop


def activations(tmp: str, seconds: float = 120.0) -> np.ndarray:
    """[frames, 768] fp32 layer activations of a HuBERT-base-shaped teacher, for codec measurements."""
    from extract import load_teacher
    from extract.audio import load_audio

    teacher = load_teacher(hubert_base_teacher(os.path.join(tmp, "teacher"), layers=8), device="cpu")
    corpus = voiced_corpus(os.path.join(tmp, "corpus"), n=int(seconds // 7) + 1)
    waves = [load_audio(os.path.join(d, f), 16000) for d, _, fs in os.walk(corpus) for f in fs][: int(seconds // 7) + 1]
    return np.concatenate([teacher.forward([w], [8])[0][8] for w in waves])


def build(root: str, codec: str, feats: np.ndarray, frames: int, utt_frames: int = 600) -> tuple[str, float]:
    """A 3-layer cache of `frames` frames tiled from `feats`; returns (path, seconds spent writing)."""
    spec = {"format_version": TARGETS_VERSION, "teacher": {"digest": "bench", "config": {}}, "layers": [4, 8, 12], "dim": 768,
            "compute_dtype": "float32", "storage_dtype": "float16", "preprocessing": {"sample_rate": 16000, "codec": codec},
            "frame": {"window": 400, "hop": 320}}
    layout = Layout(codec=codec)
    path = create_cache(root, spec, layout=layout)
    t = time.perf_counter()
    per_part = 60_000
    done, part, u = 0, 0, 0
    while done < frames:
        w = PartWriter(path, f"p{part:06d}", [4, 8, 12], 768, "float16", layout)
        for _ in range(per_part // utt_frames):
            s = (u * 97) % (len(feats) - utt_frames)
            x = feats[s : s + utt_frames]
            w.add(f"u{u:06d}", {4: x, 8: x[::-1], 12: -x}, np.zeros(400 + 320 * (utt_frames - 1), np.float32))
            u, done = u + 1, done + utt_frames
        w.commit()
        part += 1
    return path, time.perf_counter() - t


def _reader(path: str, seconds: float, seed: int, q) -> None:
    cache = open_cache(path)
    rng = np.random.default_rng(seed)
    ids = cache.utterance_ids
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        uid = ids[rng.integers(len(ids))]
        nf = cache.num_frames(uid)
        start = int(rng.integers(0, max(1, nf - CROP)))
        for layer in (4, 8, 12):
            cache.read(uid, layer, start, min(nf, start + CROP))
        n += min(nf, start + CROP) - start
    q.put(n / (time.perf_counter() - t0))


def readers(path: str, procs: int, seconds: float = 5.0) -> float:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=_reader, args=(path, seconds, i, q)) for i in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return sum(q.get() for _ in ps)


def zarr_python_crops(path: str, seconds: float = 3.0) -> float:
    """The same crops through zarr-python's own sharded reader, for comparison with store/chunks.py."""
    import zarr

    cache = open_cache(path)
    part = os.path.join(path, "parts", cache.part_dirs["p000000"])  # the attempt directory the marker names
    arrays = {k: zarr.open_array(os.path.join(part, f"layer_{k}"), mode="r") for k in (4, 8, 12)}
    rows = arrays[4].shape[0]
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s = int(rng.integers(0, rows - CROP))
        for a in arrays.values():
            a[s : s + CROP]
        n += CROP
    del cache
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=180_000, help="frames per cache (50 per audio second)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="distilcache-bench-")
    try:
        feats = activations(tmp)
        rows, crops = [], []
        for codec in ("none", "zstd", "blosc-zstd"):
            path, secs = build(os.path.join(tmp, codec), codec, feats, args.frames)
            cache = open_cache(path)
            on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(path, "parts"))
                          for f in fs if "layer_" in d)
            raw = cache.total_frames * 3 * 768 * 2
            rows.append([codec, f"{on_disk / cache.total_frames / 3:.0f}", f"{on_disk / raw:.3f}", f"{raw / secs / 1e6:.0f}"])
            crops.append([codec, f"{readers(path, 1):,.0f}", f"{readers(path, 4):,.0f}", f"{zarr_python_crops(path):,.0f}"])
        print(f"machine: {machine()}\ncommand: python -m bench.store_bench --frames {args.frames}\n")
        print(table(["codec", "bytes/frame/layer (fp16 raw: 1536)", "ratio to raw fp16", "write MB/s (raw fp16)"], rows))
        print()
        print(table(["codec", "3-layer frames/s, 1 reader", "4 readers", "1 reader via zarr-python"], crops))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
