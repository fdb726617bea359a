"""bench/quality.py's bookkeeping: what a stage cost is kept as it ends, and a stage found made is never timed as made."""

import json
import os
import time

import pytest

from bench.quality import record_made


def _cache(path, seconds: float = 0.0):
    def make():
        time.sleep(seconds)
        os.makedirs(os.path.join(path, "commits"), exist_ok=True)
        open(os.path.join(path, "commits", "p0.json"), "w").close()
        return str(path)

    return make


def test_a_stage_is_kept_as_it_ends_so_a_killed_run_reports_no_no_op(tmp_path):
    """Killed after the float16 cache but before made.json: the re-run's "made in" showed 0.4 s (its no-op) for ~47 s."""
    made_path = str(tmp_path / "made.json")
    made = {}
    record_made(made_path, made, "float16", _cache(tmp_path / "f16", 0.3))

    def killed():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_made(made_path, made, "int8", killed)
    kept = json.load(open(made_path))
    assert kept["float16"] >= 0.3 and "int8" not in kept
    again = record_made(made_path, dict(kept), "float16", _cache(tmp_path / "f16"))  # the re-run finds it made
    assert again["seconds"] == kept["float16"]


def test_a_cache_made_before_with_no_time_kept_says_unknown(tmp_path):
    _cache(tmp_path / "old")()
    os.utime(tmp_path / "old" / "commits" / "p0.json", (time.time() - 60, time.time() - 60))
    r = record_made(str(tmp_path / "made.json"), {}, "float16", lambda: str(tmp_path / "old"))
    assert r["seconds"] is None


def test_the_positive_control_pairs_every_utterance_with_another_ones_targets(small_cache, tmp_path):
    import numpy as np

    from bench.damage import derangement, shuffled_cache

    cache, _ = small_cache
    ids = sorted(cache.utterance_ids)
    partner = derangement(ids)
    assert sorted(partner.values()) == ids and all(partner[u] != u for u in ids)
    damaged = shuffled_cache(cache.path, str(tmp_path / "k"))
    assert damaged.fingerprint != cache.fingerprint and sorted(damaged.utterance_ids) == ids
    for u in ids:
        want = np.resize(cache.read(partner[u], 2), (cache.num_frames(u), cache.spec["dim"]))
        assert np.array_equal(damaged.read(u, 2), want) and np.array_equal(damaged.read_audio(u), cache.read_audio(u))
    again = shuffled_cache(cache.path, str(tmp_path / "k"))
    assert again.path == damaged.path and again.part_dirs == damaged.part_dirs  # made once
