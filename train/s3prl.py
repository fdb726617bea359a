"""What `--recipe s3prl` (train.recipe) trains with: online training the way s3prl's distiller trains
(pretrain/distiller/*, optimizers.py), for A/B runs against the paper's own setup. Our default recipe differs on
purpose (docs/reproducing-distilhubert.md); this module holds only what s3prl does differently and torch does not provide:

- its batches: the corpus sorted by length (longest first), cut into consecutive groups, the group order shuffled;
- its optimizer: `Lamb(adam=True, correct_bias=True)`, an AdamW whose weight decay is scaled by the bias-corrected
  step size and whose eps is added to sqrt(v) before bias correction (torch.optim.AdamW does neither), with weight
  decay 0.01 on every parameter whose name lacks "bias" (norm scales included) and its warm-up/linear-decay schedule
  evaluated at the optimizer's own step t = 1, 2, ... (a step fp16's GradScaler skips does not advance it, as in s3prl,
  whose schedule lives in the optimizer too)
The teacher's forward is extract.Teacher.forward_as_s3prl; crops at any sample offset are train.data's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # s3prl's names; transformers' norms are lower-case, so decayed


def param_groups(model: torch.nn.Module, weight_decay: float = 0.01) -> list[dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not any(k in n for k in NO_DECAY)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(k in n for k in NO_DECAY)], "weight_decay": 0.0}]


def warmup_linear(step: int, total: int, warmup: float) -> float:
    """s3prl's WarmupLinearSchedule at optimizer step `step` (1-based)."""
    progress = step / total
    return progress / warmup if progress < warmup else max((progress - 1.0) / (warmup - 1.0), 0.0)


class S3prlAdamW(torch.optim.Optimizer):
    """s3prl's Lamb(adam=True, correct_bias=True): at its t-th step taken the lr is the group's lr x schedule(t)."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                 schedule: Callable[[int], float] = lambda t: 1.0):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.schedule = schedule

    def steps_taken(self) -> int:
        return max((int(s["step"]) for s in self.state.values() if "step" in s), default=0)

    def last_lr(self) -> float:
        """The lr of the last step taken (the first step's before any)."""
        return self.param_groups[0]["lr"] * self.schedule(max(1, self.steps_taken()))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                size = group["lr"] * self.schedule(state["step"]) * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-size)


class SortedGroups:
    """s3prl's batches: utterances sorted by length, longest first, in consecutive groups of `batch_size` (a last
    group of one is dropped); each epoch shuffles the groups' order (here by seed and epoch, so resume is exact)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        self.groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if self.groups and len(self.groups[-1]) == 1 and len(self.groups) > 1:
            self.groups.pop()
        self.seed = seed

    def from_step(self, step: int):
        e, offset = divmod(step, len(self.groups))
        while True:
            perm = np.random.default_rng([self.seed, e, 11]).permutation(len(self.groups))
            yield from ([(e, i) for i in self.groups[j]] for j in perm[offset:])
            e, offset = e + 1, 0
