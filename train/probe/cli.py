"""`probe-features`: a thin click layer over train.probe.features.probe_features()."""

from __future__ import annotations

import json

import click

from store.oneline import OneLineCommand, cli_errors, parse_layers
from train.probe.features import TASKS, TOKENS, ProbeConfig, probe_features


@click.command("probe-features", cls=OneLineCommand, context_settings={"show_default": True})
@click.option("--cache", required=True, help="cache path or fingerprint of the upstream's layers (extract-features --layers all)")
@click.option("--task", type=click.Choice(TASKS), required=True, help="classify: mean-pool + linear; ctc: linear per frame + CTC")
@click.option("--labels", required=True, help="TSV id<TAB>label, Kaldi text/utt2spk, or lhotse supervisions (*.jsonl[.gz])")
@click.option("--out", required=True, help="probe dir: result.json, metrics.jsonl, layers.png")
@click.option("--cache-dir", default=None, help="cache root [default: $DISTILCACHE_HOME or ~/.cache/distilcache]")
@click.option("--field", default="text", help="lhotse supervisions: the label's key (text, speaker, or a custom field)")
@click.option("--tokens", type=click.Choice(list(TOKENS)), default="char", help="ctc: what a transcript is made of (CER, PER, WER)")
@click.option("--layers", default=None, help="cached layers to weigh [default: all the cache has]")
@click.option("--features", type=click.Choice(["cache", "logmel"]), default="cache",
              help="logmel: 80 log-mel bins of the cached audio instead of its layers, the baseline with no upstream")
@click.option("--train-ids", default=None, type=click.Path(exists=True),
              help="training ids: a file (one per line), a Kaldi data dir or a lhotse manifest (with --test-ids)")
@click.option("--test-ids", default=None, type=click.Path(exists=True), help="test ids, as --train-ids")
@click.option("--dev-ids", default=None, type=click.Path(exists=True),
              help="dev ids (they choose the epoch), as --train-ids [default: a hash split of the training side]")
@click.option("--test-fraction", type=float, default=0.2, help="hash split by recording, without id files")
@click.option("--dev-fraction", type=float, default=0.1, help="hash split by recording of the training side, without --dev-ids")
@click.option("--epochs", type=int, default=100, help="at most; the epoch is chosen on dev")
@click.option("--patience", type=int, default=20, help="stop when dev has not improved for this many epochs")
@click.option("--batch-size", type=int, default=16)
@click.option("--lr", type=float, default=None, help="Adam's learning rate [default: 1e-2 for ctc, 1e-3 for classify, as SUPERB]")
@click.option("--seed", type=int, default=0, help="the first seed")
@click.option("--seeds", type=int, default=1, help="heads trained with seeds --seed.. --seed+N-1, pooled per test clip: mean, range "
              "and one interval (compare-runs pairs two probes clip by clip)")
@click.option("--select", type=click.Choice(["loss", "error"]), default=None,
              help="which dev score chooses the epoch [default: loss for ctc, whose error wanders on its blank plateau; error for "
              "classify]")
@click.option("--memory-gb", type=float, default=4.0,
              help="ctc: features kept in memory up to this many GB, else read from the cache per batch (memory flat)")
@click.option("--verbose", is_flag=True, help="list every id left out")
@click.option("--quiet", is_flag=True, help="no progress bar (one per seed, over its epochs, with the dev scores)")
@click.option("--json", "as_json", is_flag=True, help="last stdout line: result.json's content")
@cli_errors(kept="nothing was changed")
def main(layers, as_json, quiet, **flags) -> None:
    """Train a SUPERB-style probe on a cache's frozen layers and report its test metric with a 95% interval."""
    result = probe_features(ProbeConfig(layers=parse_layers(layers) if layers else (), progress=not quiet, **flags))
    lo, hi = result["ci95"]
    seeds, (low, high) = result["seeds"], result["value_range"]
    epochs = [r["best_epoch"] for r in seeds]
    chosen = f"epoch {epochs[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds (range {low:.4f}-{high:.4f}; epochs {epochs})"
    chance = f", chance {result['chance']:.4f}" if "chance" in result else ""
    sizes = f"train/dev/test {result['split']['train']}/{result['split']['dev']}/{result['split']['test']}"
    click.echo(f"{result['task']} {result['metric']} {result['value']:.4f} (95% interval {lo:.4f}-{hi:.4f}{chance}; {sizes}), "
               f"{chosen} (chosen by {result['selected_by']}); {flags['out']}/result.json")
    if as_json:
        click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
