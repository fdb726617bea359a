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

import numpy as np
import torch
from torch.utils.data import DataLoader

from extract.teacher import resolve_device
from store.lock import exclusive
from train import distributed, recipe
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
from train.config import ConfigError, TrainConfig, TrainingDiverged
from train.data import BucketBatches, CachedCrops, collate
from train.decode import DeviceDecoder
from train.design import resolve as resolve_design
from train.export import export_student, plot_losses, staged
from train.follow import Follower
from train.loss import distill_loss
from train.model import build_student, count_parameters, describe_parts, describe_random, init_from_teacher, weight_groups
from train.record import first_line, write_run_dir_records
from train.sources import follow_ids, load_sources


class _Batches:
    """A finite batch sampler over an endless stream (DataLoader wants __iter__ and __len__)."""

    def __init__(self, stream, n: int):
        self.stream, self.n = stream, n

    def __iter__(self):
        return itertools.islice(self.stream, self.n)

    def __len__(self) -> int:
        return self.n


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]  # biases, norms
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def online_targets(teacher, batch: dict, layers: list[int]) -> dict:
    """The teacher on this batch's crops (exact, eval mode, no grad), padded like cached targets."""
    waves = [batch["wave"][i, : int(n)].numpy() for i, n in enumerate(batch["lengths"])]
    feats = teacher.forward(waves, layers)
    return collate([(torch.from_numpy(w), torch.from_numpy(np.stack([f[k] for k in layers]))) for w, f in zip(waves, feats, strict=True)])


def run_identity(cfg: TrainConfig, src, layers: list[int]) -> dict:
    """Everything that decides what is trained: a resumed run must match it (checkpoint.RESUMABLE_CHANGES may differ)."""
    keep = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    ids = "\n".join(src.train.ids).encode()
    train_ids = "grows (--follow; the checkpoint keeps them)" if cfg.follow else hashlib.sha256(ids).hexdigest()[:16]
    return {**keep, "layers": list(layers), "cache_fingerprint": src.cache.fingerprint if src.cache else None,
            "teacher_digest": src.teacher.digest if src.teacher else None, "train_ids": train_ids,
            "betas": list(cfg.betas)}


def train(cfg: TrainConfig) -> dict:
    """One run dir, one writer: the run dir is locked for the whole run (rank 0 holds it under torchrun)."""
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
        # torch's message for a worker killed by a signal (the OOM killer, a kill -9): the run dir keeps its checkpoint
        raise ConfigError(f"{cfg.out}: a data loader worker died ({str(e).splitlines()[0][:120]}); out of memory? lower "
                          "--num-workers, then continue with --resume") from None


def _train(cfg: TrainConfig, ranks: distributed.Ranks, device: torch.device) -> dict:
    # ---- setup -------------------------------------------------------------------------
    s3prl = cfg.recipe == "s3prl"  # online A/B runs the way s3prl's distiller trains (train/recipe.py)
    auto = ("fp16" if s3prl else "bf16") if device.type == "cuda" else "fp32"
    precision = cfg.precision if cfg.precision != "auto" else auto
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
    # the student's design (train/design.py); on resume the architecture comes from the checkpoint, so a changed
    # teacher config cannot reshape it
    design = resolve_design(cfg.preset, cfg.student_layers, cfg.student_width, cfg.student_heads, cfg.student_ffn, cfg.match,
                            src.teacher_config)
    try:
        model = build_student(design, src.teacher_config, len(layers), cfg.dropout, cfg.feature_grad_mult,
                              ckpt["student_config"] if ckpt else None)
    except Exception as e:  # noqa: BLE001 - transformers validates configs with many error types (strict dataclasses)
        if not ckpt:
            raise
        raise CheckpointError(f"{os.path.join(cfg.out, 'ckpt.pt')}: its student_config does not build a student ({type(e).__name__}); "
                              "restore a copy, or remove it to start the run over") from None
    model_config = model.encoder.config
    init = {"copied": [], "random": list(weight_groups(model.encoder))}
    if cfg.init == "teacher" and not ckpt:
        copied, fresh, why = init_from_teacher(model, src.teacher.model)
        init = {"copied": copied, "random": fresh, "why_random": why}
    notes = ["recipe s3prl: s3prl trains in fp16, which needs CUDA; training in fp32 here"] if s3prl and amp_dtype is None else []
    init_line = (f"student {design.layers} x {design.width} ({design.objective}): copied from the teacher: "
                 f"{describe_parts(init['copied'])}; random: {describe_random(init['random'], init['why_random'])}"
                 if cfg.init == "teacher" and not ckpt and ranks.main else None)
    if ranks.main and not ckpt:
        with open(os.path.join(cfg.out, "design.json"), "w") as f:
            json.dump({**design.to_dict(), "target_layers": layers, "teacher_width": src.teacher_config["hidden_size"],
                       "parameters": count_parameters(model.encoder), "head_parameters": count_parameters(model.heads),
                       "init": init if cfg.init == "teacher" else "random"}, f, indent=1)
    model.to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if ranks.enabled else model  # averages gradients
    if s3prl:
        model.padding_enters_groupnorm = True
        optimizer = recipe.S3prlAdamW(recipe.param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                      schedule=lambda t: recipe.warmup_linear(t, cfg.steps, cfg.warmup_fraction))
    else:
        optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = 0
    if ckpt:
        where = os.path.join(cfg.out, "ckpt.pt")
        restore(where, model.load_state_dict, ckpt["model"])
        restore(where, optimizer.load_state_dict, ckpt["optimizer"])
        if s3prl:  # its groups hold the base lr (the optimizer schedules itself); an older checkpoint saved the scheduled one
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr
        restore(where, scaler.load_state_dict, ckpt.get("scaler") or {})
        restore(where, set_rng_state, ckpt.get("rng") or {})
        step = ckpt["step"]
    if ranks.main:  # resolved config.json and run.json: what this run trains on, said again after the first step
        notes.insert(0, first_line(write_run_dir_records(cfg, src, layers, design)))
    if not src.train.ids:
        raise ConfigError(f"no training utterances: {len(src.valid.ids) if src.valid else 0} held out, none left to train on; "
                          "extract more, or lower --valid-fraction")
    def loader_over(dataset, batch_sampler, at_step: int) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate, num_workers=cfg.num_workers,
                          pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.num_workers else None,
                          generator=torch.Generator().manual_seed(cfg.seed + at_step))  # own RNG: dropout's stays resumable

    follower = None
    if cfg.follow:  # epoch by epoch, each over the utterances committed when it starts (train/follow.py)
        if ranks.enabled:
            raise ConfigError("--follow trains in one process: ranks would see different parts committed; drop it under torchrun")
        follower = Follower(src.cache, src.train.ids, src.train.with_ids, cfg.valid_fraction,
                            follow_ids(src.cache, cfg.corpus),
                            ckpt.get("follow") if ckpt else None, src.valid.ids if src.valid else ())

        def followed(at: int):
            left = cfg.steps - at
            for epoch, crops, epoch_batches in follower.epochs_from(at, CachedCrops.lengths, cfg.batch_size, cfg.seed):
                if follower.new_in_last:
                    bar.write(f"epoch {epoch}: {follower.new_in_last} utterances committed since the last epoch; training on "
                              f"{len(crops)}", file=sys.stderr)
                    follower.new_in_last = 0
                yield from loader_over(crops, epoch_batches[:left], at)
                at, left = at + min(left, len(epoch_batches)), left - len(epoch_batches)
                if left <= 0:
                    return

        loader = followed(step)
    else:
        if s3prl:  # s3prl's batches: sorted by full length, consecutive groups, shuffled order
            batches = recipe.SortedGroups(src.train.full_lengths(), cfg.batch_size, cfg.seed).from_step(step)
        else:
            batches = BucketBatches(src.train.lengths(), cfg.batch_size, cfg.seed, min_batch=ranks.world).from_step(step)
        stream = (distributed.my_share(b, ranks) for b in batches)  # each rank reads its own share of each global batch
        loader = loader_over(src.train, _Batches(stream, cfg.steps - step), step)
    decoder = DeviceDecoder(src.cache, layers, device) if src.cache is not None and src.cache.mode.needs_stats else None
    metrics = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if ranks.main else None
    tb = _tensorboard(cfg.out) if ranks.main else None

    def lr_at(s: int) -> float:
        """The lr of step s (0-based); s3prl's optimizer schedules itself by the steps it has taken."""
        if s3prl:
            return optimizer.last_lr()
        warm = max(1, int(cfg.warmup_fraction * cfg.steps))
        return cfg.lr * (s + 1) / warm if s < warm else cfg.lr * max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))

    def step_loss(batch: dict, net: torch.nn.Module, ranks: distributed.Ranks, as_s3prl: bool = False) -> tuple[torch.Tensor, ...]:
        """(loss to backpropagate, then loss, per-layer L1 and cosine over the global batch's real frames, and their count).
        as_s3prl: s3prl's targets (teacher in train mode on the padded batch) and loss over every padded frame."""
        if as_s3prl:
            targets = src.teacher.forward_as_s3prl([batch["wave"][i, : int(n)].numpy() for i, n in enumerate(batch["lengths"])], layers)
            padded = torch.full_like(batch["lengths"], batch["wave"].shape[1])
            batch = {**batch, "targets": targets, "frames": model.num_frames(padded), "check_lengths": padded}
        elif "targets" not in batch and "codes" not in batch:
            batch = {**batch, **online_targets(src.teacher, batch, layers)}
        wave, lengths = batch["wave"].to(device, non_blocking=True), batch["lengths"].to(device)
        if "codes" in batch:  # compact cache: decoded here, on the training device
            scales = batch["scales"].to(device, non_blocking=True) if "scales" in batch else None
            targets = decoder(batch["codes"].to(device, non_blocking=True), scales)
        else:
            targets = batch["targets"].to(device, non_blocking=True)
        frames = batch["frames"].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            pred = net(wave, lengths)
        expect = model.num_frames(batch.get("check_lengths", batch["lengths"]).to(device))
        if pred.shape[2] != targets.shape[2] or not torch.equal(expect, frames):
            raise RuntimeError(f"student frames {pred.shape[2]} != target frames {targets.shape[2]}: crop misaligned")
        mask = torch.arange(targets.shape[2], device=device)[None, :] < frames[:, None]
        loss, l1, cos = distill_loss(pred, targets, mask)
        # ranks hold different frame counts: weight each rank's mean so DDP's average is the global frame mean
        n = frames.sum().float()
        total = distributed.global_sum(n, ranks)
        stats = distributed.global_sum(torch.cat([loss.detach()[None], l1, cos]) * n, ranks) / total
        return loss * n * ranks.world / total, stats[0], stats[1 : 1 + len(layers)], stats[1 + len(layers) :], total

    @torch.no_grad()
    def evaluate() -> dict:
        if src.valid is None:
            return {}
        model.eval()
        model.padding_enters_groupnorm = False  # held-out loss is measured the same way in both recipes: exact, unpadded
        sums, n = torch.zeros(3, len(layers)), 0
        keys = [(0, i) for i in range(min(len(src.valid), cfg.eval_max_utterances))]
        for i in range(0, len(keys), cfg.batch_size):
            batch = collate([src.valid[k] for k in keys[i : i + cfg.batch_size]])
            _, loss, l1, cos, frames = step_loss(batch, model, distributed.Ranks())
            sums += torch.stack([loss.expand(len(layers)), l1, cos]).cpu() * float(frames)
            n += float(frames)
        model.train()
        model.padding_enters_groupnorm = s3prl
        sums /= max(n, 1)
        return {"step": step, "loss": float(sums[0, 0]), "utterances": len(keys),
                **{f"l1_layer{k}": float(sums[1, j]) for j, k in enumerate(layers)},
                **{f"cos_layer{k}": float(sums[2, j]) for j, k in enumerate(layers)}}

    def checkpoint() -> None:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise TrainingDiverged(f"{cfg.out}: the student's weights are not finite after step {step} (lr {lr_at(step - 1):.3g}); "
                                   "lower --lr; the run dir keeps its last finite checkpoint and exports nothing")
        save_checkpoint(cfg.out, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                  "rng": rng_state(), "step": step, "config": cfg.to_dict(),
                                  "student_config": model_config.to_dict(), "layers": layers,
                                  "identity": identity, **({"follow": follower.state()} if follower else {})})

    # ---- the loop ----------------------------------------------------------------------
    from tqdm import tqdm

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="training", disable=not (cfg.progress and ranks.main), dynamic_ncols=True)
    t_last, waited, window_t0, window_steps = time.perf_counter(), 0.0, time.perf_counter(), 0
    last_eval: dict = {}
    for batch in loader:
        waited += time.perf_counter() - t_last  # time the step stood waiting for data
        if not s3prl:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        # forward, masked loss, backward (scaled if fp16), clip, step
        to_backprop, loss, l1, cos, _ = step_loss(batch, net, ranks, as_s3prl=s3prl)
        if not torch.isfinite(loss):  # nothing after a non-finite loss is worth keeping: no checkpoint of it, no export
            raise TrainingDiverged(f"{cfg.out}: the loss is {float(loss)} at step {step + 1} (lr {lr_at(step):.3g}); lower --lr "
                                   "or check the targets (feature-cache verify); the run dir keeps its last finite checkpoint")
        scaler.scale(to_backprop).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips such a step; else it would poison
            raise TrainingDiverged(f"{cfg.out}: the gradient is {float(grad_norm)} at step {step + 1} (lr {lr_at(step):.3g}); lower "
                                   "--lr; the run dir keeps its last finite checkpoint")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        bar.update(1)
        if init_line or notes:  # said once the first step has run: a run that fails before it keeps its error to one line
            for line in [init_line, *notes]:
                if line:
                    bar.write(line, file=sys.stderr)
            init_line, notes = None, []
        # log
        if ranks.main and (step % cfg.log_interval == 0 or step == cfg.steps):
            elapsed = time.perf_counter() - window_t0
            row = {"step": step, "loss": loss.item(), "lr": lr_at(step - 1), "grad_norm": float(grad_norm),
                   "utterances_per_rank": len(batch["lengths"]), "ranks": ranks.world,
                   **{f"l1_layer{k}": float(l1[j]) for j, k in enumerate(layers)},
                   **{f"cos_layer{k}": float(cos[j]) for j, k in enumerate(layers)},
                   "steps_per_s": window_steps / elapsed, "loader_wait_fraction": waited / elapsed}
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            _tb_log(tb, row, "train")
            bar.set_postfix(loss=f"{row['loss']:.3f}", wait=f"{row['loader_wait_fraction']:.0%}")
            window_t0, window_steps, waited = time.perf_counter(), 0, 0.0
        # evaluate and checkpoint
        if ranks.main and step % cfg.eval_interval == 0 and step < cfg.steps:
            last_eval = evaluate()
            metrics.write(json.dumps({"eval": last_eval}) + "\n")
            _tb_log(tb, last_eval, "valid")
        if ranks.main and (step % cfg.checkpoint_interval == 0 or step == cfg.steps or step == cfg.stop_after):
            checkpoint()
        if step == cfg.stop_after:
            break
        t_last = time.perf_counter()
    bar.close()
    if not ranks.main:
        distributed.close(ranks)
        return {"step": step, "out": cfg.out, "rank": ranks.rank}
    metrics.close()

    # ---- the end: held-out evaluation, plot, export --------------------------------------
    result = {"step": step, "out": cfg.out, "parameters": count_parameters(model.encoder)}
    if step == cfg.steps:
        last_eval = evaluate()
        staged(os.path.join(cfg.out, "eval.json"), lambda tmp: _write_json(tmp, last_eval))
        result["student"] = export_student(model, cfg.out, layers, src.sample_rate)
        result["eval"] = last_eval
    result["loss_plot"] = plot_losses(os.path.join(cfg.out, "metrics.jsonl"), os.path.join(cfg.out, "loss.png"))
    if tb:
        tb.close()
    distributed.close(ranks)
    return result


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


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
