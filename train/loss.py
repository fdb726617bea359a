"""DistilHuBERT's loss: mean L1 + mean(-log sigmoid(cos)), averaged over heads, padded frames masked out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_loss(pred: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred, target: [B, N, T, D]; frame_mask: [B, T] (1 = real frame).

    Returns (loss, per-layer L1 [N], per-layer cosine similarity [N]) — the last two detached.
    """
    pred, target = pred.float(), target.float()
    m = frame_mask.float()[:, None, :]  # [B, 1, T]
    n = m.sum().clamp(min=1)
    l1 = ((pred - target).abs().mean(-1) * m).sum((0, 2)) / n
    cos = F.cosine_similarity(pred, target, dim=-1)
    cos_term = (-F.logsigmoid(cos) * m).sum((0, 2)) / n
    loss = l1.mean() + cos_term.mean()
    return loss, l1.detach(), ((cos * m).sum((0, 2)) / n).detach()
