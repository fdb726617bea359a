"""`compare-runs RUN_DIR...`: several runs side by side (design, parameters, teacher, targets, steps, held-out per-layer
L1 and cosine) and in one plot, so a sweep of student designs over one cache reads at a glance; runs whose numbers do
not compare (another teacher, other layers, another held-out set) are said so, or refused with --strict."""

from __future__ import annotations

import json
import os
import sys

import click

from store.oneline import OneLineCommand, cli_errors
from train.config import ConfigError
from train.probe.paired import margin_for, paired_difference, per_clip, verdict


def _json(path: str, required: bool, run_dir: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{run_dir}: no {os.path.basename(path)}; give run dirs of train-student runs") from None
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}); re-run that training or leave the run out") from None


def _metrics(run_dir: str) -> tuple[list[dict], list[dict]]:
    """(held-out rows, training rows) of metrics.jsonl. A malformed line is refused, except a last line cut short (a run
    still writing, or killed mid-write): that one is not a result yet."""
    held, trained = [], []
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        return held, trained
    with open(metrics) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except ValueError:
                if not line.endswith("\n"):
                    break
                raise ConfigError(f"{metrics} line {n}: not a JSON row of results; re-run that training or leave the run out") from None
            if not isinstance(row, dict) or "eval" in row and not isinstance(row["eval"], dict):
                raise ConfigError(f"{metrics} line {n}: its eval entry is not an object; leave the run out")
            if "eval" in row:
                if row["eval"]:
                    held.append(row["eval"])
            elif isinstance(row.get("step"), int) and isinstance(row.get("loss"), (int, float)):
                trained.append({"step": row["step"], "loss": row["loss"]})
    return held, trained


def read_run(run_dir: str) -> dict:
    """What a run dir says about itself: design.json, run.json (what it trained on), eval.json (once finished; before
    that the last held-out row, marked partial), and its held-out and training curves from metrics.jsonl."""
    from store.lock import is_locked

    design = _json(os.path.join(run_dir, "design.json"), True, run_dir)
    record = _json(os.path.join(run_dir, "run.json"), False, run_dir)
    final = _json(os.path.join(run_dir, "eval.json"), False, run_dir)
    missing = [k for k in ("preset", "layers", "width", "heads", "ffn", "parameters", "head_parameters") if k not in design] \
        if isinstance(design, dict) else ["everything"]
    if missing or not isinstance(final, (dict, type(None))) or not isinstance(record, (dict, type(None))):
        raise ConfigError(f"{run_dir}: design.json lacks {', '.join(missing) or 'nothing'}, or eval.json/run.json is not an object; "
                          "give run dirs written by this version of train-student")
    curve, trained = _metrics(run_dir)
    config = _json(os.path.join(run_dir, "config.json"), False, run_dir)
    planned = config.get("steps") if isinstance(config, dict) else None
    at = final.get("step") if isinstance(final, dict) else None
    stopped = type(planned) is int and type(at) is int and at < planned  # --stop-after: an eval.json of a partial run
    status = "finished" if final is not None and not stopped else "running" if is_locked(run_dir) else "unfinished"
    if final is None:
        final = curve[-1] if curve else {}
    bad = [k for k, v in final.items() if k != "step" and (k in ("loss",) or k.startswith(("l1_layer", "cos_layer")))
           and not isinstance(v, (int, float))]
    counts = [design.get(k) for k in ("parameters", "head_parameters")]
    if bad or not all(isinstance(c, int) for c in counts):
        raise ConfigError(f"{run_dir}: eval.json or design.json holds values that are not numbers ({', '.join(bad[:3]) or 'parameters'}); "
                          "re-run that training or leave the run out")
    if final and (not curve or curve[-1].get("step") != final.get("step")):
        curve.append(final)
    return {"run": run_dir, "design": design, "record": record or {}, "eval": final, "status": status,
            "step": (trained[-1]["step"] if trained else final.get("step")), "curve": [c for c in curve if c], "train_curve": trained}


def _identity(r: dict) -> dict:
    """What must be the same for runs to be compared fairly: the teacher, its layers, the held-out set."""
    rec = r["record"]
    return {"teacher": (rec.get("teacher") or {}).get("digest"), "layers": rec.get("layers") or r["design"].get("target_layers"),
            "held-out set": (rec.get("held_out") or {}).get("ids_sha256")}


def differences(runs: list[dict]) -> list[str]:
    """Why these runs' held-out numbers do not compare (different teachers, layers or held-out sets), one line each."""
    out = []
    for key, plural in (("teacher", "teachers"), ("layers", "target layers"), ("held-out set", "held-out sets")):
        seen = {json.dumps(_identity(r)[key]) for r in runs if _identity(r)[key] is not None}
        if len(seen) > 1:
            out.append(f"the runs used different {plural} ({', '.join(sorted(seen))[:160]})")
    return out


def _design_text(d: dict) -> str:
    objective = "heads" if not d.get("match") else "match " + ",".join(f"{s}:{t}" for s, t in d["match"])
    return f"{d['preset']}: {d['layers']} x {d['width']}, {d['heads']} heads, FFN {d['ffn']}, {objective}"


def _storage(rec: dict) -> str:
    c = rec.get("cache")
    if not rec:
        return "?"
    if c is None:
        return "teacher online"
    return f"{str(c.get('fingerprint'))[:12]} {c.get('storage')}{' (derived)' if c.get('derived_from') else ''}"


def table(runs: list[dict]) -> str:
    layers = sorted({int(k[len("l1_layer"):]) for r in runs for k in r["eval"] if k.startswith("l1_layer")})
    head = ["run", "design", "parameters (+heads)", "teacher", "targets", "steps", "held-out loss",
            *[f"L1 / cos layer {k}" for k in layers]]
    rows = []
    for r in runs:
        e, d, rec = r["eval"], r["design"], r["record"]
        teacher = rec.get("teacher") or {}
        name = teacher.get("name") or "?"
        steps = f"{r['step']}" + ("" if r["status"] == "finished" else f" ({r['status']}, partial)")
        rows.append([r["run"], _design_text(d), f"{d['parameters']:,} (+{d['head_parameters']:,})",
                     f"{os.path.basename(str(name).rstrip('/'))} {str(teacher.get('digest') or '')[-8:]}".strip(), _storage(rec), steps,
                     f"{e['loss']:.4f}" if isinstance(e.get("loss"), (int, float)) else "-",
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
        line = curves.plot([c["step"] for c in r["train_curve"]], [c["loss"] for c in r["train_curve"]], lw=1, alpha=0.6,
                           label=f"{label} training")[0] if r["train_curve"] else None
        curves.plot([c["step"] for c in r["curve"]], [c["loss"] for c in r["curve"]], marker="o", ls="--" if line else "-",
                    color=line.get_color() if line else None, label=f"{label} held out")
        bars.bar([j + i * width for j in range(len(layers))], [r["eval"].get(f"cos_layer{k}", 0) for k in layers], width, label=label)
    curves.set(xlabel="step", ylabel="loss", title="training loss (line) and held-out loss (points)")
    bars.set(xticks=[j + width * (len(runs) - 1) / 2 for j in range(len(layers))], xticklabels=[f"layer {k}" for k in layers],
             ylabel="held-out cosine", title="held-out cosine per target layer")
    for ax in (curves, bars):
        ax.grid(alpha=0.3)
    curves.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def is_probe(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "result.json")) and not os.path.isfile(os.path.join(run_dir, "design.json"))


def read_probe(probe_dir: str) -> dict:
    """A probe-features dir's result.json, checked: read back from disk, it is untrusted."""
    r = _json(os.path.join(probe_dir, "result.json"), True, probe_dir)
    ok = (isinstance(r, dict) and isinstance(r.get("task"), str) and isinstance(r.get("metric"), str)
          and isinstance(r.get("value"), (int, float)) and isinstance(r.get("ci95"), list) and len(r["ci95"]) == 2
          and all(isinstance(v, (int, float)) for v in r["ci95"]) and isinstance(r.get("split"), dict)
          and isinstance(r.get("upstream"), dict))
    if not ok:
        raise ConfigError(f"{probe_dir}/result.json: not a probe-features result; re-run that probe or leave it out")
    return {"run": probe_dir, **r}


def probe_table(probes: list[dict]) -> str:
    head = ["probe", "upstream", "params", "targets", "task", "metric ± 95% interval", "chance", "train/dev/test"]
    rows = []
    for p in probes:
        up, cache = p["upstream"], p.get("cache") or {}
        params = f"{up['parameters'] / 1e6:.2f}M" if isinstance(up.get("parameters"), int) else "?"
        lo, hi = p["ci95"]
        rows.append([p["run"], f"{os.path.basename(str(up.get('name') or '?').rstrip('/'))} {str(up.get('digest') or '')[-8:]}",
                     params, f"{str(cache.get('fingerprint', '?'))[:12]} {cache.get('storage', '?')}", p["task"],
                     f"{p['metric']} {p['value']:.4f} ({lo:.4f}-{hi:.4f})",
                     f"{p['chance']:.4f}" if isinstance(p.get("chance"), (int, float)) else "-",
                     "/".join(str(p["split"].get(k, "?")) for k in ("train", "dev", "test"))])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def compare_probes(probe_dirs: tuple[str, ...], as_json: bool, margin: float | None = None) -> None:
    """Probes side by side; refused when they are not the same question (another task or metric, another test set)."""
    probes = [read_probe(d) for d in probe_dirs]
    for key, what in ((lambda p: (p["task"], p["metric"]), "tasks"), (lambda p: p["split"].get("test_ids_sha256"), "test sets")):
        seen = sorted({json.dumps(key(p)) for p in probes})
        if len(seen) > 1:
            raise ConfigError(f"compare-runs: the probes answer different {what} ({', '.join(seen)[:120]}); compare probes of one "
                              "task on one test split")
    pairs = paired_rows(probes, margin)
    if as_json:
        click.echo(json.dumps({"probes": probes, "paired": pairs}))
        return
    click.echo(probe_table(probes))
    if pairs:
        click.echo(f"\npaired with {probes[0]['run']} on the same {pairs[0]['clips']} test clips (bootstrap over clips):")
        for r in pairs:
            lo, hi = r["ci95"]
            click.echo(f"  {r['run']}: {r['metric']} {r['difference']:+.4f} ({lo:+.4f} to {hi:+.4f}): {r['verdict']}")


def paired_rows(probes: list[dict], margin: float | None) -> list[dict]:
    """Each probe against the first by paired bootstrap of the per-clip difference (train.probe.paired); [] when a probe keeps
    no per-clip scores (made before they were kept: re-run it)."""
    clips = [per_clip(p) for p in probes]
    if len(probes) < 2 or any(c is None for c in clips):
        if len(probes) >= 2:
            click.echo("note: a probe keeps no per-clip scores (made by an older probe-features): no paired comparison; re-run it",
                       err=True)
        return []
    rows = []
    for p, c in zip(probes[1:], clips[1:], strict=True):
        try:
            d = paired_difference(clips[0], c)
        except ValueError:
            raise ConfigError(f"compare-runs: {p['run']} was scored on other test clips than {probes[0]['run']}") from None
        m = margin_for(p["metric"], margin)
        rows.append({"run": p["run"], "metric": p["metric"], **d, "margin": m, "verdict": verdict(p["metric"], d, m)})
    return rows


@click.command("compare-runs", cls=OneLineCommand)
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--plot", "plot_file", default=None, help="where to draw the runs in one plot [default: compare-runs.png; "
              "with --json, none unless given]")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
@click.option("--strict", is_flag=True, help="refuse runs whose teachers, target layers or held-out sets differ (default: warn)")
@click.option("--margin", type=click.FloatRange(min=0, min_open=True), default=None,
              help="probes: what 'as good as' means for the paired difference [default: 0.02 of an error rate, 0.03 of accuracy]")
@cli_errors(kept="nothing was changed")
def main(run_dirs: tuple[str, ...], plot_file: str | None, as_json: bool, strict: bool, margin: float | None) -> None:
    """Designs, teachers, targets, steps and held-out per-layer L1/cosine of RUN_DIRS side by side, and one plot of the
    training and held-out losses. A run still going shows its latest held-out results, marked partial. Probe dirs
    (probe-features --out) print upstream | params | task | metric ± interval instead."""
    probes = [d for d in run_dirs if is_probe(d)]
    if probes:
        if len(probes) != len(run_dirs):
            raise ConfigError(f"compare-runs: {probes[0]} is a probe dir, {next(d for d in run_dirs if d not in probes)} is not; "
                              "compare probes with probes, training runs with training runs")
        compare_probes(run_dirs, as_json, margin)
        return
    runs = [read_run(d) for d in run_dirs]
    differ = differences(runs)
    if differ and strict:
        raise ConfigError(f"compare-runs --strict: {differ[0]}; their held-out losses do not compare")
    for line in differ:
        click.echo(f"warning: {line}; their held-out losses do not compare (--strict refuses)", err=True)
    drawn = plot(runs, plot_file or "compare-runs.png") if plot_file or not as_json else None
    if as_json:
        click.echo(json.dumps({"runs": runs, "plot": drawn, "differences": differ}))
        return
    click.echo(table(runs))
    click.echo(f"plot: {drawn}", err=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
