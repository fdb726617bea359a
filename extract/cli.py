"""`extract-features`: run the teacher once over a corpus into a cache. Thin layer over extract_features()."""

from __future__ import annotations

import json
import sys

import click

from extract.forecast import check_space
from extract.run import ExtractConfig, extract_features
from extract.run import dry_run as extract_dry_run
from store.audio_modes import AUDIO_MODES
from store.layout import CODECS
from store.modes import TARGET_MODES
from store.oneline import OneLineCommand, cli_errors, parse_layers
from store.reader import default_cache_dir


def parse_extract_layers(value: str) -> tuple[int, ...] | str:
    """--layers of extract-features: numbers, or `all` (every hidden layer 0..L of the teacher, for probes)."""
    return "all" if value.strip().lower() == "all" else parse_layers(value)


@click.command("extract-features", cls=OneLineCommand, context_settings={"show_default": True})
@click.option("--teacher", required=True, help="hub name (e.g. facebook/hubert-base-ls960) or local model directory")
@click.option("--corpus", required=True, type=click.Path(exists=True),
              help="audio directory (recursive), fairseq TSV, Kaldi data dir (wav.scp [+ segments]) or lhotse manifest (*.jsonl.gz)")
@click.option("--layers", default="4,8,12", help="teacher layers to cache (0 = input to layer 1), or all (0..L, for probe-features)")
@click.option("--cache-dir", default=None, help="cache root [default: $DISTILCACHE_HOME or ~/.cache/distilcache]")
@click.option("--revision", default=None, help="hub revision of the teacher")
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", help="teacher compute dtype")
@click.option("--storage", "--storage-dtype", "storage_dtype", type=click.Choice(list(TARGET_MODES)), default="float16",
              help="how targets are stored: int8/int4 are lossy, with their error measured and kept (--storage-dtype: older name)")
@click.option("--audio", type=click.Choice(AUDIO_MODES), default="float32",
              help="how the teacher's input is kept: int16 is exact for 16-bit sources; none keeps none (training reads the files)")
@click.option("--codec", type=click.Choice(CODECS), default=None,
              help="a new cache's codec [default: blosc-zstd]; an existing cache keeps its own (said in one line)")
@click.option("--batch-seconds", type=click.FloatRange(min=0), default=None,
              help="padded audio seconds per teacher batch [default: 200 on GPU; 0 = one utterance per forward on CPU]")
@click.option("--part-seconds", type=click.FloatRange(min=0, min_open=True), default=600.0,
              help="audio per part (unit of commit and resume)")
@click.option("--max-seconds", type=click.FloatRange(min=0), default=60.0,
              help="longer files are bad input (0: no limit); not used with --segment-seconds")
@click.option("--segment-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="cut longer utterances into windows of S seconds, each its own utterance (15.625 = 250,000 samples, "
                   "the official crop); the last window ends at the end")
@click.option("--segment-overlap", type=click.FloatRange(min=0), default=0.0, help="seconds shared by neighbouring windows")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="start a dask LocalCluster with N worker processes")
@click.option("--scheduler", default=None, help="address of an existing dask scheduler (tcp://host:8786)")
@click.option("--include", multiple=True, metavar="GLOB",
              help="only ids, or ids under folders, matching GLOB (repeatable): --include 'train-*' takes LibriSpeech's training "
                   "folders, not dev-*/test-*; recorded as part of the corpus")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", help="bad input files")
@click.option("--allow-pickle", is_flag=True, help="allow non-safetensors teacher weights (trusted teachers only)")
@click.option("--repair", is_flag=True, help="check every committed chunk's crc32c too (not only that every file is there) "
              "and re-extract damaged parts")
@click.option("--dry-run", is_flag=True, help="say what would be done (files, hours, parts, cache, size per storage mode, free disk, "
              "ETA from one timed forward); no extraction, nothing written")
@click.option("--json", "as_json", is_flag=True, help="last stdout line: one JSON summary")
@click.option("--quiet", is_flag=True, help="no progress bar")
@cli_errors(kept="every committed part is kept; re-run the same command to continue")
def main(teacher, corpus, layers, cache_dir, revision, device, dtype, storage_dtype, audio, codec, batch_seconds, part_seconds,
         max_seconds, segment_seconds, segment_overlap, workers, scheduler, include, on_error, allow_pickle, repair, dry_run, as_json,
         quiet) -> None:
    """Run TEACHER once over CORPUS and cache its LAYERS; prints the cache path last."""
    cfg = ExtractConfig(teacher=teacher, corpus=corpus, include=include, layers=parse_extract_layers(layers), cache_dir=cache_dir,
                        revision=revision,
                        device=device, dtype=dtype, storage_dtype=storage_dtype, audio=audio, codec=codec, batch_seconds=batch_seconds,
                        part_seconds=part_seconds, max_seconds=max_seconds,
                        segment_seconds=segment_seconds or 0.0, segment_overlap=segment_overlap, on_error=on_error, workers=workers,
                        scheduler=scheduler, allow_pickle=allow_pickle, repair=repair, progress=not quiet)
    if dry_run:
        forecast = extract_dry_run(cfg)
        check_space(forecast, cfg.cache_dir or default_cache_dir(), storage_dtype, audio)  # would not fit: one line, exit 2
        show_dry_run(forecast, as_json)
        return
    s = extract_features(cfg)
    if not s.teacher_work:
        click.echo(f"cache complete, no teacher work: {s.utterances} utterances, {s.frames} frames", err=True)
    else:
        click.echo(f"extracted {s.parts_done_now} part(s) in {s.seconds:.1f} s: cache holds {s.utterances} utterances, "
                   f"{s.audio_hours:.3f} h, {s.frames} frames", err=True)
    if s.audio_clipped:
        click.echo(f"warning: {s.audio_clipped} audio samples are beyond int16 full scale and stored clipped (--audio {audio}): the "
                   "student's input differs from the teacher's there; --audio float32 keeps them exact", err=True)
    for item in s.skipped:
        click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
    click.echo(json.dumps(s.to_dict()) if as_json else s.path)
    sys.stdout.flush()


def show_dry_run(f: dict, as_json: bool) -> None:
    from extract.forecast import duration
    from store.registry import human_bytes as human

    t, chosen = f["expected_bytes"], f"{f['storage']} targets + {f['audio']} audio"
    click.echo(f"corpus       {f['utterances']} utterances ({f['windows']} of them windows), {f['hours']:.3f} h; {f['refused']} refused")
    click.echo(f"cache        {f['cache'] or 'new (its statistics are fitted first)'}: "
               + (f"exists, {f['cached_utterances']} utterances cached" if f["exists"] else "would be created"))
    click.echo(f"to extract   {f['todo_utterances']} utterances, {f['todo_hours']:.3f} h, {f['todo_frames']} frames, {f['parts']} part(s)")
    click.echo(f"size         at most {human(f['need_bytes'])} on disk for {chosen}; before the codec, targets: "
               + ", ".join(f"{m} {human(b)}" for m, b in t["targets"].items()) + "; audio: "
               + ", ".join(f"{m} {human(b)}" for m, b in t["audio"].items()))
    free = "no limit (object store)" if f["free_bytes"] is None else human(f["free_bytes"])
    click.echo(f"free disk    {free}: fits")
    click.echo(f"ETA          {duration(f['eta_seconds'])} on {f['device']} ({f['seconds_per_audio_second'] * 1000:.1f} ms per audio "
               "second, one timed forward)")
    if as_json:
        click.echo(json.dumps(f))


if __name__ == "__main__":
    main()
