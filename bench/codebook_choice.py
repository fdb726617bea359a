"""Which codebook quantiser for the ≤16-byte storage modes: faiss's residual quantiser (beam widths 1, 4, 8) against its
additive LSQ, a product quantiser of the same bytes, and icefall's own quantiser (multi-quantization, trained by
gradient descent; measured when installed: pip install multi-quantization), on rows with a layer's structure (a
low-rank part and some noise, standardised) or on a teacher's own cached layer (--cache).

    python -m bench.codebook_choice [--books 8] [--cache PATH --layer K] [--mq-iters 10000] [--only NAME,...]

Prints, per quantiser: rel L2 on held-out rows, fit seconds, and encoding µs per row, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def rows(cache: str | None, layer: int, n: int = 20_000, dim: int = 256) -> np.ndarray:
    if cache:
        from store import open_cache

        c = open_cache(cache)
        x = np.concatenate([c.read(u, layer).astype(np.float32) for u in c.utterance_ids])[:n]
    else:
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((32, dim)).astype(np.float32)
        x = rng.standard_normal((n, 32)).astype(np.float32) @ basis + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return np.ascontiguousarray((x - x.mean(0)) / (x.std(0) + 1e-6), np.float32)


def rel(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean(np.linalg.norm(y - x, axis=1) / np.linalg.norm(x, axis=1)))


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--books", type=int, default=8)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--mq-iters", type=int, default=10_000, help="multi-quantization: iterations of each of its two phases "
                    "(its default 10,000, tuned for 256-wide rows in batches of 600)")
    ap.add_argument("--only", default="", help="comma-separated quantiser names to measure (the rows are the same every run)")
    args = ap.parse_args()
    x = rows(args.cache, args.layer)
    cut = int(0.8 * len(x))
    train, held = x[:cut][: 64 * 256], x[cut:]
    d, m = x.shape[1], args.books
    quantisers = {f"rq beam {b}": (lambda b=b: _rq(faiss, d, m, b)) for b in (1, 4, 8)}
    quantisers["lsq"] = lambda: faiss.LocalSearchQuantizer(d, m, 8)
    if d % m == 0:
        quantisers["pq (same bytes)"] = lambda: faiss.ProductQuantizer(d, m, 8)
    print(f"{len(train)} fitting rows, {len(held)} held out, {d} wide, {m} bytes a row ({'cache' if args.cache else 'low-rank + noise'})")
    try:
        import multi_quantization  # noqa: F401

        quantisers["multi-quantization"] = lambda: _Icefall(d, m, args.mq_iters)
    except ImportError:
        print("multi-quantization is not installed: pip install multi-quantization to measure icefall's quantiser too")
    for name, make in quantisers.items():
        if args.only and name not in args.only.split(","):
            continue
        q = make()
        t = time.perf_counter()
        q.train(train)
        fit = time.perf_counter() - t
        t = time.perf_counter()
        codes = q.compute_codes(held)
        enc = (time.perf_counter() - t) / len(held) * 1e6
        print(f"{name:16} rel L2 {rel(q.decode(codes), held):.4f}   fit {fit:6.1f} s   encode {enc:7.1f} µs/row")


class _Icefall:
    """multi_quantization's QuantizerTrainer behind faiss's train / compute_codes / decode, trained as its docstring says:
    minibatches of 600 rows (a different draw each step), two phases of `iters` steps."""

    def __init__(self, d: int, m: int, iters: int):
        self.d, self.m, self.iters = d, m, iters

    def train(self, x: np.ndarray) -> None:
        import torch
        from multi_quantization import QuantizerTrainer

        rng = np.random.default_rng(0)
        trainer = QuantizerTrainer(dim=self.d, bytes_per_frame=self.m, device=torch.device("cpu"), phase_one_iters=self.iters,
                                   phase_two_iters=self.iters)
        while not trainer.done():
            trainer.step(torch.from_numpy(x[rng.integers(0, len(x), 600)]))
        self.quantizer = trainer.get_quantizer()

    def compute_codes(self, x: np.ndarray):
        import torch

        with torch.no_grad():
            return self.quantizer.encode(torch.from_numpy(x))

    def decode(self, codes) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.quantizer.decode(codes).numpy()


def _rq(faiss, d: int, m: int, beam: int):
    q = faiss.ResidualQuantizer(d, m, 8)
    q.max_beam_size = beam
    q.cp.min_points_per_centroid = 1
    return q


if __name__ == "__main__":
    main()
