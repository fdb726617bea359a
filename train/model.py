"""The DistilHuBERT student: a 2-layer transformers HubertModel plus one prediction head per target.

The encoder is a plain HubertModel so the export loads with one line
(`HubertModel.from_pretrained(run/student)`); the heads are only for training and saved apart.
"""

from __future__ import annotations

import torch
from torch import nn

from extract.exact import install_masked_groupnorm, valid_lengths

# REFERENCE.md: what the published ntu-spml/distilhubert changes from its HuBERT-Base teacher.
STUDENT_OVERRIDES = {
    "num_hidden_layers": 2,
    "feat_proj_layer_norm": False,  # no LayerNorm before the 512->768 projection
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
    "conv_bias": False,
    "layerdrop": 0.0,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "hidden_dropout": 0.1,
    "feat_proj_dropout": 0.0,
    "mask_time_prob": 0.0,  # no SpecAugment, so no masked_spec_embed: 23,491,200 parameters
    "mask_feature_prob": 0.0,
}


def student_config(teacher_config: dict, dropout: float = 0.1):
    """The student's HubertConfig, derived from the teacher's (sizes, conv stack, pos-conv)."""
    from transformers import HubertConfig

    keep = {k: v for k, v in teacher_config.items() if k not in ("model_type", "architectures", "num_hidden_layers")}
    drop = {"attention_dropout": dropout, "activation_dropout": dropout, "hidden_dropout": dropout}
    cfg = HubertConfig(**{**keep, **STUDENT_OVERRIDES, **drop})
    cfg.architectures = ["HubertModel"]
    return cfg


class GradMultiply(torch.autograd.Function):
    """Identity forward, scaled gradient: the CNN learns at 0.1x (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class PredictionHeads(nn.Module):
    """Linear(D -> D*N) -> GELU -> one Linear(D -> D) per target layer (s3prl's distiller heads)."""

    def __init__(self, dim: int, n_targets: int):
        super().__init__()
        self.n = n_targets
        self.proj = nn.Linear(dim, dim * n_targets)
        self.heads = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_targets))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, N, T, D]
        b, t, d = h.shape
        x = nn.functional.gelu(self.proj(h)).view(b, t, self.n, d)
        return torch.stack([head(x[:, :, i]) for i, head in enumerate(self.heads)], dim=1)


class Student(nn.Module):
    def __init__(self, config, n_targets: int, feature_grad_mult: float = 0.1):
        super().__init__()
        from transformers import HubertModel

        self.encoder = HubertModel(config)
        install_masked_groupnorm(self.encoder)  # padded batches see what each utterance alone would
        self.heads = PredictionHeads(config.hidden_size, n_targets)
        self.feature_grad_mult = feature_grad_mult
        if feature_grad_mult != 1.0:
            self.encoder.feature_extractor.register_forward_hook(self._scale_cnn_grad)

    def _scale_cnn_grad(self, module, inputs, output):
        return GradMultiply.apply(output, self.feature_grad_mult) if self.training else output

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]).long()
        with valid_lengths(self.encoder, lengths):
            hidden = self.encoder(wave, attention_mask=mask).last_hidden_state
        return self.heads(hidden)

    def num_frames(self, samples):
        return self.encoder._get_feat_extract_output_lengths(samples)


def init_from_teacher(student: Student, teacher: nn.Module) -> list[str]:
    """Copy CNN, feature projection, positional conv and the first two layers; returns what was copied."""
    t, s = teacher.state_dict(), student.encoder.state_dict()
    copied = []
    for name, value in s.items():
        source = name
        if name.startswith("encoder.layer_norm"):
            continue  # REFERENCE.md: the encoder-level LayerNorm is not copied
        if source in t and t[source].shape == value.shape:
            s[name] = t[source].clone()
            copied.append(name)
    student.encoder.load_state_dict(s)
    return copied


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
