"""`train-student`: a thin click layer over train.loop.train()."""

from __future__ import annotations

import json
import os

import click

from store.modes import TARGET_MODES
from store.oneline import OneLineCommand, cli_errors, parse_layers
from train.config import LOSSES, load_config
from train.design import PRESETS
from train.loop import train


@click.command("train-student", cls=OneLineCommand, context_settings={"show_default": True})
@click.option("--cache", is_flag=False, flag_value="", default=None,
              help="cache path or fingerprint; with no value, find the cache of --teacher/--layers. Omit to run the teacher online")
@click.option("--storage", type=click.Choice(list(TARGET_MODES)), default=None,
              help="with --cache and no value: take the cache stored this way (several caches of one teacher: float16 and its "
              "int8/pq/rvq copies); with --corpus and --layers, chooses without a fingerprint")
@click.option("--out", required=True, help="run dir: checkpoints, metrics.jsonl, loss.png, eval.json, student/")
@click.option("--teacher", default=None, help="teacher (init weights; online targets); default: the cache's")
@click.option("--corpus", default=None, type=click.Path(exists=True), help="online mode corpus; with --cache: only these ids")
@click.option("--layers", default=None, help="target layers, e.g. 4,8,12 [default: with --cache, the cache's layers; 4,8,12 "
              "when the teacher runs online]")
@click.option("--cache-dir", default=None, help="cache root [default: $DISTILCACHE_HOME or ~/.cache/distilcache]")
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSON or TOML of TrainConfig keys")
@click.option("--steps", type=int, default=None, help="[default: 200000]")
@click.option("--batch-size", type=int, default=None, help="[default: 24]")
@click.option("--lr", type=float, default=None, help="[default: 2e-4]")
@click.option("--max-crop-samples", type=int, default=None, help="[default: 250000]")
@click.option("--valid-fraction", type=float, default=None, help="[default: 0.01; 0 under --recipe s3prl, which holds none out]")
@click.option("--eval-interval", type=int, default=None, help="[default: 1000]")
@click.option("--log-interval", type=int, default=None, help="[default: 50]")
@click.option("--checkpoint-interval", type=int, default=None, help="[default: 1000]")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="stop (checkpointed) after this step (>= 1); continue with --resume")
@click.option("--num-workers", type=int, default=None, help="DataLoader workers [default: min(4, cores - 1)]")
@click.option("--init", type=click.Choice(["teacher", "random"]), default=None,
              help="teacher: copy each part whose shapes fit (said in one line) [default: teacher]")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help="student design [default: distilhubert]")
@click.option("--student-layers", type=int, default=None, help="transformer layers [default: the preset's]")
@click.option("--student-width", type=int, default=None, help="hidden size [default: the preset's; distilhubert: the teacher's]")
@click.option("--student-heads", type=int, default=None, help="attention heads [default: the preset's]")
@click.option("--student-ffn", type=int, default=None, help="feed-forward size [default: the preset's]")
@click.option("--match", default=None, help="layer-to-layer objective: STUDENT:TEACHER pairs, e.g. 1:4,2:8,3:12 "
              "[default: DistilHuBERT's heads on the last layer]")
@click.option("--loss", type=click.Choice(LOSSES), default=None,
              help="l1-cos: DistilHuBERT's L1 + cosine on the vectors; codebook-ce: cross-entropy over each codebook of a "
              "cache stored as codes (rvq8, rvq16, pq), as icefall trains on its 8-byte targets [default: l1-cos]")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None, help="[default: auto]")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N [default: auto]")
@click.option("--seed", type=int, default=None, help="data order, crops and initialisation [default: 0]")
@click.option("--resume", is_flag=True, default=None,
              help="continue the run dir's checkpoint (refused if layers, cache, teacher or hyper-parameters differ)")
@click.option("--eval-cache", default=None, help="held-out targets from this cache (same teacher), e.g. exact ones while training on int8")
@click.option("--allow-pickle", is_flag=True, default=None, help="accept a teacher with pickle (.bin) weights; only if you trust it")
@click.option("--recipe", type=click.Choice(["distilcache", "s3prl"]), default=None,
              help="s3prl: online mode trained the way s3prl's distiller trains, for A/B runs [default: distilcache]")
@click.option("--allow-partial", is_flag=True, default=None, help="train on a cache whose extraction is unfinished or running")
@click.option("--follow", is_flag=True, default=None,
              help="train while the cache is being extracted: each epoch picks up the parts committed since (implies --allow-partial)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@cli_errors(kept=lambda: what_is_kept())
def main(config_file, layers, quiet, **flags) -> None:
    """Train a DistilHuBERT student from cached targets (or from the teacher online)."""
    if layers:
        flags["layers"] = parse_layers(layers)
    if quiet:
        flags["progress"] = False
    cfg = load_config(config_file, flags)
    result = train(cfg)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "eval"}), err=True)
    click.echo(result.get("student") or cfg.out)


def what_is_kept() -> str:
    """What an interrupted run leaves, said truly: its checkpoint, or none yet (then a re-run starts over)."""
    from train import loop

    out = loop.current_out
    if out and os.path.exists(os.path.join(out, "ckpt.pt")):
        return f"{out} keeps its last checkpoint; continue with --resume"
    where = f"{out} holds" if out else "the run dir holds"
    return f"{where} no checkpoint yet (the first is written at --checkpoint-interval); run the same command to start over"


if __name__ == "__main__":
    main()
