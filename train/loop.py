"""Train a DistilHuBERT student, read top to bottom (after nanoGPT's train.py).

    train-student --cache --teacher facebook/hubert-base-ls960 --out runs/dh          # from the cache
    train-student --teacher facebook/hubert-base-ls960 --corpus LibriSpeech --out runs/online   # teacher online

Setup is train.prepare.prepare() (every choice, made once); here `evaluate()` and `lr_at(step)`, then the loop:
fetch a batch (timed: loader wait), targets (cache, or the teacher online), forward, masked loss, backward, clip, step;
log, evaluate, checkpoint. At the end: eval.json, loss.png and the exported student.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from extract.teacher import resolve_device
from store.lock import exclusive
from train import distributed
from train.checkpoint import (
    rng_state,
    save_checkpoint,
)
from train.codebook_loss import codebook_ce
from train.config import ConfigError, TrainConfig, TrainingDiverged
from train.data import CachedCrops, collate
from train.export.student import export_student, plot_losses, write_json
from train.loss import distill_loss
from train.model import count_parameters
from train.prepare import Run, prepare
from train.record import record_end
from train.targets import TargetSource


class _Batches:
    """A finite batch sampler over an endless stream (DataLoader wants __iter__ and __len__)."""

    def __init__(self, stream, n: int):
        self.stream, self.n = stream, n

    def __iter__(self):
        return itertools.islice(self.stream, self.n)

    def __len__(self) -> int:
        return self.n


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


def _train(cfg: TrainConfig, ranks: distributed.Ranks, device: torch.device) -> dict:
    run = prepare(cfg, ranks, device)
    return loop(run, batches(run))


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
