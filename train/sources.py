"""Where targets come from: a cache (checked against the teacher and layers) or the teacher online."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from store import Cache, SpecMismatchError, default_cache_dir, list_caches, open_cache
from train.config import TrainConfig
from train.data import CachedCrops, CorpusCrops, split_ids

DISTILHUBERT_LAYERS = (4, 8, 12)


@dataclass
class Sources:
    """What a run trains on, gathered once by load_sources: the rest of the preparation reads this record only."""

    teacher_config: dict  # for the student's config
    layers: list[int]
    sample_rate: int
    do_normalize: bool
    train: CachedCrops
    valid: CachedCrops | None
    cache: Cache | None = None
    teacher: object | None = None  # extract.Teacher: online targets, or init weights
    described: dict | None = None  # the cache, as the run's first line and run.json say it (None: online)
    follow: Callable[[], list[str]] | None = None  # --follow: the ids each epoch re-reads


def _short(digest: str) -> str:
    return digest.split(":")[-1][:12]


def find_cache_for(cfg: TrainConfig, layers: list[int], digest: str) -> Cache:
    """`--cache` with no value: the cache of this teacher holding the layers, narrowed by --storage and --corpus; exact
    storage first, then the most utterances. Candidates that still differ in what they hold (segmenting, corpora) are
    refused with each one described as `feature-cache ls` does, and the selectors that would choose."""
    root = cfg.cache_dir or default_cache_dir()
    fits = [c for c in list_caches(cfg.cache_dir) if c.spec["teacher"]["digest"] == digest and set(layers) <= set(c.layers)]
    if not fits:
        raise SpecMismatchError(f"no cache under {root} for --teacher {cfg.teacher} with layers "
                                f"{','.join(map(str, layers))}; run extract-features with them first (feature-cache ls lists caches)")
    for asked, keep in ((cfg.storage, lambda c: c.spec["storage_dtype"] == cfg.storage),
                        (cfg.corpus, lambda c: _holds(c, cfg.corpus))):
        if asked:
            chosen = [c for c in fits if keep(c)]
            if not chosen:
                raise SpecMismatchError(f"--cache: none of the {len(fits)} caches of --teacher {cfg.teacher} with layers "
                                        f"{','.join(map(str, layers))} under {root} fits {_selector(cfg, asked)} ({_listed(fits)})")
            fits = chosen
    if len({json.dumps(c.spec["preprocessing"].get("segments"), sort_keys=True) for c in fits}) > 1:
        refuse_ambiguous(cfg, fits, "segmented differently (full-context and crop-consistent targets are different experiments)")
    best = max(map(_exactness, fits))
    top = [c for c in fits if _exactness(c) == best]  # exact storage first: a derived int8/int4/pq copy only when alone
    if len({json.dumps(sorted(c.corpora()), sort_keys=True) for c in top}) > 1:
        refuse_ambiguous(cfg, top, "holding different corpora")
    return max(top, key=len)


def refuse_ambiguous(cfg: TrainConfig, fits: list[Cache], why: str) -> None:
    raise SpecMismatchError(f"--cache: {len(fits)} caches of --teacher {cfg.teacher} fit, {why}: {_listed(fits)}; choose with "
                            "--storage MODE, --corpus DIR or --layers, or give --cache PATH")


def _selector(cfg: TrainConfig, asked: str) -> str:
    return f"--storage {asked}" if asked == cfg.storage else f"--corpus {asked}"


def _holds(cache: Cache, corpus: str) -> bool:
    """Whether the cache holds utterances of --corpus (an unreadable --corpus is the corpus reader's one line)."""
    try:
        return bool(subset_ids(cache, corpus))
    except SpecMismatchError:
        return False


def _listed(caches: list[Cache]) -> str:
    """Each cache as `feature-cache ls` shows it, on the one line a refusal is."""
    return "; ".join(f"{c.fingerprint} ({describe_candidate(c)})" for c in caches)


def describe_candidate(c: Cache) -> str:
    from store.registry import size_said

    corpora = ", ".join(c.corpora()) or "no utterances"
    derived = c.spec.get("derived_from", {}).get("fingerprint")
    return (f"{c.spec['storage_dtype']} targets, {c.audio_mode} audio, layers {','.join(map(str, c.layers))}, {_segments(c)}, "
            f"corpus {corpora}, {len(c)} utterances, {size_said(c)}" + (f", derived from {derived}" if derived else ""))


def _exactness(cache: Cache) -> tuple:
    """How close a cache's targets are to the teacher's: lossless float storage, not derived, fp32 compute, wider floats."""
    rank = {"float32": 2, "float16": 1}.get(cache.spec["storage_dtype"], 0)
    return (not cache.mode.needs_stats, "derived_from" not in cache.spec, cache.spec["compute_dtype"] == "float32", rank)


def describe_cache(cache: Cache) -> dict:
    """Which cache a run trains from, as the run's first line and run.json say it."""
    derived = cache.spec.get("derived_from") or {}
    return {"path": cache.path, "fingerprint": cache.fingerprint, "storage": cache.spec["storage_dtype"], "audio": cache.audio_mode,
            "compute_dtype": cache.spec["compute_dtype"], "derived_from": derived.get("fingerprint"),
            "lossy": bool(cache.mode.needs_stats), "utterances": len(cache)}


def _segments(cache: Cache) -> str:
    seg = cache.spec["preprocessing"].get("segments")
    return f"--segment-seconds {seg['seconds']:g}" if seg else "whole utterances"


def check_complete(cache: Cache, allow_partial: bool) -> None:
    """Training on a cache that is still being extracted (or was interrupted) sees only part of the corpus: say so."""
    from store.lock import is_locked

    pending = cache.pending()
    running = is_locked(cache.path)
    if pending.get("unknown") and not running:
        line = f"{cache.path}: its plan.json is missing or unreadable, so nothing says the extraction finished"
        if not allow_partial:
            raise SpecMismatchError(f"{line}; re-run the extract-features (or convert/import) that wrote it (committed parts "
                                    "are kept), or pass --allow-partial")
        print(f"warning: {line}; training on the committed utterances (--allow-partial)", file=sys.stderr)
        return
    if not (pending["parts"] or running):
        return
    planned = len(cache) + pending["utterances"]
    state = "is being extracted now" if running else "is unfinished"
    line = (f"{cache.path} {state}: {len(cache)} of {planned} planned utterances committed, {pending['parts']} part(s) pending")
    if not allow_partial:
        raise SpecMismatchError(f"{line}; finish it with extract-features, or pass --allow-partial to train on what is there")
    print(f"warning: {line}; training on the committed utterances (--allow-partial)", file=sys.stderr)


def one_corpus(cache: Cache) -> list[str]:
    """All ids of a cache that holds one corpus; a cache holding several (a dev set or other cuts of the same audio
    extracted with the same teacher) is refused until --corpus chooses, so overlapping audio is never trained on twice."""
    corpora = cache.corpora()
    if len(corpora) > 1:
        listed = "; ".join(f"{c} ({v['utterances']} utterances, {v['hours']:.3f} h)" for c, v in corpora.items())
        raise SpecMismatchError(f"{cache.path} holds {len(corpora)} corpora ({listed}); choose the one to train on with --corpus")
    return cache.utterance_ids


def follow_ids(cache: Cache, corpus: str | None):
    """--follow: what each epoch re-reads: the --corpus subset, else the one corpus the cache held at the start (parts of
    another corpus committed meanwhile are not this run's)."""
    if corpus:
        return lambda: subset_ids(cache, corpus)
    started = list(cache.corpora())
    if len(started) == 1:
        return lambda: [u for u in cache.utterance_ids if cache.corpus_of(u) == started[0]]
    return lambda: one_corpus(cache)


def subset_ids(cache: Cache, corpus: str) -> list[str]:
    """The cache's ids for the utterances of `corpus`: one of the --corpus inputs the cache holds, a subdirectory or
    manifest of one, or a Kaldi dir / lhotse manifest whose ids it holds. Windows cut by --segment-seconds go with
    their source. Ids come from one corpus's id space only: the same file under two roots is never selected twice.

    Files match by their path under that corpus's root, not by the subset's own relative path
    (train-clean-100/103/... is 103/... relative to the subset)."""
    from extract.corpora import read_corpus
    from extract.segments import parent

    recorded = cache.corpora()
    asked = os.path.realpath(corpus)
    if asked in recorded and not os.path.exists(corpus):
        return [u for u in cache.utterance_ids if cache.corpus_of(u) == asked]
    _, entries, _ = read_corpus(corpus)
    roots = [c for c in recorded if os.path.isdir(c) and not os.path.isfile(os.path.join(c, "wav.scp"))]
    roots += [os.path.realpath(cache.provenance["corpus"])] if cache.provenance.get("corpus") else []
    inside = [r for r in roots if asked == r or asked.startswith(r.rstrip(os.sep) + os.sep)]
    root = max(inside, key=len) if inside else None  # the innermost corpus holding the subset: one id space
    wanted = set()
    for e in entries:
        if e.where != e.path:  # a manifest entry (Kaldi, lhotse): its id is the cache's id
            wanted.add(e.uid)
        elif root:  # a file of a directory or TSV: its id is its path under that corpus's root
            under = os.path.relpath(os.path.realpath(e.path), root)
            if not under.startswith(".."):
                wanted.add(os.path.splitext(under)[0].replace(os.sep, "/"))
    ids = [u for u in cache.utterance_ids if u in wanted or parent(u) in wanted or cache.corpus_of(u) == asked]
    if not ids:
        raise SpecMismatchError(f"--corpus {corpus}: none of its {len(entries)} utterances is in {cache.path}, whose corpus root is "
                                f"{root}; give a directory under that root, or a manifest of ids the cache holds")
    return ids


def load_sources(cfg: TrainConfig) -> Sources:
    from extract import load_teacher
    from extract.corpus import scan
    from train.design import parse_match

    asked = cfg.layers or tuple(t for _, t in parse_match(cfg.match))  # --match names the teacher layers it predicts
    layers = sorted(asked or DISTILHUBERT_LAYERS)
    teacher = None
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, device="cpu", allow_pickle=cfg.allow_pickle)
    if cfg.cache is None:  # online: the teacher runs every step, on the same crops
        teacher.check_layers(layers)
        _, utts, _ = scan(cfg.corpus, teacher.sample_rate, teacher.window)
        by_id = {u.uid: u for u in utts}
        warn_held_out_named(by_id)
        train_ids, valid_ids = split_ids(sorted(by_id), cfg.valid_fraction, lambda u: by_id[u].recording or u)

        def crops(ids, random_crop):
            return CorpusCrops([by_id[i] for i in ids], teacher.sample_rate, teacher.hop, teacher.window, cfg.max_crop_samples,
                               cfg.seed, random_crop, sample_offsets=cfg.recipe == "s3prl")

        return Sources(teacher.config.to_dict(), layers, teacher.sample_rate, teacher.do_normalize, crops(train_ids, True),
                       crops(valid_ids, False) if valid_ids else None, None, teacher)
    cache = open_cache(cfg.cache, cfg.cache_dir) if cfg.cache else find_cache_for(cfg, layers, teacher.digest)
    if cfg.storage and cache.spec["storage_dtype"] != cfg.storage:
        raise SpecMismatchError(f"--cache {cfg.cache} stores {cache.spec['storage_dtype']} targets, not --storage {cfg.storage}; "
                                "drop --storage, or give --cache with no value to find the cache stored that way")
    layers = sorted(asked or cache.layers)
    missing = sorted(set(layers) - set(cache.layers))
    if missing:
        raise SpecMismatchError(f"{cache.path}: layers {','.join(map(str, missing))} are not in this cache (it has "
                                f"{','.join(map(str, cache.layers))}); run extract-features with --layers {','.join(map(str, layers))}")
    if teacher is None and cfg.init == "teacher":
        name = cache.provenance.get("teacher")
        if not name:
            raise SpecMismatchError(f"{cache.path}: records no teacher to initialise from; pass --teacher or --init random")
        teacher = load_teacher(name, device="cpu", allow_pickle=cfg.allow_pickle)
    if teacher is not None and teacher.digest != cache.spec["teacher"]["digest"]:
        raise SpecMismatchError(f"{cache.path} was made by teacher weights {_short(cache.spec['teacher']['digest'])}, but "
                                f"--teacher {teacher.name} has {_short(teacher.digest)}; use the cache's teacher or extract a new cache")
    check_complete(cache, cfg.allow_partial or cfg.follow)
    ids = subset_ids(cache, cfg.corpus) if cfg.corpus else one_corpus(cache)
    warn_held_out_named(ids)
    train_ids, valid_ids = split_ids(ids, cfg.valid_fraction, cache.recording if cache.has_recordings else None,
                                     fallback=not cfg.follow)
    pre = cache.spec["preprocessing"]
    judge = eval_cache(cfg, cache, layers) if cfg.eval_cache else cache
    held = len(valid_ids)
    valid_ids = [u for u in valid_ids if u in judge]
    if cfg.eval_cache and held and not valid_ids:
        raise SpecMismatchError(f"--eval-cache {cfg.eval_cache}: holds none of the {held} held-out utterances of {cache.path}; "
                                "give the cache extracted from the same corpus, or leave --eval-cache out")
    return Sources(cache.spec["teacher"]["config"], layers, pre["sample_rate"], pre["normalize"],
                   CachedCrops(cache, train_ids, layers, cfg.max_crop_samples, cfg.seed),
                   CachedCrops(judge, valid_ids, layers, cfg.max_crop_samples, cfg.seed, random_crop=False, ship_stored=False)
                   if valid_ids else None,
                   cache, teacher, describe_cache(cache), follow_ids(cache, cfg.corpus) if cfg.follow else None)


def eval_cache(cfg: TrainConfig, cache: Cache, layers: list[int]) -> Cache:
    """The cache held-out targets come from when it is not the training cache: e.g. train on int8, judge on exact targets.
    It must hold the same teacher's targets for these layers."""
    judge = open_cache(cfg.eval_cache, cfg.cache_dir)
    if judge.spec["teacher"]["digest"] != cache.spec["teacher"]["digest"] or not set(layers) <= set(judge.layers):
        raise SpecMismatchError(f"--eval-cache {cfg.eval_cache}: holds another teacher's targets or lacks layers "
                                f"{','.join(map(str, layers))}; give a cache of the same teacher with those layers")
    return judge


def warn_held_out_named(ids) -> None:
    """One line when the training utterances include folders named like held-out sets (LibriSpeech's dev-*, test-*)."""
    from extract.corpora import evaluation_folders

    named = evaluation_folders(ids)
    if named:
        print(f"warning: training on utterances under {', '.join(f + '/' for f in named)} (held-out sets, by their names); train "
              "on a subset with --corpus DIR/train-..., or cache only the training folders (extract-features --include 'train-*')",
              file=sys.stderr)
