"""Training configuration: plain data with the recipe's defaults (REFERENCE.md), overridable from a file or flags."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

from store.oneline import UserError

#: The recipes train.recipe defines (checked there at import): named here so that the config needs no import of them.
RECIPE_NAMES = ("distilcache", "s3prl")
#: l1-cos: DistilHuBERT's regression of the vectors; codebook-ce: cross-entropy over a codebook cache's codes (train.codebook_loss)
LOSSES = ("l1-cos", "codebook-ce")

MIN_CROP_SAMPLES = 1600  # a few frames: shorter crops make the loss meaningless


class ConfigError(UserError):
    """A bad --config file or flag; one line."""


class TrainingDiverged(ConfigError):
    """The loss, a gradient or the weights stopped being finite: the run stops, exits non-zero and exports nothing."""


def default_workers() -> int:
    """DataLoader workers for this machine: one core stays with the training step, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/distilhubert"  # run dir: checkpoints, metrics.jsonl, loss.png, student/
    cache: str | None = None  # path or fingerprint; "" = find it from teacher+layers; None = online teacher
    storage: str = ""  # with cache "": take the cache stored in this mode (float16, int8, rvq8, ...); with a path: it must be
    cache_dir: str | None = None  # cache root [default: $DISTILCACHE_HOME or ~/.cache/distilcache]
    teacher: str | None = None  # for init (and online mode); default: the teacher recorded in the cache
    corpus: str | None = None  # online mode; with a cache: restrict training to these utterances
    layers: tuple[int, ...] = ()  # teacher layers to predict; empty: all of the cache's (finding a cache, online: 4,8,12)
    init: str = "teacher"  # teacher: copy each part whose shapes fit (CNN, projection, pos-conv, layer i <- i) | random
    preset: str = "distilhubert"  # student design (train/design.py): distilhubert | deep-thin | small | wide-4
    student_layers: int = 0  # 0: the preset's
    student_width: int = 0  # 0: the preset's (distilhubert: the teacher's width)
    student_heads: int = 0  # 0: the preset's, or the teacher's at its width, else ~64 dims per head
    student_ffn: int = 0  # 0: the preset's, or the teacher's at its width, else 4 x width
    match: str = ""  # layer-to-layer objective, STUDENT:TEACHER pairs ("1:4,2:8,3:12"); "": heads on the last layer
    loss: str = "l1-cos"  # l1-cos (DistilHuBERT's) | codebook-ce: predict a codebook cache's codes (rvq8, rvq16, pq)
    steps: int = 200_000  # paper: 200k; 0 exports the initialised student untrained (a control: what copying the teacher gives)
    batch_size: int = 24  # utterances per step (paper: 24)
    max_crop_samples: int = 250_000  # random crop, at most 15.6 s
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01  # not on biases and norms
    warmup_fraction: float = 0.07  # linear warm-up, then linear decay to 0
    grad_clip: float = 5.0
    feature_grad_mult: float = 0.1  # the CNN learns at 0.1x
    dropout: float = 0.1  # attention, activation and hidden dropout of the student
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16 | fp16
    device: str = "auto"
    valid_fraction: float | None = None  # held-out utterances (by recording hash); None: 0.01, or 0 under --recipe s3prl
    eval_interval: int = 1000  # steps between held-out evaluations (and at the end)
    eval_max_utterances: int = 500
    log_interval: int = 50
    checkpoint_interval: int = 1000
    stop_after: int = 0  # stop (checkpointed) after this step, to resume later: for time-limited jobs
    num_workers: int | None = None  # DataLoader workers, each opening the cache itself; None: min(4, cores - 1)
    seed: int = 0
    resume: bool = False  # continue the run dir's checkpoint; refused if anything that changes training differs
    eval_cache: str | None = None  # held-out targets from this cache (e.g. exact fp32) while training on another (int8)
    allow_partial: bool = False  # train on a cache whose extraction is unfinished (or running)
    recipe: str = "distilcache"  # distilcache | s3prl: online mode trained the way s3prl's distiller trains (train/recipe.py)
    follow: bool = False  # pick up parts committed while training, between epochs (implies allow_partial)
    allow_pickle: bool = False  # load a .bin (pickle) teacher for init/online targets; only teachers you trust
    progress: bool = True

    def __post_init__(self) -> None:
        if self.num_workers is None:  # what the machine has: 4 workers on 2 cores made torch warn at every start
            object.__setattr__(self, "num_workers", default_workers())
        if self.valid_fraction is None:  # s3prl's distiller holds nothing out: an A/B run trains on the same utterances
            object.__setattr__(self, "valid_fraction", 0.0 if self.recipe == "s3prl" else 0.01)
        if not isinstance(self.valid_fraction, (int, float)) or not math.isfinite(self.valid_fraction):
            raise ConfigError(f"--valid-fraction {self.valid_fraction}: a number between 0 and 0.5")
        if self.init not in ("teacher", "random"):
            raise ConfigError(f"init: choose teacher or random, got {self.init!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision: choose auto, fp32, bf16 or fp16, got {self.precision!r}")
        for name, top in (("steps", 10**9), ("batch_size", 10**5), ("max_crop_samples", 10**9), ("seed", 2**32 - 1),
                          ("num_workers", 1024), ("stop_after", 10**9), ("eval_interval", 10**9), ("log_interval", 10**9),
                          ("checkpoint_interval", 10**9), ("eval_max_utterances", 10**8), ("student_layers", 1000),
                          ("student_width", 65536), ("student_heads", 4096), ("student_ffn", 1 << 20)):
            value = getattr(self, name)
            if type(value) is not int or not -1 < value <= top:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: give a whole number between 0 and {top}")
        if self.steps < 0 or self.batch_size < 1:  # --steps 0: the initialised student exported untrained (the step-0 control)
            raise ConfigError(f"--steps {self.steps} / --batch-size {self.batch_size}: steps at least 0, batch size at least 1")
        if not 0 <= self.valid_fraction <= 0.5:
            raise ConfigError(f"--valid-fraction {self.valid_fraction}: hold out between 0 and 0.5 of the utterances")
        for name in ("lr", "eps", "grad_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1e6):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be a positive finite number (at most 1e6)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0 and 0 <= self.warmup_fraction < 1
                and 0 <= self.dropout < 1 and math.isfinite(self.feature_grad_mult) and self.feature_grad_mult >= 0):
            raise ConfigError("weight_decay and feature_grad_mult must be >= 0, warmup_fraction and dropout in [0, 1)")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ConfigError(f"betas {self.betas}: two numbers in [0, 1)")
        if self.max_crop_samples < MIN_CROP_SAMPLES:
            raise ConfigError(f"--max-crop-samples {self.max_crop_samples}: at least {MIN_CROP_SAMPLES} (one frame is 400 samples; "
                              "the recipe uses 250000)")
        for name in ("eval_interval", "log_interval", "checkpoint_interval", "eval_max_utterances"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.num_workers < 0 or self.stop_after < 0:
            raise ConfigError("--num-workers and --stop-after must be >= 0")
        if any(k < 0 for k in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"--layers {','.join(map(str, self.layers))}: give distinct non-negative layer numbers")
        if min(self.student_layers, self.student_width, self.student_heads, self.student_ffn) < 0:
            raise ConfigError("--student-layers/--student-width/--student-heads/--student-ffn must be >= 0 (0: the preset's)")
        if self.match:
            from train.design import parse_match

            pairs = parse_match(self.match)
            if self.layers and sorted(t for _, t in pairs) != sorted(self.layers):
                raise ConfigError(f"--match {self.match} predicts teacher layers {','.join(str(t) for _, t in pairs)}, but --layers "
                                  f"says {','.join(map(str, self.layers))}; leave --layers out (--match sets them)")
        if self.storage:
            from store.modes import TARGET_MODES

            if self.storage not in TARGET_MODES:
                raise ConfigError(f"--storage {self.storage}: choose {', '.join(TARGET_MODES)}")
            if self.cache is None:
                raise ConfigError("--storage chooses among caches: give --cache (with no value to find one)")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss {self.loss}: choose {' or '.join(LOSSES)}")
        if self.loss == "codebook-ce" and self.cache is None:
            raise ConfigError("--loss codebook-ce predicts a cache's codes: give --cache (one stored as rvq8, rvq16 or pq)")
        if self.recipe not in RECIPE_NAMES:
            raise ConfigError(f"--recipe {self.recipe}: choose {' or '.join(RECIPE_NAMES)}")
        if self.recipe == "s3prl" and self.cache is not None:
            raise ConfigError("--recipe s3prl runs the teacher online, as s3prl does (dropout on, on each crop): drop --cache and "
                              "give --teacher and --corpus")
        if self.follow and self.cache is None:
            raise ConfigError("--follow picks up parts of a cache being extracted: give --cache")
        if self.cache is None and not (self.teacher and self.corpus):
            raise ConfigError("online mode (no --cache) needs --teacher and --corpus")
        if self.cache == "" and not self.teacher:
            raise ConfigError("--cache with no value finds the cache of --teacher: pass --teacher, or give --cache a path or fingerprint")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | None, overrides: dict) -> TrainConfig:
    """File values (JSON or TOML) then flag overrides; unknown keys and wrong types are errors."""
    values: dict = {}
    if path:
        try:
            if path.endswith(".toml"):
                import tomllib

                with open(path, "rb") as f:
                    values = tomllib.load(f)
            else:
                with open(path) as f:
                    values = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--config {path}: {e}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{path or 'config'}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    for key, value in values.items():
        default = fields[key].default
        if isinstance(default, tuple):
            values[key] = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif default is not None and not isinstance(value, type(default)):
            raise ConfigError(f"{path or 'config'}: {key} should be {type(default).__name__}, got {value!r}")
    return TrainConfig(**values)


def save_config(cfg: TrainConfig, run_dir: str) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
