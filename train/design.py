"""Student designs as configuration: presets, sizes, and what each student layer learns to predict.

Two objectives, both with DistilHuBERT's masked L1 + −log σ(cos) loss:
- heads (DistilHuBERT, the default): prediction heads on the last student layer, one per teacher layer;
- layer-to-layer (`--match 1:4,2:8,3:12`): student layer i predicts teacher layer j through its own
  Linear(width → teacher width).
A design is plain data, recorded in the run dir (design.json) and in the checkpoint's identity, so
`--resume` refuses a changed one and `compare-runs` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from store.oneline import UserError

#: name -> (layers, width, heads, ffn); 0 = the teacher's (conv stack: always the teacher's)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "distilhubert": (2, 0, 0, 0),  # the paper's: 23,491,200 parameters on HuBERT-base
    "deep-thin": (12, 480, 12, 480),  # FitHuBERT-style: thinner and deeper
    "small": (2, 384, 6, 1536),  # half the width
    "wide-4": (4, 0, 0, 0),  # four teacher-sized layers
}


class DesignError(UserError):
    """A student design that cannot be built; one line."""


@dataclass(frozen=True)
class Design:
    preset: str
    layers: int
    width: int
    heads: int
    ffn: int
    match: tuple[tuple[int, int], ...]  # (student layer, teacher layer); () = prediction heads on the last layer

    @property
    def objective(self) -> str:
        return "layer-to-layer" if self.match else "heads"

    def flags(self) -> dict:
        """The design as TrainConfig's keys, resolved (0 and "" replaced by what is built): what config.json records and
        what --resume compares."""
        return {"student_layers": self.layers, "student_width": self.width, "student_heads": self.heads,
                "student_ffn": self.ffn, "match": ",".join(f"{s}:{t}" for s, t in self.match)}

    def to_dict(self) -> dict:
        return {**asdict(self), "match": [list(m) for m in self.match], "objective": self.objective}


def parse_match(value: str) -> tuple[tuple[int, int], ...]:
    """'1:4,2:8,3:12' -> ((1, 4), (2, 8), (3, 12)), ordered by teacher layer (the order of the cached targets)."""
    if not value:
        return ()
    try:
        pairs = tuple(tuple(int(x) for x in item.split(":")) for item in value.split(",") if item.strip())
    except ValueError:
        pairs = ((),)
    if not pairs or any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in pairs):
        raise DesignError(f"--match {value}: give STUDENT:TEACHER layer pairs, e.g. 1:4,2:8,3:12")
    students, teachers = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(students)) != len(students) or len(set(teachers)) != len(teachers):
        raise DesignError(f"--match {value}: each student layer and each teacher layer may appear once")
    return tuple(sorted(pairs, key=lambda p: p[1]))


def _heads_for(width: int) -> int:
    """Heads of about 64 dimensions (HuBERT's), as many as divide the width."""
    return next(h for h in range(max(1, width // 64), 0, -1) if width % h == 0)


def resolve(preset: str, layers: int, width: int, heads: int, ffn: int, match: str, teacher_config: dict) -> Design:
    """The design asked for, with the preset's and the teacher's values filled in; checked."""
    if preset not in PRESETS:
        raise DesignError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    p_layers, p_width, p_heads, p_ffn = PRESETS[preset]
    t_width, t_heads, t_ffn = teacher_config["hidden_size"], teacher_config["num_attention_heads"], teacher_config["intermediate_size"]
    width = width or p_width or t_width
    design = Design(preset, layers or p_layers, width, heads or p_heads or (t_heads if width == t_width else _heads_for(width)),
                    ffn or p_ffn or (t_ffn if width == t_width else 4 * width), parse_match(match))
    if design.layers < 1 or design.width < 1 or design.ffn < 1 or design.heads < 1:
        raise DesignError(f"student {design.layers} layers x width {design.width}, {design.heads} heads, FFN {design.ffn}: "
                          "all must be >= 1")
    if design.width % design.heads:
        raise DesignError(f"--student-width {design.width} is not divisible by {design.heads} attention heads; "
                          "give --student-heads that divides it")
    groups = int(teacher_config.get("num_conv_pos_embedding_groups", 16))  # the positional conv keeps the teacher's groups
    if design.width % groups:
        raise DesignError(f"--student-width {design.width} is not divisible by the positional convolution's {groups} groups; "
                          f"give a multiple of {groups}")
    too_deep = [s for s, _ in design.match if s > design.layers]
    if too_deep:
        raise DesignError(f"--match names student layer {too_deep[0]}, but the student has {design.layers}; "
                          f"use layers 0-{design.layers} or more --student-layers")
    return design
