"""--audio flac: one part's 49 FLAC files made durable one fsync at a time as written, with one syncfs at commit, or
with an fsync of each of our own files at commit (batched), alone and beside a concurrent writer on the same filesystem
(a checkpoint, another extraction: syncfs waits for its dirty data too).

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
from store.audio_modes import flac_bytes

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

    def batched(d: str) -> None:
        names = [f"{d}/{i}.flac" for i in range(49)]
        for n in names:
            fs.write_bytes(n, blob, durable=False)
        fs.fsync_files(names, d)

    ways = {"fsync per file as written": per_file, "one syncfs per part": per_part, "fsync of our files at commit": batched}
    for busy in (False, True):
        results: dict[str, list[float]] = {label: [] for label in ways}
        writer = _concurrent_writer(root) if busy else None
        try:
            for r in range(args.rounds):
                for label, fn in ways.items():
                    d = os.path.join(root, f"{busy}-{r}-{list(ways).index(label)}")
                    os.makedirs(d)
                    t = time.perf_counter()
                    fn(d)
                    results[label].append(time.perf_counter() - t)
        finally:
            if writer:
                writer.terminate()
                writer.wait()
        print("beside a concurrent writer (64 MB of dirty data at a time, another process):" if busy else "alone:")
        for label, v in results.items():
            print(f"  {label}: {min(v) * 1000:.0f}-{max(v) * 1000:.0f} ms per 49-file part; "
                  f"{min(v) * PARTS / 60:.1f}-{max(v) * PARTS / 60:.1f} min over {PARTS} parts")
    shutil.rmtree(root)


def _concurrent_writer(root: str):
    """Another process on the same filesystem writing without fsync, as a checkpoint or a second extraction does."""
    import subprocess
    import sys

    code = ("import os,sys\nblob=os.urandom(64<<20)\ni=0\nwhile True:\n"
            "    p=os.path.join(sys.argv[1],f'other-{i%4}')\n    open(p,'wb').write(blob)\n    i+=1\n")
    proc = subprocess.Popen([sys.executable, "-c", code, root])
    time.sleep(2)  # dirty pages pile up
    return proc


if __name__ == "__main__":
    main()
