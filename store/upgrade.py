"""`feature-cache upgrade`: a cache of an older format brought up in place, its targets untouched.

Format 3 changed only what a cache keeps beside its targets (the source records as columns, sources.npz, instead of
sources.json), so an upgrade rewrites that metadata and nothing else: no target is read or written, the fingerprint
(the spec) stays, and it takes seconds at LibriSpeech scale where a re-extraction takes days. Crash-safe by order, each
step atomic: sources.npz is written before zarr.json says format 3, and sources.json is removed last. Killed anywhere, it
leaves a format-2 cache (upgrade it again) or a format-3 one (a left sources.json is removed by the next upgrade)."""

from __future__ import annotations

import os

from store import fs
from store.errors import NotACacheError
from store.fs import remove_file
from store.index import covering, list_markers, read_markers, write_sources
from store.layout import legacy_sources_path, read_json, write_json_atomic
from store.lock import exclusive
from store.reader import check_format
from store.source_table import SourceTable
from store.spec import FORMAT_VERSION, UPGRADABLE


def _legacy_entries(cache: str) -> SourceTable:
    """Format 2's sources.json (records refreshed after a re-hash, newer than the markers'), its well-formed entries only:
    read back from disk it is untrusted, and a part it lacks or gets wrong is taken from its marker."""
    path = legacy_sources_path(cache)
    try:
        parts = read_json(path).get("parts") if fs.exists(path) else {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        parts = {}
    ok = {p: e for p, e in (parts if isinstance(parts, dict) else {}).items() if isinstance(e, dict)
          and isinstance(e.get("dir"), str) and isinstance(e.get("ids"), list) and all(isinstance(u, str) for u in e["ids"])
          and isinstance(e.get("sources", []), list) and isinstance(e.get("skipped", []), list)}
    return SourceTable.from_entries(ok)


def upgrade_cache(path: str) -> str:
    """Upgrade the cache at `path` to this format; returns what was done, in one line."""
    path = fs.resolve(path)
    meta_file = os.path.join(path, "zarr.json")
    if not fs.exists(meta_file):
        raise NotACacheError(f"{path}: not a distilcache cache (no zarr.json); list caches with: feature-cache ls")
    with exclusive(path):  # no extraction writes the records meanwhile
        try:
            doc = read_json(meta_file)
            meta = doc["attributes"]["distilcache"]
            version = meta["format_version"]
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise NotACacheError(f"{meta_file}: unreadable cache metadata ({type(e).__name__}); remove the cache with "
                                 "feature-cache rm") from None
        if version == FORMAT_VERSION:
            remove_file(legacy_sources_path(path))  # an upgrade killed after its zarr.json was written
            return f"{path}: already format {FORMAT_VERSION}"
        if version not in UPGRADABLE:
            check_format(path, version)  # newer, or too old to upgrade: its own one line
        markers = {p: m for p, m in read_markers(path, list_markers(path)).items() if isinstance(m, dict)}
        entries = {p: {"dir": m["dir"], "ids": m["ids"]} for p, m in sorted(markers.items())}
        table = covering(_legacy_entries(path), entries, lambda parts: {p: markers[p] for p in parts})
        write_sources(path, table)
        meta["format_version"] = FORMAT_VERSION
        write_json_atomic(meta_file, doc)
        remove_file(legacy_sources_path(path))
    return (f"{path}: upgraded from format {version} to {FORMAT_VERSION} ({len(markers)} part(s), {table.rows()} source "
            "records; targets untouched)")
