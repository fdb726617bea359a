"""`compare-runs RUN_DIR...`: several runs side by side (design, parameters, held-out per-layer L1 and cosine) and in
one plot, so a sweep of student designs over one cache reads at a glance."""

from __future__ import annotations

import json
import os
import sys

import click

from store.oneline import OneLineCommand, cli_errors
from train.config import ConfigError


def read_run(run_dir: str) -> dict:
    """What a finished run dir says about itself: design.json, eval.json and the held-out curve from metrics.jsonl."""
    found = {}
    for name in ("design.json", "eval.json"):
        path = os.path.join(run_dir, name)
        try:
            with open(path) as f:
                found[name] = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{run_dir}: no {name}; give run dirs of finished train-student runs") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: unreadable ({type(e).__name__}); re-run that training or leave the run out") from None
    missing = [k for k in ("preset", "layers", "width", "heads", "ffn", "parameters", "head_parameters") if k not in found["design.json"]]
    if missing or not isinstance(found["eval.json"], dict):
        raise ConfigError(f"{run_dir}: design.json lacks {', '.join(missing) or 'nothing'} or eval.json is not an object; "
                          "give run dirs written by this version of train-student")
    curve = []
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            for n, line in enumerate(f, 1):
                if not line.startswith('{"eval"'):
                    continue
                try:
                    row = json.loads(line)["eval"]
                except (ValueError, KeyError):
                    raise ConfigError(f"{metrics} line {n}: not a JSON row of held-out results; re-run that training or leave "
                                      "the run out") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{metrics} line {n}: its eval entry is not an object; leave the run out")
                curve.append(row)
    final = found["eval.json"]
    bad = [k for k, v in final.items() if k != "step" and (k in ("loss",) or k.startswith(("l1_layer", "cos_layer")))
           and not isinstance(v, (int, float))]
    counts = [found["design.json"].get(k) for k in ("parameters", "head_parameters")]
    if bad or not all(isinstance(c, int) for c in counts):
        raise ConfigError(f"{run_dir}: eval.json or design.json holds values that are not numbers ({', '.join(bad[:3]) or 'parameters'}); "
                          "re-run that training or leave the run out")
    if final and (not curve or curve[-1].get("step") != final.get("step")):
        curve.append(final)
    return {"run": run_dir, "design": found["design.json"], "eval": final, "curve": [c for c in curve if c]}


def _design_text(d: dict) -> str:
    objective = "heads" if not d.get("match") else "match " + ",".join(f"{s}:{t}" for s, t in d["match"])
    return f"{d['preset']}: {d['layers']} x {d['width']}, {d['heads']} heads, FFN {d['ffn']}, {objective}"


def table(runs: list[dict]) -> str:
    layers = sorted({int(k[len("l1_layer"):]) for r in runs for k in r["eval"] if k.startswith("l1_layer")})
    head = ["run", "design", "parameters (+heads)", "held-out loss", *[f"L1 / cos layer {k}" for k in layers]]
    rows = []
    for r in runs:
        e, d = r["eval"], r["design"]
        rows.append([r["run"], _design_text(d), f"{d['parameters']:,} (+{d['head_parameters']:,})", f"{e.get('loss', float('nan')):.4f}",
                     *[f"{e[f'l1_layer{k}']:.4f} / {e[f'cos_layer{k}']:.4f}" if f"l1_layer{k}" in e else "-" for k in layers]])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def plot(runs: list[dict], out_png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    layers = sorted({int(k[len("cos_layer"):]) for r in runs for k in r["eval"] if k.startswith("cos_layer")})
    width = 0.8 / max(1, len(runs))
    for i, r in enumerate(runs):
        label = f"{os.path.basename(os.path.normpath(r['run']))} ({r['design']['preset']}, {r['design']['parameters'] / 1e6:.1f}M)"
        curves.plot([c["step"] for c in r["curve"]], [c["loss"] for c in r["curve"]], marker="o", label=label)
        bars.bar([j + i * width for j in range(len(layers))], [r["eval"].get(f"cos_layer{k}", 0) for k in layers], width, label=label)
    curves.set(xlabel="step", ylabel="held-out loss", title="held-out loss")
    bars.set(xticks=[j + width * (len(runs) - 1) / 2 for j in range(len(layers))], xticklabels=[f"layer {k}" for k in layers],
             ylabel="held-out cosine", title="held-out cosine per target layer")
    for ax in (curves, bars):
        ax.grid(alpha=0.3)
    curves.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


@click.command("compare-runs", cls=OneLineCommand)
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--plot", "plot_file", default="compare-runs.png", show_default=True, help="where to draw the runs in one plot")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
@cli_errors(kept="nothing was changed")
def main(run_dirs: tuple[str, ...], plot_file: str, as_json: bool) -> None:
    """Designs, parameter counts and held-out per-layer L1/cosine of RUN_DIRS side by side, and one plot."""
    runs = [read_run(d) for d in run_dirs]
    drawn = plot(runs, plot_file)
    if as_json:
        click.echo(json.dumps({"runs": runs, "plot": drawn}))
        return
    click.echo(table(runs))
    click.echo(f"plot: {drawn}", err=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
