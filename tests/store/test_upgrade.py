"""A format-2 cache (source records in sources.json) meets format 3 (issue 34, item 1): every command says in one line
how to upgrade it; `feature-cache upgrade` rewrites its metadata in place, crash-safe, and leaves every target byte, the
fingerprint and the records (refreshed ones included) as they were."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner

import store.upgrade
from extract import ExtractConfig, extract_features
from extract.cli import main as extract_main
from store import Cache, FormatVersionError
from store.cli import main as cache_main
from store.index import read_sources, sources_entry
from store.layout import legacy_sources_path, sources_path
from tests.conftest import build_corpus


def _files(path: str) -> dict[str, str]:
    """sha256 of every file of the cache but its metadata beside the targets (what an upgrade may rewrite)."""
    out = {}
    for d, _, names in os.walk(path):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), path)
            if rel not in ("zarr.json", "sources.npz", "sources.json", ".lock", ".clock"):
                out[rel] = hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
    return out


def _as_format_2(path: str, refreshed_taken_ns: int) -> dict:
    """What the commit before format 3 left: records in sources.json (one refreshed there, newer than its marker's),
    no sources.npz, zarr.json saying format 2. Returns the records format 2 held."""
    cache = Cache(path)
    entries = {}
    for part in cache.parts:
        marker = json.load(open(f"{path}/commits/{part}.json"))
        entries[part] = sources_entry(marker)
    first = next(iter(entries.values()))
    first["sources"][0] = {**first["sources"][0], "taken_ns": refreshed_taken_ns}
    json.dump({"parts": entries}, open(legacy_sources_path(path), "w"))
    os.remove(sources_path(path))
    meta = json.load(open(f"{path}/zarr.json"))
    meta["attributes"]["distilcache"]["format_version"] = 2
    json.dump(meta, open(f"{path}/zarr.json", "w"))
    return {u: r for e in entries.values() for u, r in zip(e["ids"], e["sources"], strict=True)}


@pytest.fixture
def format_2(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    cfg = ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), part_seconds=2, progress=False)
    path = extract_features(cfg).path
    cache = Cache(path)
    targets = {u: [cache.read(u, k).tobytes() for k in (1, 3)] + [cache.read_audio(u).tobytes()] for u in cache.utterance_ids}
    records = _as_format_2(path, 123)
    return path, cfg, targets, records


def test_an_older_cache_is_one_line_that_says_how_to_upgrade_it(format_2, tiny_teacher):
    path, cfg, _, _ = format_2
    with pytest.raises(FormatVersionError, match=f"cache format 2 is older.*feature-cache upgrade {path}"):
        Cache(path)
    r = CliRunner().invoke(cache_main, ["info", path])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "feature-cache upgrade" in r.output
    r = CliRunner().invoke(extract_main, ["--teacher", tiny_teacher, "--corpus", cfg.corpus, "--layers", "1,3", "--cache-dir",
                                          cfg.cache_dir, "--part-seconds", "2", "--quiet"])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "feature-cache upgrade" in r.output, r.output


def test_upgrade_rewrites_metadata_only_and_every_target_is_identical(format_2):
    path, cfg, targets, records = format_2
    files = _files(path)
    r = CliRunner().invoke(cache_main, ["upgrade", "--cache-dir", cfg.cache_dir])  # every cache under the root
    assert r.exit_code == 0 and "upgraded from format 2 to 3" in r.output, r.output
    cache = Cache(path)
    assert cache.fingerprint == os.path.basename(path) and _files(path) == files  # no target, marker or index byte moved
    assert {u: [cache.read(u, k).tobytes() for k in (1, 3)] + [cache.read_audio(u).tobytes()] for u in cache.utterance_ids} == targets
    assert dict(cache.sources()) == records and 123 in [r.get("taken_ns") for r in records.values()]  # the refreshed one kept
    assert not os.path.exists(legacy_sources_path(path)) and cache.consolidated
    r = CliRunner().invoke(cache_main, ["upgrade", path])
    assert r.exit_code == 0 and "already format 3" in r.output
    again = extract_features(cfg)  # the same spec finds it (its files, just written, are re-hashed once: racily clean)
    targets_and_markers = {k: v for k, v in files.items() if k.startswith(("parts/", "commits/"))}
    assert again.path == path and {k: v for k, v in _files(path).items() if k in targets_and_markers} == targets_and_markers


def test_an_upgrade_killed_at_any_step_leaves_a_cache_that_upgrades_again(format_2, monkeypatch):
    path, _, targets, records = format_2
    for step in ("write_sources", "write_json_atomic", "remove_file"):
        real = getattr(store.upgrade, step)

        def killed(*a, **k):
            raise KeyboardInterrupt  # what a kill leaves: this step not done, every earlier one done

        monkeypatch.setattr(store.upgrade, step, killed)
        with pytest.raises(KeyboardInterrupt):
            store.upgrade.upgrade_cache(path)
        monkeypatch.setattr(store.upgrade, step, real)
        if step != "remove_file":
            with pytest.raises(FormatVersionError, match="feature-cache upgrade"):
                Cache(path)
        else:
            assert os.path.exists(legacy_sources_path(path)) and dict(Cache(path).sources()) == records
    assert "already format 3" in store.upgrade.upgrade_cache(path)
    assert not os.path.exists(legacy_sources_path(path))
    cache = Cache(path)
    assert dict(cache.sources()) == records and dict(read_sources(path)) == records
    assert {u: [cache.read(u, k).tobytes() for k in (1, 3)] + [cache.read_audio(u).tobytes()] for u in cache.utterance_ids} == targets


def test_a_damaged_sources_json_is_not_believed_the_markers_are(format_2):
    path, _, _, records = format_2
    open(legacy_sources_path(path), "w").write('{"parts": {"p0": {"dir": 5}, "x": [1]')
    store.upgrade.upgrade_cache(path)
    refreshed = next(u for u, r in records.items() if r.get("taken_ns") == 123)
    got = dict(Cache(path).sources())  # the markers' records: the one refreshed in the damaged file is the marker's again
    assert got[refreshed]["taken_ns"] != 123 and {u: r for u, r in got.items() if u != refreshed} == \
        {u: r for u, r in records.items() if u != refreshed}


def test_a_cache_on_an_object_store_is_upgraded_in_place(format_2):
    """No lock and no rename there: each step is one PUT (or DELETE), in the same order."""
    import s3fs

    from bench.common import moto_server

    path, _, targets, records = format_2
    with moto_server():
        s3fs.S3FileSystem.clear_instance_cache()
        s3 = s3fs.S3FileSystem()
        s3.mkdir("upgrades")
        url = f"s3://upgrades/caches/{os.path.basename(path)}"
        s3.put(path, url, recursive=True)
        with pytest.raises(FormatVersionError, match="feature-cache upgrade"):
            Cache(url)
        assert "upgraded from format 2 to 3" in store.upgrade.upgrade_cache(url)
        s3.invalidate_cache()
        assert not s3.exists(f"{url}/sources.json") and s3.exists(f"{url}/sources.npz")
        cache = Cache(url)
        assert dict(cache.sources()) == records
        assert {u: [cache.read(u, k).tobytes() for k in (1, 3)] + [cache.read_audio(u).tobytes()] for u in cache.utterance_ids} == targets
    s3fs.S3FileSystem.clear_instance_cache()
