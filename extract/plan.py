"""Parts: the unit of work and of commit, planned once and kept in the cache (plan.json).

The plan is persisted so a rerun after a crash redoes exactly the same parts (same bytes), and
a grown corpus only appends parts for its new files.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager

from extract.corpus import BadFile, Utterance
from extract.errors import ExtractError
from store import fs, part_name
from store.layout import plan_path, read_json, write_json_atomic


def update_plan(cache: str, utts: list[Utterance], bad: list[BadFile], rate: int, part_seconds: float) -> dict:
    """Append parts for utterances not planned yet; refuse a known id that now points at another file."""
    path = plan_path(cache)
    plan = read_json(path) if fs.exists(path) else {"parts": [], "skipped": []}
    planned = {item[0]: item[1] for part in plan["parts"] for item in part["items"]}
    clashes = [f"{u.path} has id '{u.uid}', already cached from {planned[u.uid]}" for u in utts
               if u.uid in planned and planned[u.uid] != u.path]
    if clashes:
        raise ExtractError(f"{clashes[0]} ({len(clashes)} such files); use a separate --cache-dir for a second corpus with the same ids")
    fresh = sorted((u for u in utts if u.uid not in planned), key=lambda u: u.uid)
    budget = int(part_seconds * rate)
    items: list[list] = []
    samples = 0
    for i, u in enumerate(fresh):
        items.append([u.uid, u.path, u.samples_at(rate)])
        samples += items[-1][2]
        if samples >= budget or i == len(fresh) - 1:
            plan["parts"].append({"name": part_name(len(plan["parts"])), "items": items})
            items, samples = [], 0
    known = {s["path"] for s in plan["skipped"]}
    good_now = {u.path for u in utts}  # a file skipped before and fine now is no longer "skipped"
    plan["skipped"] = [s for s in plan["skipped"] if s["path"] not in good_now]
    plan["skipped"] += [b.to_dict() for b in bad if b.path not in known]
    write_json_atomic(path, plan)
    return plan


@contextmanager
def exclusive(cache: str):
    """One coordinator per cache: a second extract-features on the same cache is refused, not interleaved.

    Object stores have no locks: there, running one coordinator per cache is up to you."""
    if fs.is_remote(cache):
        yield
        return
    fd = os.open(os.path.join(cache, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExtractError(f"{cache}: another extract-features is running on this cache; wait for it to finish") from None
        yield
    finally:
        os.close(fd)
