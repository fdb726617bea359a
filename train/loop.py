"""Train a DistilHuBERT student, read top to bottom (after nanoGPT's train.py).

    train-student --cache --teacher facebook/hubert-base-ls960 --out runs/dh          # from the cache
    train-student --teacher facebook/hubert-base-ls960 --corpus LibriSpeech --out runs/online   # teacher online

Setup, then `evaluate()` and `lr_at(step)`, then the loop: fetch a batch (timed: loader wait),
targets (cache, or the teacher online), forward, masked loss, backward, clip, step; log,
evaluate, checkpoint. At the end: eval.json, loss.png and the exported student.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from extract.teacher import resolve_device
from store.lock import exclusive
from train import distributed
from train.checkpoint import (
    RESUMABLE_CHANGES,
    CheckpointError,
    load_checkpoint,
    restore,
    resume_differences,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from train.codebook_loss import code_predictor, codebook_ce
from train.config import ConfigError, TrainConfig, TrainingDiverged
from train.data import CachedCrops, collate
from train.decode import DeviceDecoder
from train.design import resolve as resolve_design
from train.export.student import export_student, plot_losses, write_json
from train.follow import Follower
from train.loss import distill_loss
from train.model import Student, build_student, count_parameters, describe_parts, describe_random, init_from_teacher
from train.recipe import RECIPES, Recipe
from train.record import first_line, record_end, write_run_dir_records
from train.sources import Sources, follow_ids, load_sources
from train.targets import TargetSource, make_source


class _Batches:
    """A finite batch sampler over an endless stream (DataLoader wants __iter__ and __len__)."""

    def __init__(self, stream, n: int):
        self.stream, self.n = stream, n

    def __iter__(self):
        return itertools.islice(self.stream, self.n)

    def __len__(self) -> int:
        return self.n


def run_identity(cfg: TrainConfig, src, layers: list[int]) -> dict:
    """Everything that decides what is trained: a resumed run must match it (checkpoint.RESUMABLE_CHANGES may differ)."""
    keep = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    if keep["loss"] == "l1-cos":  # checkpoints from before --loss existed trained with it and resume
        del keep["loss"]
    ids = "\n".join(src.train.ids).encode()
    train_ids = "grows (--follow; the checkpoint keeps them)" if cfg.follow else hashlib.sha256(ids).hexdigest()[:16]
    return {**keep, "layers": list(layers), "cache_fingerprint": src.cache.fingerprint if src.cache else None,
            "teacher_digest": src.teacher.digest if src.teacher else None, "train_ids": train_ids,
            "betas": list(cfg.betas)}


current_out: str | None = None  # the run dir being trained: what an interrupted train-student says it kept (train.cli)


def train(cfg: TrainConfig) -> dict:
    """One run dir, one writer: the run dir is locked for the whole run (rank 0 holds it under torchrun)."""
    global current_out
    current_out = cfg.out
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ConfigError(f"--out {cfg.out}: is a file; give a directory for the run")
    ranks, device = distributed.init(resolve_device(cfg.device))  # torchrun: one process per device
    try:
        if not ranks.main:
            return _train(cfg, ranks, device)
        os.makedirs(cfg.out, exist_ok=True)
        with exclusive(cfg.out, "another train-student is using this run dir; wait for it, or choose another --out"):
            return _train(cfg, ranks, device)
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        if "killed by signal: Terminated" in str(e):  # the whole job got SIGTERM (a scheduler's limit): an interruption
            raise KeyboardInterrupt from None
        # torch's message for a worker killed by a signal (the OOM killer, a kill -9): the run dir keeps its checkpoint
        raise ConfigError(f"{cfg.out}: a data loader worker died ({str(e).splitlines()[0][:120]}); out of memory? lower "
                          "--num-workers, then continue with --resume") from None


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


def _train(cfg: TrainConfig, ranks: distributed.Ranks, device: torch.device) -> dict:
    run = prepare(cfg, ranks, device)
    return loop(run, batches(run))


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
    identity = run_identity(cfg, src, layers)
    ckpt = load_checkpoint(cfg.out) if cfg.resume else None
    if not cfg.resume and os.path.exists(os.path.join(cfg.out, "ckpt.pt")):
        raise ConfigError(f"{cfg.out}: holds a checkpoint; pass --resume to continue it, or choose another --out")
    if ckpt and resume_differences(ckpt["identity"], identity):
        diff = resume_differences(ckpt["identity"], identity)
        raise ConfigError(f"--resume {cfg.out}: this run would train something else ({'; '.join(diff[:3])}"
                          f"{f'; and {len(diff) - 3} more' if len(diff) > 3 else ''}); use the checkpoint's settings or another --out")
    if ranks.main:
        os.makedirs(cfg.out, exist_ok=True)
    design = resolve_design(cfg.preset, cfg.student_layers, cfg.student_width, cfg.student_heads, cfg.student_ffn, cfg.match,
                            src.teacher_config)
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
    record = write_run_dir_records(cfg, src, layers, design) if ranks.main else None
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
        follower = Follower(src.cache, src.train.ids, src.train.with_ids, cfg.valid_fraction, follow_ids(src.cache, cfg.corpus),
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


def _loader(run: Run, dataset, batch_sampler, at_step: int) -> DataLoader:
    cfg = run.cfg
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=cfg.num_workers,
                      pin_memory=run.device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None,
                      generator=torch.Generator().manual_seed(cfg.seed + at_step))  # own RNG: dropout's stays resumable


def batches(run: Run):
    """The batches from run.step on: the recipe's sampler over the training set, or --follow's growing epochs."""
    cfg = run.cfg
    if run.follower is None:
        stream = (distributed.my_share(b, run.ranks) for b in run.recipe.batches(run.src.train, cfg, run.step, run.ranks.world))
        yield from _loader(run, run.src.train, _Batches(stream, cfg.steps - run.step), run.step)
        return
    at, left = run.step, cfg.steps - run.step
    for epoch, crops, epoch_batches in run.follower.epochs_from(at, CachedCrops.lengths, cfg.batch_size, cfg.seed):
        if run.follower.new_in_last:
            tqdm.write(f"epoch {epoch}: {run.follower.new_in_last} utterances committed since the last epoch; training on "
                       f"{len(crops)}", file=sys.stderr)
            run.follower.new_in_last = 0
        yield from _loader(run, crops, epoch_batches[:left], at)
        at, left = at + min(left, len(epoch_batches)), left - len(epoch_batches)
        if left <= 0:
            return


def step_loss(run: Run, batch: dict, net: torch.nn.Module, source: TargetSource, ranks: distributed.Ranks) -> tuple[torch.Tensor, ...]:
    """(loss to backpropagate, then loss, per-layer L1 and cosine over the global batch's real frames, and their count)."""
    device = run.device
    t = source.targets(batch)
    wave, lengths = batch["wave"].to(device, non_blocking=True), batch["lengths"].to(device)
    with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        pred = net(wave, lengths)
    if pred.shape[2] != t.values.shape[2] or not torch.equal(run.model.num_frames(t.counted_from), t.frames):
        raise RuntimeError(f"student frames {pred.shape[2]} != target frames {t.values.shape[2]}: crop misaligned")
    mask = torch.arange(t.values.shape[2], device=device)[None, :] < t.frames[:, None]
    if run.model.codes is None:
        loss, l1, cos = distill_loss(pred, t.values, mask)
    else:  # --loss codebook-ce: trained on the codes; L1 and cos (and held-out loss) measured on the vectors they expect
        loss, l1, cos = distill_loss(run.model.codes.expected(pred.detach() if "codes" in batch else pred), t.values, mask)
        if "codes" in batch:
            loss, _ = codebook_ce(pred, batch["codes"].to(device, non_blocking=True), mask)
    # ranks hold different frame counts: weight each rank's mean so DDP's average is the global frame mean
    n = t.frames.sum().float()
    total = distributed.global_sum(n, ranks)
    stats = distributed.global_sum(torch.cat([loss.detach()[None], l1, cos]) * n, ranks) / total
    k = len(run.layers)
    return loss * n * ranks.world / total, stats[0], stats[1 : 1 + k], stats[1 + k :], total


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Held-out loss, measured the same way in every recipe: exact targets, unpadded (no padding in GroupNorm)."""
    src, cfg, model, layers = run.src, run.cfg, run.model, run.layers
    if src.valid is None:
        return {}
    model.eval()
    model.padding_enters_groupnorm = False
    sums, n = torch.zeros(3, len(layers)), 0
    keys = [(0, i) for i in range(min(len(src.valid), cfg.eval_max_utterances))]
    for i in range(0, len(keys), cfg.batch_size):
        _, loss, l1, cos, frames = step_loss(run, collate([src.valid[k] for k in keys[i : i + cfg.batch_size]]), model, run.judge,
                                             distributed.Ranks())
        sums += torch.stack([loss.expand(len(layers)), l1, cos]).cpu() * float(frames)
        n += float(frames)
    model.train()
    model.padding_enters_groupnorm = run.recipe.padding_enters_groupnorm
    sums /= max(n, 1)
    return {"step": run.step, "loss": float(sums[0, 0]), "utterances": len(keys),
            **{f"l1_layer{k}": float(sums[1, j]) for j, k in enumerate(layers)},
            **{f"cos_layer{k}": float(sums[2, j]) for j, k in enumerate(layers)}}


def checkpoint(run: Run) -> None:
    model = run.model
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(f"{run.cfg.out}: the student's weights are not finite after step {run.step} "
                               f"(lr {lr_of(run, run.step - 1):.3g}); lower --lr; the run dir keeps its last finite checkpoint "
                               "and exports nothing")
    save_checkpoint(run.cfg.out, {"model": model.state_dict(), "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
                                  "rng": rng_state(), "step": run.step, "config": run.cfg.to_dict(),
                                  "student_config": model.encoder.config.to_dict(), "layers": run.layers,
                                  "identity": run.identity, **({"follow": run.follower.state()} if run.follower else {})})


def lr_of(run: Run, s: int) -> float:
    return run.recipe.lr_at(run.optimizer, run.cfg, s)


def log_row(run: Run, loss, l1, cos, grad_norm, batch: dict, steps: int, elapsed: float, waited: float) -> dict:
    return {"step": run.step, "loss": loss.item(), "lr": lr_of(run, run.step - 1), "grad_norm": float(grad_norm),
            "utterances_per_rank": len(batch["lengths"]), "ranks": run.ranks.world,
            **{f"l1_layer{k}": float(l1[j]) for j, k in enumerate(run.layers)},
            **{f"cos_layer{k}": float(cos[j]) for j, k in enumerate(run.layers)},
            "steps_per_s": steps / elapsed, "loader_wait_fraction": waited / elapsed}


def loop(run: Run, loader) -> dict:
    """fetch, targets, forward, loss, backward, step; log, evaluate, checkpoint; at the end eval.json, loss.png, student/."""
    cfg, ranks, model, optimizer, scaler = run.cfg, run.ranks, run.model, run.optimizer, run.scaler
    metrics = open_history(os.path.join(cfg.out, "metrics.jsonl"), run.step) if ranks.main else None
    tb = _tensorboard(cfg.out) if ranks.main else None
    model.train()
    bar = tqdm(total=cfg.steps, initial=run.step, desc="training", disable=not (cfg.progress and ranks.main), dynamic_ncols=True)
    t_last, waited, window_t0, window_steps = time.perf_counter(), 0.0, time.perf_counter(), 0
    run.started, run.start_step = time.time(), run.step
    for batch in loader if cfg.steps else ():  # --steps 0: straight to the export of the initialised student
        waited += time.perf_counter() - t_last  # time the step stood waiting for data
        if run.recipe.sets_lr:
            for group in optimizer.param_groups:
                group["lr"] = lr_of(run, run.step)
        to_backprop, loss, l1, cos, _ = step_loss(run, batch, run.net, run.targets, ranks)
        if not torch.isfinite(loss):  # nothing after a non-finite loss is worth keeping: no checkpoint of it, no export
            raise TrainingDiverged(f"{cfg.out}: the loss is {float(loss)} at step {run.step + 1} (lr {lr_of(run, run.step):.3g}); lower "
                                   "--lr or check the targets (feature-cache verify); the run dir keeps its last finite checkpoint")
        scaler.scale(to_backprop).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips such a step; else it would poison
            raise TrainingDiverged(f"{cfg.out}: the gradient is {float(grad_norm)} at step {run.step + 1} (lr {lr_of(run, run.step):.3g}); "
                                   "lower --lr; the run dir keeps its last finite checkpoint")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        run.step += 1
        window_steps += 1
        bar.update(1)
        for line in run.notes:  # said once the first step has run: a run that fails before it keeps its error to one line
            bar.write(line, file=sys.stderr)
        run.notes = []
        if ranks.main and (run.step % cfg.log_interval == 0 or run.step == cfg.steps):
            elapsed = time.perf_counter() - window_t0
            row = log_row(run, loss, l1, cos, grad_norm, batch, window_steps, elapsed, waited)
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            _tb_log(tb, row, "train")
            bar.set_postfix(loss=f"{row['loss']:.3f}", wait=f"{row['loader_wait_fraction']:.0%}")
            window_t0, window_steps, waited = time.perf_counter(), 0, 0.0
        if ranks.main and run.step % cfg.eval_interval == 0 and run.step < cfg.steps:
            held_out = evaluate(run)
            metrics.write(json.dumps({"eval": held_out}) + "\n")
            metrics.flush()
            _tb_log(tb, held_out, "valid")
        if ranks.main and (run.step % cfg.checkpoint_interval == 0 or run.step in (cfg.steps, cfg.stop_after)):
            checkpoint(run)
        if run.step == cfg.stop_after:
            break
        t_last = time.perf_counter()
    bar.close()
    if not ranks.main:
        distributed.close(ranks)
        return {"step": run.step, "out": cfg.out, "rank": ranks.rank}
    metrics.close()
    return finish(run, tb)


def open_history(path: str, step: int):
    """metrics.jsonl for appending, holding the history of exactly this run up to `step`: a run that starts over (no
    checkpoint, --resume or not) starts a clean history, and a resumed one drops the rows logged after its checkpoint
    (they are trained again), so loss.png never mixes two runs."""
    kept = []
    if step and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                at = row.get("step", (row.get("eval") or {}).get("step")) if isinstance(row, dict) else None
                if isinstance(at, int) and at <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
    return open(path, "a")


def finish(run: Run, tb) -> dict:
    """The end: held-out evaluation (into metrics.jsonl too, so loss.png shows it), eval.json, the student, loss.png."""
    cfg = run.cfg
    result = {"step": run.step, "out": cfg.out, "parameters": count_parameters(run.model.encoder)}
    if run.step in (cfg.steps, cfg.stop_after):  # --stop-after: what was trained so far is exported too, and says so
        last_eval = evaluate(run)
        if last_eval:
            with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as metrics:
                metrics.write(json.dumps({"eval": last_eval}) + "\n")
        write_json(os.path.join(cfg.out, "eval.json"), last_eval)
        result["student"] = export_student(run.model, cfg.out, run.layers, run.src.sample_rate)
        result["eval"] = last_eval
        if run.step < cfg.steps:
            result["stopped_after"] = run.step
            print(f"{cfg.out}: stopped after step {run.step} of {cfg.steps} (--stop-after): student/ holds the student of step "
                  f"{run.step}; continue with --resume", file=sys.stderr)
    source = f"cache {run.src.cache.fingerprint}" if run.src.cache is not None else "the teacher online"
    result["loss_plot"] = plot_losses(os.path.join(cfg.out, "metrics.jsonl"), os.path.join(cfg.out, "loss.png"),
                                      f"{cfg.out} ({source})")
    if run.record is not None:
        record_end(cfg.out, run.record, time.time() - run.started, run.step - run.start_step)
    if tb:
        tb.close()
    distributed.close(run.ranks)
    return result


def _tensorboard(run_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: pip install 'distilcache[tensorboard]'
        return None
    return SummaryWriter(os.path.join(run_dir, "tb"))


def _tb_log(tb, row: dict, prefix: str) -> None:
    if tb and row:
        for key, value in row.items():
            if key != "step" and isinstance(value, float):
                tb.add_scalar(f"{prefix}/{key}", value, row["step"])
