"""extract_features(): corpus + teacher → a complete cache, locally or on a dask cluster.

The library function behind `extract-features`; notebooks call it directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

# The teacher, its forward pass and the statistics' fit (extract.teacher, .pipeline, .probe, .compact) are imported where
# they are used: they import torch, seconds that a re-run with nothing to do never needs (extract.known_teacher).
from extract.corpora import MAX_SECONDS, corpus_identity, note_held_out_folders
from extract.corpus import KnownFiles, scan
from extract.errors import ExtractError
from extract.forecast import check_space, first_line, forecast, seconds_per_audio_second, todo_figures
from extract.known_teacher import KnownTeacher, check_options, check_same, remember, remembered, stamp
from extract.plan import orphan_attempts, plan_parts
from extract.retake import retake
from extract.run_progress import Consolidator, RunProgress
from extract.segments import PLACEMENT as SEGMENT_PLACEMENT
from extract.segments import check as check_segments
from extract.segments import segment
from store import Cache, Layout, create_cache, default_cache_dir, fs
from store.audio_modes import AUDIO_MODES
from store.index import consolidate
from store.layout import CODECS, part_path
from store.lock import exclusive
from store.modes import TARGET_MODES, stats_digest
from store.progress import silenced
from store.spec import fingerprint, validate_spec

MIN_SEGMENT_STEP = 0.02  # one frame of a 16 kHz, 320-hop teacher: a smaller step would repeat windows endlessly


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str  # hub name or local directory
    corpus: str  # directory, fairseq TSV, Kaldi data dir or lhotse manifest (extract/corpora)
    include: tuple[str, ...] = ()  # globs: only ids, or ids under folders, matching one ('train-*'); part of the corpus's identity
    layers: tuple[int, ...] | str = (4, 8, 12)  # DistilHuBERT's targets; "all": every hidden layer 0..L (probes)
    cache_dir: str | None = None  # default: $DISTILCACHE_HOME or ~/.cache/distilcache
    revision: str | None = None  # hub revision of the teacher
    device: str = "auto"  # auto | cpu | cuda[:N]
    dtype: str = "float32"  # teacher compute dtype (bfloat16/float16 are faster on GPU, part of the spec)
    storage_dtype: str = "float16"  # float16 | bfloat16 | float32 | int8 | int4 (store/modes.py)
    audio: str = "float32"  # float32 | int16 | none (no audio kept: the trainer reads the corpus files)
    codec: str | None = None  # a new cache's codec (None: blosc-zstd, docs/benchmarks.md); an existing cache keeps its own
    batch_seconds: float | None = None  # padded audio per teacher batch; None: 200 on GPU, 0 (one utterance) on CPU
    part_seconds: float = 600.0  # audio per part: the unit of commit, resume and dask task
    max_seconds: float = 60.0  # longer files are bad input (attention is quadratic in length); not used when segmenting
    segment_seconds: float = 0.0  # >0: longer utterances become windows of this length (extract/segments.py), part of the spec
    segment_overlap: float = 0.0  # seconds shared by neighbouring windows
    on_error: str = "fail"  # fail: stop before teacher work | skip: cache the rest, record the skipped
    workers: int = 0  # >0: a dask LocalCluster with that many worker processes
    scheduler: str | None = None  # address of an existing dask scheduler
    allow_pickle: bool = False  # load .bin (pickle) teacher weights; only for teachers you trust
    repair: bool = False  # check every committed chunk's crc32c (not only the structure) and redo damaged parts
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.include, str) or not all(isinstance(g, str) and g.strip() and "\x00" not in g for g in self.include):
            raise ExtractError(f"--include {self.include!r}: give one or more globs, e.g. --include 'train-*'")
        object.__setattr__(self, "include", tuple(self.include))
        if self.on_error not in ("fail", "skip"):
            raise ExtractError(f"--on-error {self.on_error}: choose fail or skip")
        if isinstance(self.layers, str) and self.layers != "all":
            raise ExtractError(f"--layers {self.layers}: give layer numbers (4,8,12) or all")
        if self.storage_dtype not in TARGET_MODES or self.audio not in AUDIO_MODES:
            raise ExtractError(f"--storage {self.storage_dtype} / --audio {self.audio}: choose from {', '.join(TARGET_MODES)} "
                               f"and {', '.join(AUDIO_MODES)}")
        if self.codec is not None and self.codec not in CODECS:
            raise ExtractError(f"--codec {self.codec}: choose one of {', '.join(CODECS)}")
        for flag, value in (("--batch-seconds", self.batch_seconds or 0.0), ("--part-seconds", self.part_seconds),
                            ("--max-seconds", self.max_seconds), ("--segment-seconds", self.segment_seconds),
                            ("--segment-overlap", self.segment_overlap)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_SECONDS):
                raise ExtractError(f"{flag} {value}: give a finite number of seconds between 0 and {MAX_SECONDS:g}")
        if self.segment_seconds and 0 < self.segment_overlap < self.segment_seconds < self.segment_overlap + MIN_SEGMENT_STEP:
            raise ExtractError(f"--segment-seconds {self.segment_seconds:g} --segment-overlap {self.segment_overlap:g}: windows must "
                               f"step by at least {MIN_SEGMENT_STEP:g} s (one frame); lower --segment-overlap")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 4096:
            raise ExtractError(f"--workers {self.workers}: between 0 and 4096")
        if (self.batch_seconds or 0) < 0 or self.part_seconds <= 0:
            raise ExtractError("--batch-seconds must be >= 0 and --part-seconds positive")
        if self.segment_seconds < 0 or self.segment_overlap and not self.segment_seconds:
            raise ExtractError("--segment-overlap needs --segment-seconds, and --segment-seconds must be positive")
        if self.workers and self.scheduler:
            raise ExtractError("--workers and --scheduler are exclusive: --workers starts a local cluster")


@dataclass
class Summary:
    path: str
    fingerprint: str
    utterances: int
    frames: int
    audio_hours: float
    skipped: list[dict] = field(default_factory=list)
    parts_done_now: int = 0
    parts_total: int = 0
    seconds: float = 0.0
    teacher_work: bool = False
    audio_clipped: int = 0  # samples stored clipped (int16/flac audio): the student's input differs from the teacher's there

    def to_dict(self) -> dict:
        return asdict(self)


def extract_features(cfg: ExtractConfig) -> Summary:
    """Scan, plan and extract every pending part; returns the summary `--json` prints. A teacher remembered in the cache
    root (extract.known_teacher) is loaded only once there is work for it."""
    root = fs.resolve(cfg.cache_dir or default_cache_dir())
    check_options(cfg.device, cfg.dtype)  # also where the teacher is never loaded: a bad option is one line either way
    key = stamp(cfg.teacher, cfg.revision, cfg.allow_pickle)
    return extract_with(cfg, remembered(root, key, cfg.teacher, cfg.dtype) or loaded(cfg, root, key))


def loaded(cfg: ExtractConfig, root: str, key: dict | None, expected: KnownTeacher | None = None):
    """The teacher, loaded for this run (on the CPU where workers load their own), and remembered for the next run's spec
    when its files did not change while it was read. `expected`: what the record said of it, which chose the cache."""
    from extract.teacher import load_teacher

    began = time.time_ns()
    teacher = load_teacher(cfg.teacher, cfg.revision, "cpu" if (cfg.workers or cfg.scheduler) else cfg.device, cfg.dtype,
                           cfg.allow_pickle)
    warn_slow_dtype(teacher)
    if expected is not None:
        check_same(expected, teacher.known(), cfg.teacher, root)
    if key is not None and key == stamp(cfg.teacher, cfg.revision, cfg.allow_pickle):  # unchanged while it was read
        teacher.unremembered = (key, began)
    return teacher


def keep_teacher(root: str, teacher) -> None:
    """Remember a teacher this run loaded, once the run is past its refusals (a refused run leaves nothing behind)."""
    if getattr(teacher, "unremembered", None):
        remember(root, *teacher.unremembered, teacher.known())
        teacher.unremembered = None


def warn_slow_dtype(teacher) -> None:
    """float16 compute on a CPU: no fast kernels (a dry run forecast 19 min where float32 took 67 s), and it is not what
    makes a cache small. Said first, in one line, before the long run it would be."""
    if teacher.device.type == "cpu" and teacher.compute_dtype == "float16":
        print("--dtype float16 on cpu: half-precision compute has no fast CPU kernels (measured ~17x slower than float32) and "
              "saves no bytes; --storage sets the cache's size (float16, the default, is already half of float32; int8, int4 "
              "and pq less): use --dtype float32 on cpu", file=sys.stderr)


def spec_of(cfg: ExtractConfig, teacher) -> dict:
    """The cache spec this extraction asks for: teacher, layers, storage, audio, windows; no file is read."""
    layers = list(range(teacher.num_layers + 1)) if cfg.layers == "all" else list(cfg.layers)
    spec = teacher.spec(layers, cfg.storage_dtype, cfg.audio)
    if cfg.segment_seconds:
        check_segments(cfg.segment_seconds, cfg.segment_overlap, teacher.sample_rate, teacher.window)
        spec["preprocessing"]["segments"] = {"seconds": cfg.segment_seconds, "overlap": cfg.segment_overlap,
                                             "placement": SEGMENT_PLACEMENT}
    return spec


def corpus_of(cfg: ExtractConfig, teacher, known: KnownFiles | None = None) -> tuple[str, list, list]:
    """(corpus root, utterances or windows, bad entries): headers only, no teacher work. Files a cache already holds,
    unchanged since, are recognised from their stat and not opened (extract.corpus.scan)."""
    root, utts, bad = scan(cfg.corpus, teacher.sample_rate, teacher.window, 0 if cfg.segment_seconds else cfg.max_seconds, known,
                           check_known=bool(cfg.segment_seconds), include=cfg.include)  # windows planned from headers: checked
    if cfg.segment_seconds:
        utts = segment(utts, cfg.segment_seconds, cfg.segment_overlap)
    return root, utts, bad


def new_layout(cfg: ExtractConfig, teacher) -> Layout:
    """The layout a new cache gets: the teacher's hop, and --codec (blosc-zstd when not given)."""
    return Layout(hop=teacher.hop, codec=cfg.codec or "blosc-zstd")


def existing_cache(cache_root: str, fp: str | None) -> Cache | None:
    """The cache of fingerprint `fp` under `cache_root` if it exists (opened once per run: at full size an open reads
    tens of MB of index)."""
    path = os.path.join(cache_root, fp) if fp else None
    return Cache(path) if path and fs.exists(os.path.join(path, "zarr.json")) else None


def known_fingerprint(cache_root: str, spec: dict) -> tuple[str | None, tuple | None]:
    """(the cache's fingerprint, the existing statistics) before any fitting: compact modes know it only when a cache of
    this spec already exists (its statistics are kept); float modes always."""
    if not TARGET_MODES[spec["storage_dtype"]].needs_stats:
        return fingerprint(validate_spec(spec)), None
    from extract.compact import existing_stats

    existing = existing_stats(cache_root, spec) if fs.exists(cache_root) else None
    if not existing:
        return None, None
    return fingerprint(validate_spec({**spec, "storage_stats": stats_digest(existing[0])})), existing


def dry_run(cfg: ExtractConfig) -> dict:
    """`extract-features --dry-run`: the corpus, the cache it will use or create, its size in every storage mode, free
    disk, and an ETA from one timed forward; no extraction work, nothing written."""
    from extract.teacher import load_teacher

    teacher = load_teacher(cfg.teacher, cfg.revision, "cpu" if (cfg.workers or cfg.scheduler) else cfg.device, cfg.dtype,
                           cfg.allow_pickle)
    warn_slow_dtype(teacher)
    spec = spec_of(cfg, teacher)
    cache_root = fs.resolve(cfg.cache_dir or default_cache_dir())
    fp, _ = known_fingerprint(cache_root, spec)
    cache = existing_cache(cache_root, fp)
    _, utts, bad = corpus_of(cfg, teacher, KnownFiles(cache.sources()) if cache else None)
    f = forecast(teacher, spec, utts, cache_root, cfg.part_seconds, fp, cache.layout if cache else new_layout(cfg, teacher),
                 cache)
    speed = seconds_per_audio_second(teacher, spec["layers"])
    workers = max(1, cfg.workers)
    f.update(refused=len(bad), device=str(teacher.device), seconds_per_audio_second=speed,
             eta_seconds=f["todo_hours"] * 3600 * speed / workers, storage=cfg.storage_dtype, audio=cfg.audio,
             fits=f["free_bytes"] is None or f["need_bytes"] <= f["free_bytes"])
    return f


def extract_with(cfg: ExtractConfig, teacher) -> Summary:
    """extract_features() with a teacher already loaded (benchmarks time this part)."""
    with silenced(not cfg.progress):  # --quiet: no bar at all, the scan's and the statistics' included
        return _extract_with(cfg, teacher)


def _extract_with(cfg: ExtractConfig, teacher) -> Summary:
    t0 = time.time()
    spec = spec_of(cfg, teacher)
    cache_root = fs.resolve(cfg.cache_dir or default_cache_dir())

    def real():  # the teacher itself, once work needs it: a re-run with nothing to do never loads it
        nonlocal teacher
        if isinstance(teacher, KnownTeacher):
            teacher = loaded(cfg, cache_root, stamp(cfg.teacher, cfg.revision, cfg.allow_pickle), teacher)
        return teacher

    fp, existing = known_fingerprint(cache_root, spec)
    found = existing_cache(cache_root, fp)
    known = KnownFiles(found.sources() if found else None)
    root, utts, bad = corpus_of(cfg, teacher, known)
    if not cfg.include:
        note_held_out_folders(cfg.corpus, [u.uid for u in utts])
    if bad and cfg.on_error == "fail":
        lines = "\n".join(f"  {b.path}: {b.reason}" for b in bad)
        raise ExtractError(f"{len(bad)} bad file(s) or entries in {cfg.corpus}, no teacher work done (or use --on-error skip):\n{lines}")
    if cfg.scheduler:  # reached before anything is written: a refusal leaves no empty cache behind
        from extract.cluster import connect

        connect(cfg.scheduler).close()
    try:
        fs.makedirs(cache_root)
    except OSError as e:
        raise ExtractError(f"--cache-dir {cache_root}: cannot use it as a cache root ({e.strerror}); give a writable directory") from None
    keep_teacher(cache_root, teacher)
    layout = new_layout(cfg, teacher)
    if found is not None and cfg.codec and found.layout.codec != cfg.codec:
        print(f"{found.path}: keeps its codec {found.layout.codec}; --codec {cfg.codec} applies to new caches only (one cache per "
              "spec: feature-cache rm it and extract again to change it)", file=sys.stderr)
    ahead = forecast(teacher, spec, utts, cache_root, cfg.part_seconds, fp, found.layout if found else layout, found)
    check_space(ahead, cache_root, cfg.storage_dtype, cfg.audio)  # refused before any teacher work if it cannot fit
    probe = None
    if found is None or not isinstance(teacher, KnownTeacher):  # an existing cache's run probes once it has work
        cfg, probe = checked_batching(cfg, real(), spec["layers"])
    corpus_input = corpus_identity(cfg.corpus, cfg.include)
    provenance = {"teacher": cfg.teacher, "revision": cfg.revision, "corpus": root, "corpus_input": corpus_input, "batching_probe": probe}
    stats = None
    if TARGET_MODES[cfg.storage_dtype].needs_stats:  # fit on a sample first (or keep the existing cache's), then one pass
        from extract import compact
        stats, provenance["fidelity"] = existing or compact.fit_with_teacher(real(), utts, spec["layers"], cfg.storage_dtype)
        spec["storage_stats"] = stats_digest(stats)
    path = create_cache(cache_root, spec, provenance, layout, stats)
    with exclusive(path):
        cache = found if found is not None and found.path == path else Cache(path)
        cache.refresh_if_changed()  # what committed before the lock was taken
        remove_orphans(cache)
        sources = cache.sources()
        if retake(cache, utts, sources, full=cfg.repair, check=cfg.repair or not fs.is_remote(path), bad=bad, known=known):
            cache.refresh()
            sources = cache.sources()
        unsourced = [u.uid for u in utts if u.uid in cache and u.uid not in sources]
        if unsourced:  # an import without source records: nothing to compare the files with, so say so
            print(f"{cache.path}: {len(unsourced)} cached utterance(s) of this corpus have no source-file record (imported "
                  f"without one; first: {unsourced[0]}): they are kept as they are, their files never checked for changes; "
                  "`feature-cache rm` the cache to re-extract them", file=sys.stderr)
        pending = plan_parts(cache, utts, bad, teacher.sample_rate, cfg.part_seconds, sources, corpus_input)
        if pending and isinstance(teacher, KnownTeacher):
            cfg, _ = checked_batching(cfg, real(), spec["layers"])
            keep_teacher(cache_root, teacher)
        if pending:  # the first line of a run with work (after every refusal, so that a refusal stays one line)
            planned = todo_figures(teacher, spec, [p["items"] for p in pending], cache.layout, cache_root, cache)
            print(first_line({**ahead, **planned, "cache": path}), file=sys.stderr)  # the plan: retaken and retried parts too
            run = _run_dask if (cfg.workers or cfg.scheduler) else _run_local
            run(cfg, path, pending, teacher, spec, cache.layout)
        if pending or not cache.consolidated:  # an unchanged index is not rewritten (89 MB at LibriSpeech scale)
            consolidate(path)
            cache.refresh()
        remove_orphans(cache)  # attempts of workers that died during this run (a dask retry committed the part)
    return Summary(path, cache.fingerprint, len(cache), cache.total_frames,
                   round(cache.total_samples / teacher.sample_rate / 3600, 4), cache.skipped,
                   len(pending), len(cache.parts), round(time.time() - t0, 2), bool(pending), cache.audio_clipped)


def remove_orphans(cache: Cache) -> None:
    """Delete attempt directories no marker names: interrupted attempts. Local caches only, under the cache's lock."""
    if not fs.is_remote(cache.path):
        for d in orphan_attempts(cache):
            fs.rmtree(part_path(cache.path, d))
        fs.remove_stale_temp_files(cache.path)  # index.json / sources.npz temp files of a run killed mid-consolidation
        fs.remove_stale_temp_files(os.path.join(cache.path, "commits"))  # a marker's, of a writer killed while committing


def checked_batching(cfg: ExtractConfig, teacher, layers: list[int]) -> tuple[ExtractConfig, dict | None]:
    """Probe the teacher when padded batches may be used; fall back to one utterance per forward, saying so,
    when they are not exact (extract/probe.py). Returns the config to run with and the probe's result."""
    may_batch = cfg.batch_seconds is None and (cfg.workers or cfg.scheduler or teacher.device.type == "cuda") or bool(cfg.batch_seconds)
    if not may_batch:
        return cfg, None
    from extract.probe import probe_batching

    probe = probe_batching(teacher, layers)
    if not probe["exact"]:
        print(f"teacher {cfg.teacher}: padded batches are not exact for this architecture (probe: max abs diff "
              f"{probe['max_abs_diff']:.3g} > {probe['tolerance']:.3g}); extracting one utterance per forward", file=sys.stderr)
        cfg = dataclasses.replace(cfg, batch_seconds=0.0)
    return cfg, probe


def _run_local(cfg: ExtractConfig, path: str, pending: list[dict], teacher, spec: dict, layout: Layout) -> None:
    from extract import pipeline

    progress, index = RunProgress(pending, teacher.sample_rate, cfg.progress), Consolidator(path)
    try:
        for part in pending:
            pipeline.extract_part(path, part, teacher, spec, layout, cfg.batch_seconds, cfg.on_error, progress)
            index.part_done()
    finally:
        index.join()
        progress.close()


def _run_dask(cfg: ExtractConfig, path: str, pending: list[dict], teacher, spec: dict, layout: Layout) -> None:
    from extract.cluster import run_parts

    progress, index = RunProgress(pending, teacher.sample_rate, cfg.progress), Consolidator(path)

    def part_done(n_utts: int, n_samples: int) -> None:  # the client hears of each finished part once
        progress(n_utts, n_samples)
        index.part_done()

    try:
        run_parts(cfg, path, pending, spec, layout, part_done)
    finally:
        index.join()
        progress.close()
