"""--audio flac: one part's 49 FLAC files made durable one fsync at a time (before) or with one syncfs at commit (now).

    python -m bench.flac_durable [--rounds 6] [--dir DIR]

Interleaved rounds on the same disk; prints the range per part and what it comes to over LibriSpeech's 5,740 parts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from store import fs
from store.modes import flac_bytes

PARTS = 5_740  # LibriSpeech 960 h in 600 s parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir; use the disk your caches live on)")
    args = ap.parse_args()
    blob = flac_bytes((np.random.default_rng(0).standard_normal(196_000) * 3000).astype(np.int16), 16000)  # 12.2 s
    root = tempfile.mkdtemp(dir=args.dir)

    def per_file(d: str) -> None:
        for i in range(49):
            fs.write_bytes(f"{d}/{i}.flac", blob)

    def per_part(d: str) -> None:
        names = [f"{d}/{i}.flac" for i in range(49)]
        for n in names:
            fs.write_bytes(n, blob, durable=False)
        fs.make_durable(names, d)

    results: dict[str, list[float]] = {"fsync per file (before)": [], "one syncfs per part (now)": []}
    try:
        for r in range(args.rounds):
            for label, fn in zip(results, (per_file, per_part), strict=True):
                d = os.path.join(root, f"{r}-{len(results[label])}-{label[:3]}")
                os.makedirs(d)
                t = time.perf_counter()
                fn(d)
                results[label].append(time.perf_counter() - t)
    finally:
        shutil.rmtree(root)
    for label, v in results.items():
        print(f"{label}: {min(v) * 1000:.0f}-{max(v) * 1000:.0f} ms per 49-file part; "
              f"{min(v) * PARTS / 60:.1f}-{max(v) * PARTS / 60:.1f} min over {PARTS} parts")


if __name__ == "__main__":
    main()
