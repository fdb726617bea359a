"""s3prl's online teacher, for `--recipe s3prl` A/B runs only (never for caches).

s3prl's distiller runs fairseq's HuBERT/wav2vec 2.0 in train mode on a zero-padded batch. Two of its behaviours are
not what transformers' modules do with the same weights, so they are reproduced here:

- dropout: the probabilities are fairseq's base pretraining config (hubert_base_librispeech.yaml,
  wav2vec2_base_librispeech.yaml: dropout_input 0.1 after the feature projection, dropout 0.1, attention_dropout 0.1,
  activation_dropout 0.0), not the transformers config's (facebook/hubert-base-ls960: 0.0 after the projection,
  0.1 after the FFN activation); layerdrop and SpecAugment off, as s3prl sets them;
- the padding mask: fairseq's `forward_padding_mask` groups the padded batch's samples into T equal runs of
  L_padded // T and calls a frame padding only when its whole run is, so an utterance of L samples keeps
  ceil(L / (L_padded // T)) frames (capped at T): one or two more than the conv formula transformers applies.
"""

from __future__ import annotations

import contextlib
import math
import re

import numpy as np
import torch
from torch import nn

from extract.errors import ExtractError
from extract.layers import capture_layers

# role -> fairseq's probability; the role of each transformers module is read from its name (the same in HuBERT,
# wav2vec2, WavLM and data2vec-audio). A dropout whose role is unknown is an error, never silently left as it was.
S3PRL_DROPOUT = {"projection": 0.1, "hidden": 0.1, "attention": 0.1, "activation": 0.0}
_ROLES = (("feature_projection.dropout", "projection"), ("feed_forward.intermediate_dropout", "activation"),
          ("feed_forward.output_dropout", "hidden"), ("encoder.layers.N.dropout", "hidden"), ("encoder.dropout", "hidden"))


def dropout_roles(model: nn.Module) -> dict[str, str]:
    """{module name: role} for every dropout in `model` (attention modules carry theirs as a float)."""
    roles = {}
    for name, module in model.named_modules():
        generic = re.sub(r"\.\d+(?=\.|$)", ".N", name)
        if isinstance(module, nn.Dropout):
            role = next((r for suffix, r in _ROLES if generic == suffix or generic.endswith("." + suffix)), None)
            if role is None:
                raise ExtractError(f"--recipe s3prl: {type(model).__name__} has dropout {name}, whose fairseq counterpart is "
                                 "unknown; s3prl's recipe supports HuBERT, wav2vec2, WavLM and data2vec-audio teachers")
            roles[name] = role
        elif isinstance(getattr(module, "dropout", None), float) and generic.endswith("attention"):
            roles[name] = "attention"
    return roles


@contextlib.contextmanager
def s3prl_dropout(model: nn.Module):
    """fairseq's dropout probabilities for the duration of the block; the model's own ones restored after."""
    modules = dict(model.named_modules())
    saved = {}
    for name, role in dropout_roles(model).items():
        module = modules[name]
        if isinstance(module, nn.Dropout):
            saved[name] = module.p
            module.p = S3PRL_DROPOUT[role]
        else:
            saved[name] = module.dropout
            module.dropout = S3PRL_DROPOUT[role]
    try:
        yield
    finally:
        for name, p in saved.items():
            if isinstance(modules[name], nn.Dropout):
                modules[name].p = p
            else:
                modules[name].dropout = p


def fairseq_frames(lengths: list[int], padded: int, frames_padded: int) -> list[int]:
    """The frames fairseq's padding mask counts as real for each length in a batch padded to `padded` samples."""
    run = padded // frames_padded
    return [min(frames_padded, math.ceil(n / run)) for n in lengths]


@torch.no_grad()
def forward_as_s3prl(teacher, waves: list[np.ndarray], layers: list[int]) -> torch.Tensor:
    """[B, N, T_padded, D] on the teacher's device, fp32: every frame of the padded length (s3prl's loss covers
    them all); dropout on, so each call differs."""
    batch, _, lens = teacher._padded(waves)
    padded = batch.shape[1]
    real = fairseq_frames(lens.tolist(), padded, teacher.num_frames(padded))
    # transformers derives its frame mask from the sample mask by the conv formula; a mask of window + (n - 1) * hop
    # samples is one the formula maps to exactly n frames (checked), so fairseq's count goes through unchanged
    mask = torch.zeros_like(batch, dtype=torch.long)
    for i, n in enumerate(real):
        samples = teacher.window + (n - 1) * teacher.hop
        if teacher.num_frames(samples) != n or samples > padded:
            raise RuntimeError(f"s3prl padding mask: {samples} samples give {teacher.num_frames(samples)} frames, not {n}")
        mask[i, :samples] = 1
    cfg = teacher.model.config
    saved = (cfg.layerdrop, getattr(cfg, "apply_spec_augment", True))
    cfg.layerdrop, cfg.apply_spec_augment = 0.0, False
    teacher.model.train()
    try:
        # no valid_lengths: the padding enters the first GroupNorm's statistics, as in s3prl's teacher
        with s3prl_dropout(teacher.model), capture_layers(layers) as hidden:
            teacher.model(batch.to(teacher.device), attention_mask=mask.to(teacher.device))
    finally:
        teacher.model.eval()
        cfg.layerdrop, cfg.apply_spec_augment = saved
    return torch.stack([hidden[k].float() for k in layers], dim=1)

