"""The consolidated index: every committed part's marker in two files, so an open costs a few requests.

Markers (commits/<part>.json) stay the truth; index.json covers a known set of parts (those
committed when it was written) and a reader reads it plus only the markers it does not cover. At
LibriSpeech scale that turns ~5,700 sequential GETs per open into a listing and one GET.
sources.npz keeps the same parts' source-file records (paths, sizes, mtimes, sha256) apart, as columns
(store.source_table), since only extraction and `verify --sources` need them. Both are rewritten (atomically) only by the
one process holding the cache's lock: extract-features, import, repair, upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from store import fs
from store.fidelity import error_sums_problem
from store.layout import commit_path, index_path, is_attempt_name, part_path, read_json, sources_path, write_json_atomic
from store.source_table import SourceTable, concat, strings, table_from_bytes

READER_FIELDS = ("part", "dir", "ids", "frames", "samples", "skipped", "total_frames", "total_samples")
OPTIONAL_FIELDS = ("recordings", "corpus", "audio_clipped", "error", "bytes")  # uid -> recording (segments only); the part's --corpus
# input; samples clipped to int16 (int16/flac audio); int8/int4/pq: layer -> error sums of the stored rows (store.modes);
# the bytes its shards and FLAC files hold (metadata aside)


def list_markers(cache: str) -> list[str]:
    """Part names with a commit marker (one listing)."""
    return [n[:-5] for n in fs.listdir(f"{cache}/commits") if n.endswith(".json") and ".tmp-" not in n]


_SAFE_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _is_count_list(values, n: int) -> bool:
    """n whole numbers >= 0 (checked in C: every open checks every part's lists, 281k counts at LibriSpeech scale)."""
    return isinstance(values, list) and len(values) == n and set(map(type, values)) <= {int} and (not values or min(values) >= 0)


def _distinct_names(ids) -> bool:
    """Distinct non-empty strings without NUL (what a path or a key can hold), checked in C as _is_count_list."""
    if not isinstance(ids, list) or not set(map(type, ids)) <= {str}:
        return False
    distinct = set(ids)
    return len(distinct) == len(ids) and "" not in distinct and "\0" not in "".join(ids)


def marker_problem(part: str, marker) -> str | None:
    """Why a marker (or its index.json entry) cannot be trusted, or None. Everything a reader, plan or cleanup takes
    from it is checked here first: above all `dir`, which must be an attempt directory of this very part (a name
    inside parts/, never a path), so no hand edit can point a reader at another part's files or a cleanup outside."""
    if not isinstance(marker, dict) or any(k not in marker for k in READER_FIELDS):
        return "not a complete commit marker"
    if not _SAFE_PART.fullmatch(part) or marker["part"] != part:
        return f"names part {str(marker['part'])[:40]!r}, not {part}"
    if not is_attempt_name(marker["dir"], part):
        return f"its dir {str(marker['dir'])[:60]!r} is not an attempt directory of {part}"
    ids = marker["ids"]
    if not _distinct_names(ids):
        return "its ids are not distinct non-empty strings"
    if not (_is_count_list(marker["frames"], len(ids)) and _is_count_list(marker["samples"], len(ids))):
        return "its ids, frames and samples disagree in length or are not counts"
    if (marker["total_frames"], marker["total_samples"]) != (sum(marker["frames"]), sum(marker["samples"])):
        return "its total_frames/total_samples disagree with its frames/samples"
    if not isinstance(marker["skipped"], list) or not isinstance(marker.get("recordings", {}), dict):
        return "its skipped or recordings records are malformed"
    if type(marker.get("audio_clipped", 0)) is not int or not isinstance(marker.get("corpus", ""), str):
        return "its audio_clipped or corpus record is malformed"
    if "bytes" in marker and not (type(marker["bytes"]) is int and marker["bytes"] >= 0):
        return "its bytes record is not a count"
    if "digests" in marker and not (isinstance(marker["digests"], dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in marker["digests"].items())):
        return "its digests record is malformed"
    if "shards" in marker and not (isinstance(marker["shards"], dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in marker["shards"].items())):
        return "its shards record is malformed"
    if "error" in marker and (why := error_sums_problem(marker["error"])):
        return f"its error record is malformed ({why})"
    return None


def read_marker(cache: str, part: str) -> dict | str:
    """The marker, or why it cannot be used (garbage, empty, hand-edited): damage to report, never a traceback."""
    path = commit_path(cache, part)
    try:
        marker = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"{path}: unreadable commit marker ({type(e).__name__}); re-run extract-features with --repair to redo that part"
    problem = marker_problem(part, marker)
    return f"{path}: {problem}; re-run extract-features with --repair to redo that part" if problem else marker


def read_markers(cache: str, parts: list[str]) -> dict[str, dict | str]:
    """Many markers; in parallel on object stores, where each is a request."""
    if not parts:
        return {}
    workers = 16 if fs.is_remote(cache) else 1
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(parts, pool.map(lambda p: read_marker(cache, p), parts), strict=True))


def read_index(cache: str) -> dict[str, dict]:
    """The consolidated entries by part; {} when there is none or it is damaged (markers are the truth)."""
    path = index_path(cache)
    try:
        data = read_json(path) if fs.exists(path) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data.get("parts", {}) if isinstance(data, dict) and isinstance(data.get("parts"), dict) else {}


def read_sources(cache: str) -> SourceTable:
    """The consolidated source records (an empty table when there are none or they are damaged: markers are the truth)."""
    path = sources_path(cache)
    try:
        table = table_from_bytes(fs.read_range(path, 0)) if fs.exists(path) else None
    except OSError:
        table = None
    return table or SourceTable.from_entries({})


def write_sources(cache: str, table: SourceTable) -> None:
    fs.write_bytes_atomic(sources_path(cache), table.to_bytes())


def sources_entry(marker: dict) -> dict:
    """A part's source entry, from its (checked) marker."""
    return {"dir": marker["dir"], "ids": marker["ids"], "sources": marker.get("sources") or [None] * len(marker["ids"]),
            "skipped": marker["skipped"]}


def covering(table: SourceTable, entries: dict[str, dict], read: Callable[[list[str]], dict]) -> SourceTable:
    """The records of these parts (checked markers or index entries: dir and ids), in their order: the table's rows of a
    part when they are of the same attempt and ids (refreshed records are kept), else its marker's (`read` reads
    markers), as for a part the table lacks."""
    where = {p: i for i, p in enumerate(table.parts)}
    same = [p for p, e in entries.items() if (i := where.get(p)) is not None and table.dirs[i] == e["dir"]
            and len(table.part_rows(i)) == len(e["ids"])]
    kept = table if same == table.parts else table.select([where[p] for p in same])  # all of it, as a re-run finds it
    if same and (kept.cols["uid"] != strings([u for p in same for u in entries[p]["ids"]])).any():
        same, kept = [], table.select([])  # a table edited by hand: every record from the markers
    kept_parts = set(same)
    rest = [p for p in entries if p not in kept_parts]
    markers = {p: m for p, m in read(rest).items() if isinstance(m, dict)} if rest else {}
    if not markers and same == list(entries):
        return kept
    merged = concat([kept, SourceTable.from_entries({p: sources_entry(m) for p, m in markers.items()})])
    order = {p: i for i, p in enumerate(merged.parts)}
    return merged.select([order[p] for p in entries if p in order])


def consolidate(cache: str) -> int:
    """Rewrite index.json and sources.npz to cover every readable marker; returns the number of parts covered. Records
    refreshed in sources.npz (refresh_sources) are kept for the attempt they belong to."""
    names = list_markers(cache)
    index, table = read_index(cache), read_sources(cache)
    index = {p: e for p, e in index.items() if p in names}
    have = set(table.parts)
    todo = [p for p in names if p not in index or p not in have]
    for part, marker in read_markers(cache, todo).items():
        if isinstance(marker, dict):
            index[part] = {k: marker[k] for k in READER_FIELDS + OPTIONAL_FIELDS if k in marker}
    index = dict(sorted(index.items()))  # the same parts give the same bytes, whatever order they were committed in
    write_sources(cache, covering(table, index, lambda parts: read_markers(cache, parts)))
    write_json_atomic(index_path(cache), {"parts": index})
    return len(index)


def refresh_sources(cache: str, fresh: dict[str, dict[str, dict]]) -> None:
    """Keep the records of files re-hashed and found unchanged (part -> uid -> record: their stat now, a later
    `taken_ns`) in sources.npz, so that the next check trusts their stat instead of hashing them again. The markers keep
    the extraction's records; sources.npz, read before them, holds the newer stat of the same bytes (lost with it: then
    the file is re-hashed once more). A part it does not cover yet is added from its marker. Under the cache's lock."""
    table = read_sources(cache)
    where = {p: i for i, p in enumerate(table.parts)}
    entries = {}
    for part, by_uid in fresh.items():
        if part in where:
            entry = table.entry(where[part])
        elif isinstance(marker := read_marker(cache, part), dict):
            entry = sources_entry(marker)
        else:
            continue
        entry["sources"] = [by_uid.get(u, r) for u, r in zip(entry["ids"], entry["sources"], strict=False)]
        entries[part] = entry
    others = [i for i, p in enumerate(table.parts) if p not in entries]
    merged = concat([table.select(others), SourceTable.from_entries(entries)])
    # in part order, as consolidate() writes it: a reordered table would read as not consolidated and be rewritten
    write_sources(cache, merged.select(sorted(range(len(merged.parts)), key=merged.parts.__getitem__)))


def uncommit(cache: str, part: str, part_dir: str | None) -> None:
    """Take a part back (damaged, or its sources changed) so the next plan redoes it: index entry first, then
    the marker, then its files, so no reader is ever pointed at files that are gone."""
    entries = read_index(cache)
    if part in entries:
        entries.pop(part)
        write_json_atomic(index_path(cache), {"parts": entries})
    table = read_sources(cache)
    if part in table.parts:
        write_sources(cache, table.select([i for i, p in enumerate(table.parts) if p != part]))
    fs.remove_file(commit_path(cache, part))
    if part_dir:
        fs.rmtree(part_path(cache, part_dir))
