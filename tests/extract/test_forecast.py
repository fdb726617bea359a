"""Issue 22 item 6: know before you run. --dry-run says what, where, how big and how long, and writes nothing; a run
that cannot fit is refused in one line before any work."""

import json
import os

import pytest
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from extract.cli import main as extract_cli
from extract.errors import ExtractError
from extract.run import dry_run
from store import open_cache
from tests.conftest import build_corpus


def _cfg(teacher, corpus, root, **kw):
    return ExtractConfig(teacher, corpus, **{"layers": (1, 3), "cache_dir": str(root), "part_seconds": 2, "progress": False, **kw})


def test_a_dry_run_writes_nothing_and_says_what_the_run_will_do(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    f = dry_run(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert not os.path.exists(tmp_path / "k"), "a dry run wrote something"
    assert (f["exists"], f["utterances"], f["todo_utterances"], f["refused"]) == (False, 5, 5, 0) and f["fits"]
    assert f["expected_bytes"]["targets"]["float16"] == f["todo_frames"] * 2 * 32 * 2  # frames x layers x dim x 2 bytes
    assert f["expected_bytes"]["targets"]["int8"] < f["expected_bytes"]["targets"]["float16"] and f["eta_seconds"] > 0
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    cache = open_cache(s.path)
    assert f["cache"] == s.path and f["todo_frames"] == cache.total_frames and f["parts"] == len(cache.parts)
    again = dry_run(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert (again["exists"], again["cached_utterances"], again["todo_utterances"], again["parts"]) == (True, 5, 0, 0)


def test_the_cli_dry_run_prints_the_forecast(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=3)
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1,3", "--cache-dir",
                                         str(tmp_path / "k"), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    for word in ("corpus", "would be created", "to extract", "float16", "free disk", "fits", "ETA"):
        assert word in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["todo_utterances"] == 3 and not os.path.exists(tmp_path / "k")


def test_a_run_that_cannot_fit_is_refused_before_any_work(tmp_path, tiny_teacher, monkeypatch, capfd):
    import extract.forecast

    corpus = build_corpus(str(tmp_path / "c"), n=3)
    monkeypatch.setattr(extract.forecast, "free_bytes", lambda root: 1000)
    with pytest.raises(ExtractError, match="needs about .* but 1.0 KB is free; free space"):
        extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert not [n for n in os.listdir(tmp_path / "k") if not n.startswith(".")], "a refused run left a cache behind"
    monkeypatch.undo()
    capfd.readouterr()
    extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert "3 of 3 utterances to extract" in capfd.readouterr().err  # the first line of a run says the same


def test_ls_shows_size_hours_state_and_derivation(tmp_path, tiny_teacher):
    from store.cli import main as cache_cli
    from store.convert import convert_cache

    corpus = build_corpus(str(tmp_path / "c"), n=3)
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    convert_cache(s.path, "int8", cache_dir=str(tmp_path / "k"))
    out = CliRunner().invoke(cache_cli, ["ls", "--cache-dir", str(tmp_path / "k")]).output
    exact = next(line for line in out.splitlines() if line.startswith(s.fingerprint))
    data = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(s.path, "parts")) for f in files if f != "zarr.json"]
    assert "float16/float32 audio" in exact and "complete" in exact and "utterances=3" in exact and " h " in exact
    assert open_cache(s.path).bytes == sum(map(os.path.getsize, data)) > 0  # what the markers say is what is on disk
    assert any(f"derived from {s.fingerprint}" in line and "int8/" in line for line in out.splitlines())


def test_an_unreachable_hub_is_one_line_without_retries(tmp_path, monkeypatch):
    """Issue 22 item 9: huggingface_hub retried five times with back-off (ten lines, ~30 s) before the error."""
    import extract.teacher
    from extract import load_teacher

    monkeypatch.setattr(extract.teacher, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ExtractError, match="not in the local hub cache, and the hub is not reachable") as e:
        load_teacher("nobody-here/no-such-model", device="cpu")
    assert "\n" not in str(e.value)


def test_a_dry_run_that_would_not_fit_is_one_line_and_exit_2(tmp_path, tiny_teacher, monkeypatch):
    import extract.forecast

    corpus = build_corpus(str(tmp_path / "c"), n=3)
    monkeypatch.setattr(extract.forecast, "free_bytes", lambda root: 1000)
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1,3", "--cache-dir",
                                         str(tmp_path / "k"), "--dry-run"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "needs about" in r.output and not os.path.exists(tmp_path / "k")


def _disk_used(path) -> int:
    """Blocks taken by every file and directory under `path` (what df counts), the cache's own directory included."""
    total = os.lstat(path).st_blocks * 512
    for d, dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(d, n)).st_blocks * 512 for n in dirs + files)
    return total


@pytest.mark.parametrize("lengths,storage,audio", [
    ([0.03] * 12 + [0.05] * 12, "float16", "float32"),  # short: edge chunks, zarr.json files and markers dominate
    ([0.03] * 12, "int8", "flac"),
    ([9.0, 12.5], "float32", "float32"),  # long: several chunks and shards per part
    ([9.0, 12.5], "int4", "int16"),
])
def test_the_dry_runs_need_is_a_true_upper_bound_of_the_disk_taken(tmp_path, tiny_teacher, lengths, storage, audio):
    """The forecast left out padded edge chunks, crc32c, shard indexes and zarr.json files: a run could be said to fit
    and then fill the disk. Now every real cache takes at most what was forecast."""
    from extract import ExtractConfig
    from store import Layout
    from tests.conftest import write_wav

    for i, seconds in enumerate(lengths):
        write_wav(str(tmp_path / "c" / f"u{i:02d}.wav"), seconds, seed=i)
    layout = {"chunk_frames": 8, "shard_frames": 32} if lengths[0] > 1 else {}
    cfg = ExtractConfig(tiny_teacher, str(tmp_path / "c"), layers=(1, 2, 3), cache_dir=str(tmp_path / "k"), part_seconds=0.3,
                        storage_dtype=storage, audio=audio, progress=False)
    import extract.run

    real_layout = extract.run.Layout
    extract.run.Layout = lambda **kw: Layout(**{**kw, **layout})  # small chunks and shards: many of each per part
    try:
        need = dry_run(cfg)["need_bytes"]
        path = extract_features(cfg).path
    finally:
        extract.run.Layout = real_layout
    used = _disk_used(path)
    assert used <= need, (used, need)
    print(f"{storage}/{audio} {len(lengths)} x {lengths[0]} s: used {used}, bound {need} ({need / used:.2f}x)")


def test_the_forecast_counts_the_frames_the_run_stores_for_resampled_files(tmp_path, tiny_teacher):
    """espeak-ng writes 22,050 Hz: the forecast floored n * 16000 / 22050 where soxr rounds, a frame short (38,056 vs 38,057)."""
    import numpy as np
    import soxr

    from extract.audio import resampled_length

    rng = np.random.default_rng(0)
    for rate in (22050, 44100, 8000, 11025):
        for n in rng.integers(400, 200_000, 20):
            assert resampled_length(int(n), rate, 16000) == len(soxr.resample(np.zeros(int(n), np.float32), rate, 16000, "HQ"))
    import soundfile as sf

    os.makedirs(tmp_path / "c")
    for i, n in enumerate((13781, 15986, 30000, 16868)):  # 3 lengths where the floor falls a frame short of soxr's length
        sf.write(str(tmp_path / "c" / f"u{i}.wav"), (0.1 * rng.standard_normal(n)).astype(np.float32), 22050, subtype="PCM_16")
    f = dry_run(_cfg(tiny_teacher, str(tmp_path / "c"), tmp_path / "k"))
    cache = open_cache(extract_features(_cfg(tiny_teacher, str(tmp_path / "c"), tmp_path / "k")).path)
    assert f["todo_frames"] == cache.total_frames


def test_float16_compute_on_a_cpu_is_called_out_and_storage_named(tmp_path, tiny_teacher, capfd):
    """--dtype float16 on a CPU forecast 19 min where float32 took 67 s, silently; and it is --storage that saves bytes."""
    corpus = build_corpus(str(tmp_path / "c"), n=1)
    dry_run(_cfg(tiny_teacher, corpus, tmp_path / "k", dtype="float16", device="cpu"))
    err = capfd.readouterr().err
    assert "--dtype float16 on cpu" in err and "--storage" in err
    dry_run(_cfg(tiny_teacher, corpus, tmp_path / "k", dtype="float32", device="cpu"))
    assert "--dtype float16" not in capfd.readouterr().err
