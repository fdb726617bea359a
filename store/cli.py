"""`feature-cache`: list, inspect, verify, export/import and remove caches."""

from __future__ import annotations

import json
import os
import sys

import click

from store import fs
from store.audio_modes import AUDIO_MODES
from store.convert import check_convertible, convert_cache
from store.errors import NotACacheError
from store.hdf5 import export_hdf5, import_hdf5
from store.modes import TARGET_MODES
from store.oneline import OneLineGroup, cli_errors, one_line_errors, parse_layers
from store.reader import default_cache_dir, open_cache
from store.registry import check_removable, derived_from, describe, list_caches, remove_cache, size_said
from store.spec import FORMAT_VERSION
from store.verify import repair_commands, verify_cache

cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False), default=None,
    help="cache root [default: $DISTILCACHE_HOME or ~/.cache/distilcache]",
)


@click.group("feature-cache", cls=OneLineGroup)
def main() -> None:
    """Inspect and manage distilcache feature caches."""


@main.command("ls")
@cache_dir_option
@one_line_errors
def ls(cache_dir: str | None) -> None:
    """List the caches under the cache root."""
    others: list[str] = []
    caches = list_caches(cache_dir, others)
    for line in others:
        click.echo(f"other format: {line}", err=True)
    if not caches:
        click.echo(f"no caches of format {FORMAT_VERSION} under {cache_dir or default_cache_dir()}", err=True)
    by_fp = {c.fingerprint: c for c in caches}
    for c in caches:
        click.echo(ls_line(c, by_fp))


def stale(c, by_fp: dict) -> bool:
    """A derived cache whose source (under the same root) holds parts it lacks: the source grew after the conversion."""
    source = by_fp.get(c.spec.get("derived_from", {}).get("fingerprint"))
    return source is not None and bool(set(source.parts) - set(c.parts))


def ls_line(c, by_fp: dict | None = None) -> str:
    """One cache at a glance: teacher, layers, storage and audio, complete or not, utterances, hours, size, derivation."""
    teacher = os.path.basename(str(c.provenance.get("teacher") or "?").rstrip("/"))
    pending = c.pending()
    if pending.get("unknown"):
        state = "partial (no plan.json)"
    else:
        state = f"partial ({pending['parts']} part(s) pending)" if pending["parts"] else "complete"
    hours = c.total_samples / c.spec["preprocessing"]["sample_rate"] / 3600
    size = size_said(c)
    derived = c.spec.get("derived_from", {}).get("fingerprint")
    if derived and stale(c, by_fp or {}):
        derived += " (stale: the source grew since; convert again to cover it)"
    return (f"{c.fingerprint}  {teacher}  layers={','.join(map(str, c.layers))}  {c.spec['storage_dtype']}/{c.audio_mode} audio  "
            f"{state}  utterances={len(c)}  {hours:.2f} h  {size}" + (f"  derived from {derived}" if derived else "") + f"  {c.path}")



@main.command()
@click.argument("path")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--du", is_flag=True, help="also walk the files for bytes on disk and the compression ratio (slow on big caches)")
@one_line_errors
def info(path: str, cache_dir: str | None, as_json: bool, du: bool) -> None:
    """Spec, size, progress and skipped files of one cache (PATH or fingerprint)."""
    cache = open_cache(path, cache_dir)
    d = describe(cache)
    if du:
        d["bytes_on_disk"] = fs.disk_usage(cache.path)
        d["compression_ratio"] = round(d["bytes_on_disk"] / d["uncompressed_bytes"], 4) if d["uncompressed_bytes"] else None
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return
    spec = d.pop("spec")
    skipped = d.pop("skipped")
    fid = d.pop("fidelity") or {}
    stored = d.pop("stored_error") or {}
    corpora = d.pop("corpora")
    clipped = d.pop("audio_clipped")
    provenance = d.pop("provenance") or {}
    for key, value in d.items():
        click.echo(f"{key:18} {value}")
    if provenance:
        click.echo("provenance")
    for key, value in provenance.items():  # one line each: where the cache came from (a dict of them read as noise)
        if key != "fidelity" and value not in (None, "", {}):
            click.echo(f"{'  ' + key:18} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    where = (f"on {fid.get('held_out_utterances')} held-out utterances" if fid.get("held_out_utterances")
             else f"on the {fid.get('measured_on')} fitting utterances: too few to hold any out")
    for layer, m in fid.get("layers", {}).items():  # lossy modes: the error measured when the cache was made
        click.echo(f"{'error layer ' + layer:18} rel L2 mean {m['rel_l2_mean']:.4f} worst {m['rel_l2_worst']:.4f}, "
                   f"cos mean {m['cos_mean']:.5f} min {m['cos_min']:.5f}, L1 {m['l1']:.4g} ({where})")
    against = fid.get("against", "the teacher's targets")
    every = (f"on all {stored.get('parts')} parts, against {against}" if stored.get("parts") == stored.get("of_parts")
             else f"on {stored.get('parts')} of {stored.get('of_parts')} parts, against {against}: the others were imported or written "
             "before errors were recorded")
    for layer, m in stored.get("layers", {}).items():  # every stored row: a cache grown past its fitting sample shows it
        click.echo(f"{'stored layer ' + layer:18} rel L2 mean {m['rel_l2_mean']:.4f} worst {m['rel_l2_worst']:.4f}, "
                   f"cos mean {m['cos_mean']:.5f} min {m['cos_min']:.5f}, L1 {m['l1']:.4g} ({m['frames']} frames {every})")
    click.echo(f"{'layers':18} {spec['layers']}  dim={spec['dim']}  compute={spec['compute_dtype']}  storage={spec['storage_dtype']}")
    click.echo(f"{'preprocessing':18} {json.dumps(spec['preprocessing'])}")
    click.echo(f"{'teacher digest':18} {spec['teacher'].get('digest')}")
    for corpus, c in corpora.items():  # each --corpus input, with what it holds: training on several picks one (--corpus)
        click.echo(f"{'corpus':18} {corpus}: {c['utterances']} utterances, {c['hours']:.3f} h")
    if clipped:
        click.echo(f"{'audio clipped':18} {clipped} samples beyond int16 full scale, stored clipped: there the student's "
                   "input differs from the teacher's (resampling overshoot; --audio float32 keeps them exact)")
    click.echo(f"{'skipped files':18} {len(skipped)}")
    for s in skipped:
        click.echo(f"  {s['path']}: {s['reason']}")


@main.command()
@click.argument("path")
@cache_dir_option
@click.option("--sources", is_flag=True, help="also check that every source file is unchanged (size/mtime, then sha256)")
@click.option("--workers", "--threads", "workers", type=click.IntRange(min=1), default=None,
              help="processes checking parts side by side [default: one per core] (--threads: its older name)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@one_line_errors
def verify(path: str, cache_dir: str | None, sources: bool, workers: int | None, quiet: bool) -> None:
    """Check that every chunk the index needs exists and passes its crc32c, and that metadata matches the spec."""
    cache = open_cache(path, cache_dir)
    if quiet:
        problems = verify_cache(cache.path, sources=sources, workers=workers)
    else:
        with click.progressbar(length=len(cache.parts), label="verifying", file=sys.stderr) as bar:
            problems = verify_cache(cache.path, progress=lambda _part: bar.update(1), sources=sources, workers=workers)
    for p in problems:
        click.echo(f"damaged: {p}", err=True)
    if problems:
        fixes = repair_commands(cache)
        click.echo(f"{len(problems)} problem(s); repair with: {' ; '.join(fixes)}", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(cache.parts)} parts, {len(cache)} utterances, {cache.total_frames} frames")


@main.command()
@click.argument("path")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True)
@cache_dir_option
@one_line_errors
def export(path: str, out: str, fmt: str, cache_dir: str | None) -> None:
    """Write a cache to OUT (HDF5: layer_K/<uid>, audio/<uid>, spec as attributes)."""
    n = export_hdf5(open_cache(path, cache_dir).path, out)
    click.echo(f"exported {n} utterances to {out}")


@main.command("import")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hdf5"]), default="hdf5", show_default=True)
@cache_dir_option
@one_line_errors
def import_(src: str, fmt: str, cache_dir: str | None) -> None:
    """Create (or extend) the cache described by an exported file."""
    cache = import_hdf5(src, cache_dir)
    click.echo(cache.path)


@main.command()
@click.argument("src")
@click.option("--storage", type=click.Choice(list(TARGET_MODES)), required=True, help="how the new cache stores targets")
@click.option("--audio", type=click.Choice(AUDIO_MODES), default=None, help="how it keeps audio [default: as the source]")
@click.option("--layers", "layer_list", default=None, help="keep only these layers, e.g. 2,4,6 [default: all the source has]")
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="last stdout line: one JSON summary")
@cli_errors(kept="every converted part is kept; re-run the same command to continue")
def convert(src: str, storage: str, audio: str | None, layer_list: str | None, cache_dir: str | None, as_json: bool) -> None:
    """A derived cache of SRC in another storage mode (its own fingerprint; no teacher run); prints its path last."""
    layers = list(parse_layers(layer_list)) if layer_list else None
    source = open_cache(src, cache_dir)
    check_convertible(source, storage, audio, layers)
    with click.progressbar(length=len(source.parts), label="converting", file=sys.stderr) as bar:
        dst = convert_cache(source.path, storage, audio, cache_dir, progress=lambda _p: bar.update(1), layers=layers)
    fid = (dst.provenance.get("fidelity") or {}).get("layers", {})
    for layer, m in fid.items():
        click.echo(f"layer {layer}: rel L2 mean {m['rel_l2_mean']:.4f} worst {m['rel_l2_worst']:.4f}, cos min {m['cos_min']:.5f}", err=True)
    summary = {"path": dst.path, "fingerprint": dst.fingerprint, "source": source.fingerprint, "utterances": len(dst),
               "frames": dst.total_frames, "storage": storage, "audio": dst.audio_mode, "fidelity": fid}
    click.echo(json.dumps(summary) if as_json else dst.path)


@main.command()
@click.argument("path")
@cache_dir_option
@click.option("--yes", is_flag=True, help="do not ask")
@one_line_errors
def rm(path: str, cache_dir: str | None, yes: bool) -> None:
    """Delete a cache (PATH or fingerprint); also a broken one (no zarr.json), never anything else."""
    try:
        target = open_cache(path, cache_dir).path
    except NotACacheError:
        target = path  # a broken cache (interrupted rm or create): check_removable decides whether it is one
    check_removable(target)  # refused before anyone is asked
    if not yes:
        click.confirm(f"delete {target}?", abort=True)
    root, gone = os.path.split(os.path.normpath(target))
    remove_cache(target)
    click.echo(f"removed {target}")
    derived = derived_from(gone, root) if not fs.is_remote(target) else []
    if derived:
        click.echo(f"{len(derived)} cache(s) derived from it remain, each whole on its own (first: {derived[0]}); "
                   "feature-cache rm them too if they are not wanted", err=True)


@main.command()
@click.argument("paths", nargs=-1)
@cache_dir_option
@one_line_errors
def upgrade(paths: tuple[str, ...], cache_dir: str | None) -> None:
    """Bring caches of an older format up to this one, in place (metadata only: targets untouched). Without PATH: every
    cache under the cache root."""
    from store.upgrade import upgrade_cache

    root = cache_dir or default_cache_dir()
    if not paths:
        paths = tuple(os.path.join(root, n) for n in sorted(fs.listdir(root)) if not n.startswith(".")
                      and fs.exists(os.path.join(root, n, "zarr.json"))) if fs.isdir(root) else ()
        if not paths:
            click.echo(f"no caches under {root}", err=True)
    for path in paths:
        if not fs.exists(path) and fs.exists(os.path.join(root, path)):
            path = os.path.join(root, path)  # a fingerprint, as ls shows it
        click.echo(upgrade_cache(path))
