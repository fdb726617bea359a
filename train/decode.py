"""Compact targets decoded on the training device: the loader ships int8/int4 codes and per-row scales (a half or
a quarter of fp16's bytes through pinned memory and PCIe) and the step turns them into floats where it runs."""

from __future__ import annotations

import torch

from store import Cache
from store.modes import ResidualMode


class DeviceDecoder:
    """codes [B, N, F, W] and scales [B, N, F] (int8/int4; None for pq and rvq) -> targets [B, N, F, D] float32, as
    store.modes.IntMode.decode, ProductMode.decode and ResidualMode.decode."""

    def __init__(self, cache: Cache, layers: list[int], device: torch.device):
        self.bits = getattr(cache.mode, "bits", None)
        self.dim = cache.spec["dim"]
        self.codebooks, self.summed = None, isinstance(cache.mode, ResidualMode)  # rvq: the books' codewords add up
        if cache.mode.codebooks:  # [N, M, 256, SUB] (pq: a group each), [N, BOOKS, 256, D] (rvq: the whole vector each)
            self.codebooks = torch.stack([torch.from_numpy(cache.stats[k]["codebooks"]) for k in layers]).to(device)
        self.mean = torch.stack([torch.from_numpy(cache.stats[k]["mean"]) for k in layers]).to(device)[None, :, None, :]
        self.std = torch.stack([torch.from_numpy(cache.stats[k]["std"]) for k in layers]).to(device)[None, :, None, :]

    def __call__(self, codes: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        if self.codebooks is not None:  # each code picks its group's centroid
            n, m = self.codebooks.shape[:2]
            layer = torch.arange(n, device=codes.device)[None, :, None, None]
            group = torch.arange(m, device=codes.device)[None, None, None, :]
            z = self.codebooks[layer, group, codes.long()]  # [B, N, F, M, SUB]
            return (z.sum(-2) if self.summed else z.flatten(-2)) * self.std + self.mean
        if self.bits == 4:  # two signed nibbles per byte, low first
            lo, hi = (codes & 0x0F).to(torch.int16), (codes >> 4).to(torch.int16)
            both = torch.stack([lo, hi], dim=-1).flatten(-2)[..., : self.dim]
            values = torch.where(both > 7, both - 16, both).float()
        else:
            values = codes.float()
        return values * scales.unsqueeze(-1) * self.std + self.mean
