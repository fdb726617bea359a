"""Recipes: how a student is trained, as plain data plus a few functions, chosen once before the loop.

A recipe says which precision `--precision auto` means on CUDA, where targets come from when no cache is given
(train.targets), whether padding enters the student's first GroupNorm, and builds the optimizer, the lr of each
step and the batch sampler. `distilcache` (ours, docs/reproducing-distilhubert.md) and `s3prl` (s3prl's distiller,
train/s3prl.py) are two instances; adding one is one more instance in RECIPES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from train import s3prl
from train.config import RECIPE_NAMES
from train.data import BucketBatches

if TYPE_CHECKING:
    from train.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    cuda_precision: str  # what --precision auto means on CUDA (fp32 elsewhere)
    online_source: str  # train.targets source without --cache
    padding_enters_groupnorm: bool  # s3prl lets padded samples into the student's first GroupNorm
    optimizer: Callable[[torch.nn.Module, TrainConfig], torch.optim.Optimizer]
    lr_at: Callable[[torch.optim.Optimizer, TrainConfig, int], float]  # the lr of 0-based step s
    sets_lr: bool  # the loop sets lr_at(step) before each step (False: the optimizer schedules itself)
    batches: Callable[[object, TrainConfig, int, int], Iterator[list]]  # (dataset, cfg, first step, ranks) -> global batches
    without_cuda: str | None = None  # said when --precision auto cannot give cuda_precision

    def precision(self, asked: str, device: torch.device) -> str:
        return asked if asked != "auto" else self.cuda_precision if device.type == "cuda" else "fp32"


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and norms (1-d) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_then_linear(cfg: TrainConfig, s: int) -> float:
    """Linear warm-up over warmup_fraction of the steps, then linear decay to 0 (REFERENCE.md)."""
    warm = max(1, int(cfg.warmup_fraction * cfg.steps))
    return cfg.lr * (s + 1) / warm if s < warm else cfg.lr * max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))


DISTILCACHE = Recipe(
    name="distilcache",
    cuda_precision="bf16",
    online_source="teacher",
    padding_enters_groupnorm=False,
    optimizer=lambda model, cfg: torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps),
    lr_at=lambda optimizer, cfg, s: warmup_then_linear(cfg, s),
    sets_lr=True,
    batches=lambda data, cfg, step, world: BucketBatches(data.lengths(), cfg.batch_size, cfg.seed, min_batch=world).from_step(step),
)

S3PRL = Recipe(
    name="s3prl",
    cuda_precision="fp16",
    online_source="s3prl-teacher",
    padding_enters_groupnorm=True,
    optimizer=lambda model, cfg: s3prl.S3prlAdamW(s3prl.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                                  eps=cfg.eps, schedule=lambda t: s3prl.warmup_linear(t, cfg.steps, cfg.warmup_fraction)),
    lr_at=lambda optimizer, cfg, s: optimizer.last_lr(),
    sets_lr=False,
    batches=lambda data, cfg, step, world: s3prl.SortedGroups(data.full_lengths(), cfg.batch_size, cfg.seed).from_step(step),
    without_cuda="recipe s3prl: s3prl trains in fp16, which needs CUDA; training in fp32 here",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DISTILCACHE, S3PRL)}
if tuple(RECIPES) != RECIPE_NAMES:  # a recipe added here is named in train.config too, which validates --recipe
    raise ImportError(f"train.recipe defines {tuple(RECIPES)}, train.config.RECIPE_NAMES says {RECIPE_NAMES}")
