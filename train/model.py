"""The DistilHuBERT student: a 2-layer transformers HubertModel plus one prediction head per target.

The encoder is a plain HubertModel so the export loads with one line
(`HubertModel.from_pretrained(run/student)`); the heads are only for training and saved apart.
"""

from __future__ import annotations

import contextlib

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


def student_config(teacher_config: dict, dropout: float = 0.1, design=None):
    """The student's HubertConfig: the teacher's conv stack and pos-conv, the design's sizes (train/design.py;
    None: DistilHuBERT's, the teacher's width with 2 layers)."""
    from transformers import HubertConfig

    keep = {k: v for k, v in teacher_config.items() if k not in ("model_type", "architectures", "num_hidden_layers")}
    drop = {"attention_dropout": dropout, "activation_dropout": dropout, "hidden_dropout": dropout}
    sizes = {} if design is None else {"num_hidden_layers": design.layers, "hidden_size": design.width,
                                       "num_attention_heads": design.heads, "intermediate_size": design.ffn}
    cfg = HubertConfig(**{**keep, **STUDENT_OVERRIDES, **drop, **sizes})
    cfg.architectures = ["HubertModel"]
    return cfg


def build_student(design, teacher_config: dict, n_targets: int, dropout: float = 0.1, feature_grad_mult: float = 0.1,
                  saved_config: dict | None = None) -> Student:
    """The one way a student is built, fresh or resumed. Resumed: the architecture is the checkpoint's config as saved
    (any depth, width or preset), so neither a changed teacher config nor the flags can reshape it."""
    from transformers import HubertConfig

    config = HubertConfig.from_dict(saved_config) if saved_config else student_config(teacher_config, dropout, design)
    return Student(config, n_targets, feature_grad_mult, target_dim=teacher_config["hidden_size"], match=design.match)


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
    """Linear(D -> D*N) -> GELU -> one Linear(D -> D_teacher) per target layer (s3prl's distiller heads; D_teacher = D
    for DistilHuBERT, the teacher's width when the student is narrower or wider)."""

    def __init__(self, dim: int, n_targets: int, target_dim: int | None = None):
        super().__init__()
        self.n = n_targets
        self.proj = nn.Linear(dim, dim * n_targets)
        self.heads = nn.ModuleList(nn.Linear(dim, target_dim or dim) for _ in range(n_targets))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, N, T, D]
        b, t, d = h.shape
        x = nn.functional.gelu(self.proj(h)).view(b, t, self.n, d)
        return torch.stack([head(x[:, :, i]) for i, head in enumerate(self.heads)], dim=1)


class LayerProjections(nn.Module):
    """Layer-to-layer objective: student layer s predicts teacher layer t through Linear(D -> D_teacher), per pair."""

    def __init__(self, dim: int, match: tuple[tuple[int, int], ...], target_dim: int):
        super().__init__()
        self.student_layers = [s for s, _ in match]
        self.proj = nn.ModuleList(nn.Linear(dim, target_dim) for _ in match)

    def forward(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:  # -> [B, N, T, D_teacher]
        return torch.stack([p(hidden_states[s]) for p, s in zip(self.proj, self.student_layers, strict=True)], dim=1)


class Student(nn.Module):
    """The encoder (a plain HubertModel) and what maps it to the targets: heads on its last layer, or one projection
    per matched layer. Outputs [B, N, T, D_teacher] in the order of the target layers (logits over codes with `codes`)."""

    def __init__(self, config, n_targets: int, feature_grad_mult: float = 0.1, target_dim: int | None = None,
                 match: tuple[tuple[int, int], ...] = ()):
        super().__init__()
        from transformers import HubertModel

        self.encoder = HubertModel(config)
        install_masked_groupnorm(self.encoder)  # padded batches see what each utterance alone would
        self.match = tuple(match)
        self.padding_enters_groupnorm = False  # True only for --recipe s3prl
        target_dim = self.target_dim = target_dim or config.hidden_size
        self.heads = LayerProjections(config.hidden_size, self.match, target_dim) if self.match \
            else PredictionHeads(config.hidden_size, n_targets, target_dim)
        self.codes = None  # --loss codebook-ce: a train.codebook_loss.CodePredictor on the heads' output (train.loop)
        self.feature_grad_mult = feature_grad_mult
        if feature_grad_mult != 1.0:
            self.encoder.feature_extractor.register_forward_hook(self._scale_cnn_grad)

    def _scale_cnn_grad(self, module, inputs, output):
        return GradMultiply.apply(output, self.feature_grad_mult) if self.training else output

    def hidden_states(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(input to layer 1, output of layer 1, ..., output of the last layer): "layer K" as for teachers
        (extract/layers.py; the student is post-LN, so transformers' hidden_states are exactly these).
        `padding_enters_groupnorm` (s3prl's recipe) lets padded samples into the first GroupNorm's statistics."""
        mask = (torch.arange(wave.shape[1], device=wave.device)[None, :] < lengths[:, None]).long()
        with contextlib.nullcontext() if self.padding_enters_groupnorm else valid_lengths(self.encoder, lengths):
            return self.encoder(wave, attention_mask=mask, output_hidden_states=True).hidden_states

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_states(wave, lengths)
        pred = self.heads(hidden) if self.match else self.heads(hidden[-1])
        return pred if self.codes is None else self.codes(pred)  # codebook-ce: logits [B, N, T, M, 256]

    def num_frames(self, samples):
        return self.encoder._get_feat_extract_output_lengths(samples)


def weight_groups(encoder: nn.Module) -> dict[str, list[str]]:
    """The encoder's state-dict keys by the parts init talks about: CNN, feature projection, positional conv, layer i."""
    groups: dict[str, list[str]] = {}
    for name in encoder.state_dict():
        if name.startswith("feature_extractor."):
            group = "CNN"
        elif name.startswith("feature_projection."):
            group = "feature projection"
        elif name.startswith("encoder.pos_conv_embed."):
            group = "positional conv"
        elif name.startswith("encoder.layers."):
            group = f"layer {int(name.split('.')[2]) + 1}"
        else:
            continue  # encoder.layer_norm (REFERENCE.md: not copied), masked_spec_embed
        groups.setdefault(group, []).append(name)
    return groups


def init_from_teacher(student: Student, teacher: nn.Module) -> tuple[list[str], list[str], dict[str, str]]:
    """Copy each part whose every tensor has the teacher's shape (CNN, feature projection, positional conv, student
    layer i from teacher layer i) and that then computes the teacher's function on the same input (a layer-norm CNN or a
    pre-LN layer has the same shapes but computes something else: kept random). A part is never half-copied.
    Returns (copied parts, random parts, why each random part is random) for the one line that says so."""
    t, s = teacher.state_dict(), student.encoder.state_dict()
    before = {n: v.clone() for n, v in s.items()}
    groups = weight_groups(student.encoder)
    copied, fresh, why = [], [], {}
    for group, names in groups.items():
        if all(n in t and t[n].shape == s[n].shape for n in names):
            for n in names:
                s[n] = t[n].clone()
            copied.append(group)
        else:
            fresh.append(group)
            why[group] = "shapes differ from the teacher's"
    student.encoder.load_state_dict(s)
    for group in list(copied):
        differs = _computes_otherwise(group, student.encoder, teacher)
        if differs:
            for n in groups[group]:
                s[n] = before[n]
            copied.remove(group)
            fresh.append(group)
            why[group] = differs
    student.encoder.load_state_dict(s)
    order = list(groups)
    return copied, sorted(fresh, key=order.index), why


@torch.no_grad()
def _computes_otherwise(group: str, encoder: nn.Module, teacher: nn.Module) -> str | None:
    """Why the copied part does not compute the teacher's part on the same input (None: it does, to 1e-5)."""
    g = torch.Generator().manual_seed(0)
    hidden = encoder.config.hidden_size
    modes = encoder.training, teacher.training
    encoder.eval(), teacher.eval()
    try:
        if group == "CNN":
            x = 0.1 * torch.randn(1, 4000, generator=g)
            a, b = encoder.feature_extractor(x), teacher.feature_extractor(x)
        elif group == "feature projection":  # the Linear; a LayerNorm before it in the teacher is not part of the student
            x = torch.randn(1, 20, encoder.feature_projection.projection.in_features, generator=g)
            a, b = encoder.feature_projection.projection(x), teacher.feature_projection.projection(x)
        elif group == "positional conv":
            x = torch.randn(1, 20, hidden, generator=g)
            a, b = encoder.encoder.pos_conv_embed(x), teacher.encoder.pos_conv_embed(x)
        else:
            i = int(group.split()[1]) - 1
            x = torch.randn(1, 20, hidden, generator=g)
            a, b = encoder.encoder.layers[i](x)[0], teacher.encoder.layers[i](x)[0]
    except Exception as e:  # noqa: BLE001 - another family's module with another signature: not the same function
        return f"the teacher's {group} is another kind of module ({type(e).__name__})"
    finally:
        encoder.train(modes[0]), teacher.train(modes[1])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        diff = (a - b).abs().max().item() if a.shape == b.shape else float("inf")
        return f"same shapes, but computes something else (max diff {diff:.3g} on the same input: e.g. a layer-norm or pre-LN teacher)"
    return None


def describe_parts(parts: list[str]) -> str:
    """'CNN, feature projection, layers 1-2' from the part names."""
    layers = [int(p.split()[1]) for p in parts if p.startswith("layer ")]
    rest = [p for p in parts if not p.startswith("layer ")]
    if layers:
        rest.append(f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"
                    if layers == list(range(layers[0], layers[-1] + 1)) else "layers " + ",".join(map(str, layers)))
    return ", ".join(rest) or "nothing"


def describe_random(parts: list[str], why: dict[str, str]) -> str:
    """'layers 1-2 (shapes differ from the teacher's); CNN (same shapes, but computes something else ...)'."""
    if not parts:
        return "nothing"
    by_reason: dict[str, list[str]] = {}
    for p in parts:
        by_reason.setdefault(why.get(p, "shapes differ from the teacher's"), []).append(p)
    return "; ".join(f"{describe_parts(ps)} ({reason})" for reason, ps in by_reason.items())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
