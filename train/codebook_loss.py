"""--loss codebook-ce: the student predicts a codebook cache's codes, cross-entropy over each codebook.

icefall trains on HuBERT targets kept as 8 codes a frame this way (multi_quantization's JointCodebookLoss): a linear
map to 256 logits per codebook and a cross-entropy per codebook, instead of regressing the decoded vector. Here the
logits come from the prediction heads' output (one Linear per target layer), so the student and its exported heads
are those of every other run; what the logits expect the vector to be (each book's codewords weighted by their
probabilities, decoded as store.modes does) is what held-out loss is measured on, the same L1 + cos as every run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CodePredictor(nn.Module):
    """[B, N, T, D] head outputs -> [B, N, T, M, 256] logits, one Linear per target layer; `expected` maps logits
    back to vectors. The codebooks, mean and std are the cache's statistics (buffers: a checkpoint keeps them)."""

    def __init__(self, codebooks: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, summed: bool, target_dim: int):
        super().__init__()
        n, self.books, self.size = codebooks.shape[:3]  # [N, M, 256, W]: rvq W = D (summed), pq W = D / M (concatenated)
        self.summed = summed
        self.logits = nn.ModuleList(nn.Linear(target_dim, self.books * self.size) for _ in range(n))
        self.register_buffer("codebooks", codebooks.float())
        self.register_buffer("mean", mean.float()[None, :, None, :])  # [1, N, 1, D]
        self.register_buffer("std", std.float()[None, :, None, :])

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        b, n, t, _ = pred.shape
        return torch.stack([head(pred[:, i]) for i, head in enumerate(self.logits)], dim=1).view(b, n, t, self.books, self.size)

    def expected(self, logits: torch.Tensor) -> torch.Tensor:
        """The vector the logits expect: sum over books (rvq) or concatenation of groups (pq) of the probability-weighted
        codewords, unstandardised."""
        z = torch.einsum("bntmk,nmkw->bntmw", logits.float().softmax(-1), self.codebooks)
        return (z.sum(-2) if self.summed else z.flatten(-2)) * self.std + self.mean


def codebook_ce(logits: torch.Tensor, codes: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, N, T, M, 256], codes [B, N, T, M], frame_mask [B, T] (1 = real frame) -> (loss, per-layer CE [N]):
    the mean over real frames of each codebook's cross-entropy, averaged over codebooks, then over layers."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), codes.long().flatten(), reduction="none").view(codes.shape)
    m = frame_mask.float()[:, None, :]  # [B, 1, T]
    per_layer = (ce.mean(-1) * m).sum((0, 2)) / m.sum().clamp(min=1)
    return per_layer.mean(), per_layer.detach()


def code_predictor(cache, layers: list[int], target_dim: int) -> CodePredictor:
    """The predictor for a codebook cache's statistics (what train.decode.DeviceDecoder decodes with)."""
    from store.modes import ResidualMode

    stats = [cache.stats[k] for k in layers]
    return CodePredictor(torch.stack([torch.from_numpy(s["codebooks"]) for s in stats]),
                         torch.stack([torch.from_numpy(s["mean"]) for s in stats]),
                         torch.stack([torch.from_numpy(s["std"]) for s in stats]),
                         isinstance(cache.mode, ResidualMode), target_dim)
