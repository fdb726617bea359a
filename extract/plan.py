"""Parts: the unit of work and of commit, planned from the corpus and the commit markers on every run.

The markers are the truth: an utterance already committed is never planned again, so no plan can
produce a duplicate, and a lost or damaged plan.json costs nothing (it only reports progress).
Grouping is deterministic (sorted ids, greedy by --part-seconds), so after a crash the remaining
utterances regroup into exactly the parts that were in flight: the same bytes. Part names come
from their contents (store.layout.part_name), whoever plans them.
"""

from __future__ import annotations

import os

from extract.corpus import BadFile, Utterance
from extract.errors import ExtractError
from store import Cache, fs, part_name
from store.layout import is_attempt_name, plan_path, write_json_atomic
from store.source_files import file_sha256, same_stat
from store.source_table import SourceTable


def _unchanged(record: dict) -> bool:
    try:
        st = os.stat(record["path"])
    except OSError:
        return False
    return same_stat(st, record)


def _where(path: str, window: dict) -> str:
    """A file and the window of it an id stands for, comparable between a committed record and the corpus now."""
    start = window.get("start") or 0
    stop = window.get("stop", None if window.get("samples") is None else start + window["samples"])
    if not start and stop is None and window.get("channel") is None:
        return path
    channel = "" if window.get("channel") is None else f", channel {window['channel']}"
    return f"{path}[{start}:{'' if stop is None else stop}{channel}]"


def _same_content(u: Utterance, record: dict) -> bool:
    """The same window of a file with the same bytes at another path (a copy, a moved corpus, an imported cache's
    source): the same source, so not a clash. Content decides, not the path."""
    if _where("", record) != _where("", u.window):
        return False
    try:
        return file_sha256(u.path)[1] == record.get("sha256")
    except OSError:
        return False


def plan_parts(cache: Cache, utts: list[Utterance], bad: list[BadFile], rate: int, part_seconds: float,
               sources: SourceTable, corpus: str | None = None) -> list[dict]:
    """Parts for every utterance not committed yet; refuse a committed id that now points at another file.

    `sources`: the committed records of the files (by uid). Files skipped while decoding are retried only once
    they change (a NaN file fixed later is picked up)."""
    rows = sources.rows_of([u.uid for u in utts])
    plain = sources.at_path(rows, [u.path for u in utts])  # the same whole file: no record need become a dict
    clashes = [f"id '{u.uid}' is now {_where(u.path, u.window)}, but the cache holds it from {_where(r['path'], r)}"
               for u, row, same in zip(utts, rows.tolist(), plain.tolist(), strict=True)
               if row >= 0 and not (same and _where(u.path, u.window) == u.path)
               and _where((r := sources.record(row))["path"], r) != _where(u.path, u.window) and not _same_content(u, r)]
    if clashes:
        raise ExtractError(f"{clashes[0]} ({len(clashes)} such ids); use a separate --cache-dir for a second corpus with the same "
                           "ids, or `feature-cache rm` this cache to rebuild it")
    # by utterance, never by path: the windows of one recording share a path, and one bad window must not take the rest along
    still_bad = {s["uid"] for s in cache.skipped if "size" in s and s.get("uid") and _unchanged(s)}
    fresh = [u for u in utts if u.uid not in cache and u.uid not in still_bad]
    parts = [{"name": part_name([it.uid for it in items]), "items": items, "corpus": corpus}
             for items in group_parts(fresh, rate, part_seconds)]
    write_json_atomic(plan_path(cache.path), merged_plan(cache, corpus, [{"name": p["name"], "utterances": len(p["items"])}
                                                                        for p in parts], [b.to_dict() for b in bad]))
    return parts


def group_parts(fresh: list[Utterance], rate: int, part_seconds: float) -> list[list]:
    """Sorted ids, greedy by --part-seconds: the same utterances always make the same parts."""
    budget = int(part_seconds * rate)
    parts, items, samples = [], [], 0
    ordered = sorted(fresh, key=lambda u: u.uid)
    for i, u in enumerate(ordered):
        items.append(u.item(rate))
        samples += items[-1].samples
        if samples >= budget or i == len(ordered) - 1:
            parts.append(items)
            items, samples = [], 0
    return parts


def merged_plan(cache: Cache, corpus: str | None, parts: list[dict], skipped: list[dict]) -> dict:
    """plan.json after planning `corpus`: its parts and refusals replace its earlier ones; another corpus's stay (its
    pending parts above all: a second corpus extracted into the cache must not make an unfinished first one look done).
    Entries an older distilcache wrote carry no corpus: they are this corpus's, as that version assumed."""
    old = cache.plan()

    def others(entries: list[dict]) -> list[dict]:  # checked by Cache.plan(): lists of dicts
        return [e for e in entries if e.get("corpus") not in (None, corpus)]

    kept = [p for p in others(old["parts"] or []) if p.get("name") not in cache.part_dirs]
    return {"parts": kept + [{**p, "corpus": corpus} for p in parts],
            "skipped": others(old["skipped"]) + [{**b, "corpus": corpus} for b in skipped]}


def orphan_attempts(cache: Cache) -> list[str]:
    """Attempt directories no marker names and no live writer holds (store.writer.LEASE): interrupted or lost attempts.
    Only safe to remove under the cache's lock."""
    from store.lock import is_locked

    named = set(cache.part_dirs.values())
    parts = os.path.join(cache.path, "parts")
    return [d for d in fs.listdir(parts) if is_attempt_name(d) and d not in named  # never a stranger's file or a link
            and not os.path.islink(os.path.join(parts, d)) and not is_locked(os.path.join(parts, d))]
