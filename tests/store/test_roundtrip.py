import multiprocessing as mp
import os
import pickle

import numpy as np
import pytest

from store import MissingDataError, NotACacheError, open_cache
from store.modes import TARGET_MODES
from tests.conftest import write_parts


def test_ragged_round_trip(small_cache):
    cache, truth = small_cache
    assert cache.utterance_ids == sorted(truth)
    for uid, (feats, audio) in truth.items():
        assert cache.num_frames(uid) == feats[1].shape[0]
        for k, f in feats.items():
            np.testing.assert_array_equal(cache.read(uid, k), f.astype(np.float16))
        np.testing.assert_array_equal(cache.read_audio(uid), audio)


@pytest.mark.parametrize("start,stop", [(0, 1), (5, 40), (31, 33), (90, 100), (0, None), (64, 64)])
def test_partial_reads_equal_slices(small_cache, start, stop):
    cache, _ = small_cache
    full = cache.read("a/long", 2)
    np.testing.assert_array_equal(cache.read("a/long", 2, start, stop), full[start:stop])
    audio = cache.read_audio("a/long")
    np.testing.assert_array_equal(cache.read_audio("a/long", start * 320, None if stop is None else stop * 320),
                                  audio[start * 320 : None if stop is None else stop * 320])


def test_plain_zarr_reads_the_same_bytes(small_cache):
    import zarr

    cache, truth = small_cache
    arr = zarr.open_array(os.path.join(cache.path, "parts", cache.part_dirs["p000000"], "layer_3"), mode="r")
    np.testing.assert_array_equal(arr[1:101], truth["a/long"][0][3].astype(np.float16))


def test_missing_things_are_one_line_errors(small_cache, tmp_path):
    cache, _ = small_cache
    with pytest.raises(MissingDataError, match="layer 9 is not in this cache .*--layers 9"):
        cache.read("a/long", 9)
    with pytest.raises(MissingDataError, match="'nope' is not in this cache"):
        cache.read("nope", 1)
    with pytest.raises(MissingDataError, match="frames 90:101 is out of range"):
        cache.read("a/long", 1, 90, 101)
    with pytest.raises(NotACacheError, match="not a distilcache cache"):
        open_cache(str(tmp_path))


@pytest.mark.parametrize("version,says", [(99, "newer than this distilcache reads"), (1, "older distilcache.*re-run extract-features")])
def test_other_formats_are_refused_in_one_line(small_cache, version, says):
    import json

    from click.testing import CliRunner

    from store import FormatVersionError
    from store.cli import main

    cache, _ = small_cache
    meta_file = os.path.join(cache.path, "zarr.json")
    meta = json.load(open(meta_file))
    meta["attributes"]["distilcache"]["format_version"] = version
    json.dump(meta, open(meta_file, "w"))
    with pytest.raises(FormatVersionError, match=says):
        open_cache(cache.path)
    r = CliRunner().invoke(main, ["info", cache.path])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "format" in r.output


def test_open_by_fingerprint_prefix(small_cache):
    cache, _ = small_cache
    root = os.path.dirname(cache.path)
    assert open_cache(cache.fingerprint[:6], cache_dir=root).path == cache.path


def _read_in_child(cache, uid, q):
    q.put(cache.read(uid, 3).tobytes())


def test_cache_crosses_process_boundaries(small_cache):
    cache, truth = small_cache
    cache.read("a/long", 3)  # opens handles in the parent
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._handles == {}
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_read_in_child, args=(cache, "c/y", q))
    p.start()
    p.join(30)
    assert q.get(timeout=5) == truth["c/y"][0][3].astype(np.float16).tobytes()


def test_a_copied_or_unpickled_cache_reads_twice_in_one_process(small_cache):
    import copy

    cache, truth = small_cache
    cache.read("a/long", 1)
    for other in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        for _ in range(2):  # the second read finds the handle the first one opened (an LRU, not a plain dict)
            assert np.array_equal(other.read("a/long", 2), truth["a/long"][0][2].astype(np.float16))


def test_bfloat16_storage_round_trip(tmp_path):
    from store import create_cache
    from tests.conftest import make_spec

    x = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0, 1e30], dtype=np.float32)
    bf16 = TARGET_MODES["bfloat16"]
    back = bf16.decode(bf16.encode(x[None], None), None)[0]
    np.testing.assert_allclose(back, x, rtol=2**-8)
    from store import Layout

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path), make_spec(storage_dtype="bfloat16"), layout=layout)
    truth = write_parts(path, {"p000000": [("u", 5)]}, storage_dtype="bfloat16", layout=layout)
    got = open_cache(path).read("u", 2)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, truth["u"][0][2], rtol=2**-8, atol=1e-6)


def test_open_arrays_are_bounded_per_process(tmp_path):
    from store import Layout, create_cache
    from store.reader import MAX_OPEN_ARRAYS
    from tests.conftest import make_spec, write_parts

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path), make_spec(), layout=layout)
    write_parts(path, {f"p{i:03d}": [(f"u{i}", 3)] for i in range(40)}, layout=layout)
    cache = open_cache(path)
    for uid in cache.utterance_ids:  # 40 parts x (3 layers + audio) = 160 arrays touched
        for layer in cache.layers:
            cache.read(uid, layer)
        cache.read_audio(uid)
    assert len(cache._handles) == MAX_OPEN_ARRAYS
