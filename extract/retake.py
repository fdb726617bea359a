"""What a re-run takes back before planning: parts that are damaged, or whose source files changed since they were
extracted (by stat, then by content), so that the plan redoes them. The records are compared as columns
(store.source_table): a LibriSpeech-sized re-run with nothing changed makes no record a dict."""

from __future__ import annotations

import sys

import numpy as np

from extract.corpus import KnownFiles
from store import Cache
from store.index import refresh_sources, uncommit
from store.progress import tracked
from store.source_files import check_sources, fs_clock, header_key, lying_headers
from store.source_table import PRESENT, SourceTable, strings
from store.verify import damaged_parts


def retake(cache: Cache, utts: list, sources: SourceTable, full: bool, check: bool, bad: list | None = None,
           known: KnownFiles | None = None) -> bool:
    """Uncommit parts that are damaged (missing files, metadata unlike the spec; with --repair also every crc32c)
    or whose source files changed, saying so, so that this run re-extracts them. Returns whether it uncommitted any.
    Files the scan saw unchanged (`known`) are not looked at again."""
    damaged = damaged_parts(cache, full=full) if check else {p: [why] for p, why in cache.damaged.items()}
    # a cached file of this corpus that is now bad input (rewritten into garbage) changed too: its stale targets go
    # (by id: a Kaldi segment or a lhotse cut is named by its manifest entry, not its file; by file: a directory's bad files)
    bad_paths = {b.file or b.path for b in bad or []}
    ids = {u.uid for u in utts} | {b.uid for b in bad or [] if b.uid}
    c = sources.cols  # columns at once: a re-run with nothing changed makes no record a dict
    in_corpus = np.isin(c["uid"], strings(sorted(ids))) | np.isin(c["path"], strings(sorted(bad_paths)))
    in_corpus &= (c["flags"] & PRESENT).astype(bool)
    seen = known.seen(sources) if known else np.zeros(sources.rows(), bool)
    todo = sorted((sources.uid(r), r) for r in np.flatnonzero(in_corpus & ~seen))
    whys, fresh = check_sources(((u, sources.record(r)) for u, r in tracked(todo, len(todo), "checking changed source files", "file")),
                                fs_clock(cache.path), cache.part_of)  # a file shared by segments is hashed once
    changed: dict[str, list[str]] = {}
    for uid, why in whys.items():
        changed.setdefault(cache.part_of(uid), []).append(why)
    lying = sorted((sources.uid(r), r) for r in np.flatnonzero(in_corpus)) if full else []
    lying = [(u, sources.record(r)) for u, r in lying if cache.part_of(u) not in changed]
    lies = lying_headers(tracked((r for _, r in lying), len(lying), "checking recorded headers", "file"))  # --repair
    for uid, record in lying:  # a record edited in place is redone too: its part is re-extracted, which writes a true record
        if why := lies.get(header_key(record)):
            changed.setdefault(cache.part_of(uid), []).append(why)
    for label, found in (("damaged", damaged), ("with changed source files", changed)):
        if found:
            first = next(iter(found.values()))[0]
            print(f"{cache.path}: {len(found)} part(s) {label}, re-extracting them (first: {first})", file=sys.stderr)
    for part in sorted(set(damaged) | set(changed)):
        uncommit(cache.path, part, cache.part_dirs.get(part))
    if fresh := {p: f for p, f in fresh.items() if p not in damaged and p not in changed}:
        refresh_sources(cache.path, fresh)  # re-hashed once, not on every run: the next one trusts their stat
    return bool(damaged or changed)
