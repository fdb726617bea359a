"""Exact padded batches for conv speech encoders (DESIGN invariant 1); used by teacher and student.

Group-norm conv stacks (HuBERT/wav2vec2 Base) normalise the first conv's output over time, so
zero padding changes every frame (cosine ~0.975 on HuBERT-base shapes). We swap that GroupNorm
for one whose statistics cover each utterance's valid frames only; with the attention mask
passed too, every utterance in a padded batch gets exactly its unpadded features.

The valid lengths travel with the call, not on the module: a ContextVar is private to each thread
(and asyncio task), so two threads sharing one teacher (a dask worker with --nthreads > 1) can
never see each other's lengths. Whether a whole architecture is exact under padding is checked,
not assumed: see extract.probe.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from extract.known_teacher import conv_lengths  # torch-free, where a re-run without the teacher needs it too

# id(MaskedGroupNorm) -> valid frames per batch item, for the forward running in this thread
_VALID: ContextVar[dict[int, torch.Tensor]] = ContextVar("distilcache_valid_lengths", default={})  # noqa: B039 - never mutated


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics cover only each item's valid time steps (given by `valid_lengths`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        valid = _VALID.get().get(id(self))
        if valid is None:
            return super().forward(x)
        b, c, t = x.shape
        g = self.num_groups
        xf = x.float().view(b, g, c // g, t)
        mask = (torch.arange(t, device=x.device)[None, :] < valid[:, None]).view(b, 1, 1, t).float()
        n = (valid.float() * (c // g)).view(b, 1, 1, 1)
        mean = (xf * mask).sum((2, 3), keepdim=True) / n
        var = (((xf - mean) * mask) ** 2).sum((2, 3), keepdim=True) / n
        y = ((xf - mean) / torch.sqrt(var + self.eps)).view(b, c, t)
        if self.affine:
            y = y * self.weight.float()[None, :, None] + self.bias.float()[None, :, None]
        return y.to(x.dtype)


def install_masked_groupnorm(model: nn.Module) -> MaskedGroupNorm | None:
    """Swap the first conv layer's GroupNorm in place (same Parameters); returns it, or None for layer-norm stacks."""
    first = model.feature_extractor.conv_layers[0]
    old = getattr(first, "layer_norm", None)
    if isinstance(old, nn.GroupNorm) and not isinstance(old, MaskedGroupNorm):
        new = MaskedGroupNorm(old.num_groups, old.num_channels, eps=old.eps, affine=old.affine)
        if old.affine:
            new.weight, new.bias = old.weight, old.bias  # same Parameters: state_dict keys unchanged
        first.layer_norm = new
    norm = getattr(first, "layer_norm", None)
    return norm if isinstance(norm, MaskedGroupNorm) else None


@contextmanager
def valid_lengths(model: nn.Module, samples: torch.Tensor) -> Iterator[None]:
    """Within this block, and in this thread only, the model's masked GroupNorm sees each item's valid samples."""
    norm = getattr(model.feature_extractor.conv_layers[0], "layer_norm", None)
    if not isinstance(norm, MaskedGroupNorm):
        yield
        return
    cfg = model.config
    token = _VALID.set({**_VALID.get(), id(norm): conv_lengths(samples, cfg.conv_kernel[:1], cfg.conv_stride[:1])})
    try:
        yield
    finally:
        _VALID.reset(token)
