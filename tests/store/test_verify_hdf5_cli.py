import os

import numpy as np
from click.testing import CliRunner

from store import open_cache, verify_cache
from store.cli import main
from store.hdf5 import export_hdf5, import_hdf5


def test_verify_finds_a_flipped_byte(small_cache):
    cache, _ = small_cache
    assert verify_cache(cache.path) == []
    shard = os.path.join(cache.path, "parts", cache.part_dirs["p000000"], "layer_2", "c", "1", "0")
    data = bytearray(open(shard, "rb").read())
    data[40] ^= 0x01
    open(shard, "wb").write(bytes(data))
    problems = verify_cache(cache.path)
    assert len(problems) == 1 and "layer_2/c/1/0: damaged" in problems[0] and "rows 32-40" in problems[0]
    result = CliRunner().invoke(main, ["verify", cache.path])
    assert result.exit_code == 1 and "damaged:" in result.output and "Traceback" not in result.output


def test_verify_finds_index_mismatch(small_cache):
    import json

    cache, _ = small_cache
    marker = os.path.join(cache.path, "commits", "p000001.json")
    m = json.load(open(marker))
    m["frames"] = [m["frames"][0] + 1]
    json.dump(m, open(marker, "w"))
    assert any("p000001.json: its total_frames/total_samples disagree" in p for p in verify_cache(cache.path))
    m["total_frames"] += 1  # consistent with itself, not with the samples the teacher's convs map to those frames
    json.dump(m, open(marker, "w"))
    assert any("p000001.json: its frame counts disagree with its sample counts" in p for p in verify_cache(cache.path))


def test_hdf5_round_trip(small_cache, tmp_path):
    cache, truth = small_cache
    out = str(tmp_path / "x.h5")
    assert export_hdf5(cache.path, out) == len(truth)
    back = import_hdf5(out, str(tmp_path / "other-root"))
    assert back.fingerprint == cache.fingerprint and back.utterance_ids == cache.utterance_ids
    for uid in truth:
        for k in cache.layers:
            np.testing.assert_array_equal(back.read(uid, k), cache.read(uid, k))
        np.testing.assert_array_equal(back.read_audio(uid), cache.read_audio(uid))
    assert verify_cache(back.path) == []
    again = import_hdf5(out, str(tmp_path / "other-root"))  # idempotent: nothing new to import
    assert again.parts == back.parts


def test_cli_ls_info_rm(small_cache):
    cache, _ = small_cache
    root = os.path.dirname(cache.path)
    runner = CliRunner()
    out = runner.invoke(main, ["ls", "--cache-dir", root]).output
    assert cache.fingerprint in out and "utterances=4" in out
    info = runner.invoke(main, ["info", cache.fingerprint, "--cache-dir", root])
    assert info.exit_code == 0 and "parts_done         2" in info.output and "parts_pending" in info.output
    missing = runner.invoke(main, ["info", "/no/such/cache"])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "feature-cache ls" in missing.output
    assert runner.invoke(main, ["rm", cache.path, "--yes"]).exit_code == 0
    assert not os.path.exists(cache.path)
    assert open_cache  # noqa: B018 - imported API stays public
