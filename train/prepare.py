"""A run prepared before its first step: every choice made once (sources, checkpoint, student, optimizer, target
sources, the run dir's records), refusals included, into one Run that train.loop reads and never re-decides."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from store.oneline import UserError
from train import distributed
from train.checkpoint import RESUMABLE_CHANGES, CheckpointError, load_checkpoint, restore, resume_differences, set_rng_state
from train.codebook_loss import code_predictor
from train.config import ConfigError, TrainConfig
from train.decode import DeviceDecoder
from train.design import resolve as resolve_design
from train.follow import Follower
from train.model import Student, build_student, count_parameters, describe_parts, describe_random, init_from_teacher
from train.recipe import RECIPES, Recipe
from train.record import first_line, write_run_dir_records
from train.sources import Sources, load_sources
from train.targets import TargetSource, make_source


def run_identity(cfg: TrainConfig, src, layers: list[int], design) -> dict:
    """Everything that decides what is trained: a resumed run must match it (checkpoint.RESUMABLE_CHANGES may differ)."""
    keep = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    keep.update(design.flags())  # resolved: a rerun from the run's config.json (which says 768, not 0) resumes
    if keep["loss"] == "l1-cos":  # checkpoints from before --loss existed trained with it and resume
        del keep["loss"]
    ids = "\n".join(src.train.ids).encode()
    train_ids = "grows (--follow; the checkpoint keeps them)" if cfg.follow else hashlib.sha256(ids).hexdigest()[:16]
    return {**keep, "layers": list(layers), "cache_fingerprint": src.cache.fingerprint if src.cache else None,
            "teacher_digest": src.teacher.digest if src.teacher else None, "train_ids": train_ids,
            "betas": list(cfg.betas)}


def saved_identity(saved: dict, teacher_config: dict) -> dict:
    """A checkpoint's identity with its design resolved as run_identity resolves this run's: checkpoints written before
    the design was resolved kept the flags as given (0: the preset's), which resolve to the same design."""
    try:
        design = resolve_design(saved["preset"], saved["student_layers"], saved["student_width"], saved["student_heads"],
                                saved["student_ffn"], saved["match"], teacher_config)
    except (KeyError, TypeError, ValueError, UserError):
        return saved  # not comparable as a design: resume_differences names what differs
    return {**saved, **design.flags()}


@dataclass
class Run:
    """Everything the loop needs, chosen before it starts: nothing in the loop depends on which recipe or source."""

    cfg: TrainConfig
    ranks: distributed.Ranks
    device: torch.device
    recipe: Recipe
    amp_dtype: torch.dtype | None
    src: Sources
    layers: list[int]
    identity: dict
    model: Student
    net: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    targets: TargetSource  # the training batches' targets
    judge: TargetSource  # the held-out batches': exact (the cache's floats, or the teacher in eval mode)
    step: int = 0
    follower: Follower | None = None
    notes: list[str] = field(default_factory=list)  # said once the first step has run
    started: float = 0.0  # when this session's loop began, and at which step: run.json's wall time and speed
    start_step: int = 0
    record: dict | None = None  # run.json as this run wrote it (rank 0): finish() adds the time and speed


def prepare(cfg: TrainConfig, ranks: distributed.Ranks, device: torch.device) -> Run:
    """Sources, checkpoint, student, optimizer and target sources; the run dir's records. Refusals happen here."""
    recipe = RECIPES[cfg.recipe]
    precision = recipe.precision(cfg.precision, device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    torch.manual_seed(cfg.seed)
    src = load_sources(cfg)
    layers = src.layers
    if src.teacher is not None and cfg.cache is None:
        src.teacher.to(device)  # Teacher.to keeps fp32 exact on the device (TF32 off), as in extraction
    design = resolve_design(cfg.preset, cfg.student_layers, cfg.student_width, cfg.student_heads, cfg.student_ffn, cfg.match,
                            src.teacher_config)
    identity = run_identity(cfg, src, layers, design)
    ckpt = load_checkpoint(cfg.out) if cfg.resume else None
    if not cfg.resume and os.path.exists(os.path.join(cfg.out, "ckpt.pt")):
        raise ConfigError(f"{cfg.out}: holds a checkpoint; pass --resume to continue it, or choose another --out")
    diff = resume_differences(saved_identity(ckpt["identity"], src.teacher_config), identity) if ckpt else []
    if diff:
        raise ConfigError(f"--resume {cfg.out}: this run would train something else ({'; '.join(diff[:3])}"
                          f"{f'; and {len(diff) - 3} more' if len(diff) > 3 else ''}); use the checkpoint's settings or another --out")
    if ranks.main:
        os.makedirs(cfg.out, exist_ok=True)
    model = student_for(cfg, design, src, layers, ckpt)
    notes = [recipe.without_cuda] if recipe.without_cuda and amp_dtype is None else []
    if not ckpt and cfg.init == "teacher":
        notes.insert(0, initialise(model, src, design, cfg.out if ranks.main else None, layers))
    elif not ckpt and ranks.main:
        write_design(cfg.out, design, model, src, layers, "random")
    model.to(device)
    model.padding_enters_groupnorm = recipe.padding_enters_groupnorm
    net = torch.nn.parallel.DistributedDataParallel(model) if ranks.enabled else model  # averages gradients
    optimizer = recipe.optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = restore_run(cfg, ckpt, model, optimizer, scaler, recipe) if ckpt else 0
    # resolved config.json and run.json (rank 0): what this run trains on, said again after the first step
    record = write_run_dir_records(cfg, src, layers, design, str(device), precision) if ranks.main else None
    if record is not None:
        notes.insert(0, first_line(record))
    if not src.train.ids:
        raise ConfigError(f"no training utterances: {len(src.valid.ids) if src.valid else 0} held out, none left to train on; "
                          "extract more, or lower --valid-fraction")
    decoder = DeviceDecoder(src.cache, layers, device) if src.cache is not None and src.cache.mode.needs_stats else None
    exact = "cache" if src.cache is not None else "teacher"
    targets = make_source(exact if src.cache is not None else recipe.online_source, device=device, decoder=decoder,
                          teacher=src.teacher, layers=layers, num_frames=model.num_frames)
    judge = make_source(exact, device=device, teacher=src.teacher, layers=layers)
    follower = None
    if cfg.follow:  # epoch by epoch, each over the utterances committed when it starts (train/follow.py)
        if ranks.enabled:
            raise ConfigError("--follow trains in one process: ranks would see different parts committed; drop it under torchrun")
        follower = Follower(src.cache, src.train.ids, src.train.with_ids, cfg.valid_fraction, src.follow,
                            ckpt.get("follow") if ckpt else None, src.valid.ids if src.valid else ())
    return Run(cfg, ranks, device, recipe, amp_dtype, src, layers, identity, model, net, optimizer, scaler, targets, judge,
               step, follower, notes if ranks.main else [], record=record)


def student_for(cfg: TrainConfig, design, src: Sources, layers: list[int], ckpt: dict | None) -> Student:
    """train.model.build_student; on resume the architecture is the checkpoint's, so a changed teacher config cannot
    reshape it, and a checkpoint whose config builds nothing is one line."""
    try:
        model = build_student(design, src.teacher_config, len(layers), cfg.dropout, cfg.feature_grad_mult,
                              ckpt["student_config"] if ckpt else None)
    except Exception as e:  # noqa: BLE001 - transformers validates configs with many error types (strict dataclasses)
        if not ckpt:
            raise
        raise CheckpointError(f"{os.path.join(cfg.out, 'ckpt.pt')}: its student_config does not build a student ({type(e).__name__}); "
                              "restore a copy, or remove it to start the run over") from None
    if cfg.loss == "codebook-ce":  # before the optimizer and the checkpoint's weights: its logits are trained and restored
        if not src.cache.mode.codebooks:
            raise ConfigError(f"--loss codebook-ce: {src.cache.path} stores its targets as {src.cache.mode.name}, not as codes; "
                              "convert it (feature-cache convert CACHE --storage rvq8) or drop --loss")
        model.codes = code_predictor(src.cache, layers, model.target_dim)
    return model


def initialise(model: Student, src: Sources, design, out: str | None, layers: list[int]) -> str:
    """--init teacher: copy each part that computes the teacher's function; returns the line that says what was copied."""
    copied, fresh, why = init_from_teacher(model, src.teacher.model)
    if out:
        write_design(out, design, model, src, layers, {"copied": copied, "random": fresh, "why_random": why})
    return (f"student {design.layers} x {design.width} ({design.objective}): copied from the teacher: "
            f"{describe_parts(copied)}; random: {describe_random(fresh, why)}")


def write_design(out: str, design, model: Student, src: Sources, layers: list[int], init) -> None:
    with open(os.path.join(out, "design.json"), "w") as f:
        json.dump({**design.to_dict(), "target_layers": layers, "teacher_width": src.teacher_config["hidden_size"],
                   "parameters": count_parameters(model.encoder), "head_parameters": count_parameters(model.heads),
                   "init": init}, f, indent=1)


def restore_run(cfg: TrainConfig, ckpt: dict, model, optimizer, scaler, recipe: Recipe) -> int:
    """The checkpoint's weights, optimizer, scaler and RNG; returns its step."""
    where = os.path.join(cfg.out, "ckpt.pt")
    restore(where, model.load_state_dict, ckpt["model"])
    restore(where, optimizer.load_state_dict, ckpt["optimizer"])
    if not recipe.sets_lr:  # its groups hold the base lr (the optimizer schedules itself); an older checkpoint saved the scheduled one
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
    restore(where, scaler.load_state_dict, ckpt.get("scaler") or {})
    restore(where, set_rng_state, ckpt.get("rng") or {})
    return ckpt["step"]
