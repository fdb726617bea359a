"""bench/quality.py's bookkeeping: what a stage cost is kept as it ends, and a stage found made is never timed as made."""

import json
import os
import time

import numpy as np
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


def _probe(errors: list[int], metric: str = "PER") -> dict:
    ids = [f"u{i}" for i in range(len(errors))]
    value = sum(errors) / (10 * len(errors))
    return {"metric": metric, "value": value, "ci95": [value, value],
            "per_clip": {"ids": ids, "counts": errors, "totals": [10] * len(errors)}}


def test_the_report_of_a_partial_run_says_what_is_not_measured_yet(tmp_path):
    """The report is written after every probe: with only the float16 student and the damaged control on phones, the
    goals it can judge are judged with their numbers, the others say "not measured yet" (no KeyError, no silence)."""
    from bench.quality import REFERENCE, write_report

    rng = np.random.default_rng(0)
    good = rng.integers(0, 3, 200).tolist()
    rows = {REFERENCE: {"cache": "", "parameters": 1, "ms_per_audio_second": 1.0, "probes": {"phones": _probe(good)}},
            "distilled (damaged targets)": {"cache": "", "parameters": 1, "ms_per_audio_second": 1.0,
                                            "probes": {"phones": _probe([e + 3 for e in good])}}}
    record = {"masked_accuracy_held_out": {"after": 0.2}, "hours": 1.0, "seconds": 10.0}
    write_report(str(tmp_path), rows, {}, record, 3)
    goals = json.load(open(tmp_path / "quality.json"))["goals"]
    assert goals[0].startswith("positive control") and "+0.300" in goals[0] and goals[0].endswith("MET, the bench separates them")
    assert all("not measured yet" in g for g in goals[1:])
    table = open(tmp_path / "quality.md").read()
    v = rows["distilled (damaged targets)"]["probes"]["phones"]["value"]
    assert f"| distilled (damaged targets) | 1 | 1.0 | {v:.3f} [{v:.3f}, {v:.3f}] | - | - | - |" in table


def test_a_mode_slightly_worse_but_within_the_margin_counts_as_good():
    from bench.quality import as_good

    assert as_good({"ci95": [0.002, 0.015], "margin": 0.02, "verdict": "worse (and within ±0.02)"})
    assert not as_good({"ci95": [0.002, 0.025], "margin": 0.02, "verdict": "worse"})
    assert as_good({"ci95": [-0.05, -0.03], "margin": 0.02, "verdict": "better"})
