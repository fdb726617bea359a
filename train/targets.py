"""Target sources: where a batch's targets come from, chosen once before the loop.

Each source is one small class with one method, `targets(batch) -> Targets`, registered by name like the storage
modes (store.modes) and corpus readers (extract.corpora) are:

- `cache`: the targets the loader shipped, exact floats or compact codes decoded on the training device;
- `teacher`: the teacher run online on the batch's crops, exact (eval mode, no grad), padded like cached targets;
- `s3prl-teacher`: s3prl's online teacher (train-mode dropout as s3prl's, every padded frame counted: extract/s3prl.py).

Adding a source is one class here with `@register("name")`; train.recipe chooses which one a run uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from train.data import collate


class Targets(NamedTuple):
    values: torch.Tensor  # [B, N, F, D] float32 on the training device
    frames: torch.Tensor  # [B]: the real frames of each row (the loss's mask)
    counted_from: torch.Tensor  # [B] samples: what the student's frame count must come from (the crops, or s3prl's padding)


SOURCES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        cls.name = name
        SOURCES[name] = cls
        return cls

    return add


def make_source(name: str, **kw) -> TargetSource:
    if name not in SOURCES:
        raise ValueError(f"target source {name!r}: choose from {', '.join(SOURCES)}")
    return SOURCES[name](**kw)


class TargetSource:
    name = ""

    def targets(self, batch: dict) -> Targets:
        raise NotImplementedError


@register("cache")
class CachedTargets(TargetSource):
    """What train.data.CachedCrops shipped: `targets` (floats), or `codes` (+ `scales`) that `decoder` turns into floats
    on the device (train.decode.DeviceDecoder; None for caches of float targets)."""

    def __init__(self, device: torch.device, decoder=None, **_):
        self.device, self.decoder = device, decoder

    def targets(self, batch: dict) -> Targets:
        if "codes" in batch:
            scales = batch["scales"].to(self.device, non_blocking=True) if "scales" in batch else None
            values = self.decoder(batch["codes"].to(self.device, non_blocking=True), scales)
        else:
            values = batch["targets"].to(self.device, non_blocking=True)
        return Targets(values, batch["frames"].to(self.device), batch["lengths"].to(self.device))


@register("teacher")
class TeacherTargets(TargetSource):
    """The teacher on this batch's crops, each exactly as if run alone (extract.Teacher.forward), padded like a cache's."""

    def __init__(self, device: torch.device, teacher, layers: list[int], **_):
        self.device, self.teacher, self.layers = device, teacher, list(layers)

    def targets(self, batch: dict) -> Targets:
        padded = teacher_batch(self.teacher, batch, self.layers)
        return Targets(padded["targets"].to(self.device), padded["frames"].to(self.device), batch["lengths"].to(self.device))


def teacher_batch(teacher, batch: dict, layers: list[int]) -> dict:
    """The batch as a cache would have shipped it, with the teacher's targets of its crops (exact, eval mode, no grad)."""
    waves = [batch["wave"][i, : int(n)].numpy() for i, n in enumerate(batch["lengths"])]
    feats = teacher.forward(waves, layers)
    return collate([(torch.from_numpy(w), torch.from_numpy(np.stack([f[k] for k in layers]))) for w, f in zip(waves, feats, strict=True)])


@register("s3prl-teacher")
class S3prlTeacherTargets(TargetSource):
    """s3prl's teacher: dropout on, the padded batch, and a loss over every padded frame (so the student's frames are
    counted from the padded length too)."""

    def __init__(self, device: torch.device, teacher, layers: list[int], num_frames: Callable, **_):
        self.device, self.teacher, self.layers, self.num_frames = device, teacher, list(layers), num_frames

    def targets(self, batch: dict) -> Targets:
        values = self.teacher.forward_as_s3prl([batch["wave"][i, : int(n)].numpy() for i, n in enumerate(batch["lengths"])],
                                               self.layers)
        padded = torch.full_like(batch["lengths"], batch["wave"].shape[1]).to(self.device)
        return Targets(values.to(self.device), self.num_frames(padded), padded)
