"""The direct reader and the hand-encoded shards agree with zarr-python, and reads touch only needed chunks."""

import os

import numpy as np
import pytest
import zarr

from store import Layout, create_cache, open_cache
from store.chunks import ShardedRows
from tests.conftest import make_spec, write_parts


@pytest.mark.parametrize("codec", ["blosc-zstd", "zstd", "none"])
@pytest.mark.parametrize("storage_dtype", ["float16", "bfloat16", "float32"])
def test_hand_written_shards_read_back_through_zarr_python(tmp_path, codec, storage_dtype):
    layout = Layout(chunk_frames=8, shard_frames=32, codec=codec)
    path = create_cache(str(tmp_path), make_spec(storage_dtype=storage_dtype), layout=layout)
    write_parts(path, {"p000000": [("a", 3), ("b", 70), ("c", 1)]}, storage_dtype=storage_dtype, layout=layout)
    cache = open_cache(path)
    for key in ("layer_1", "layer_3", "audio"):
        array_dir = os.path.join(path, "parts", cache.part_dirs["p000000"], key)
        via_zarr = zarr.open_array(array_dir, mode="r")[:]
        direct = cache._rows(cache.part_dirs["p000000"], key)
        assert isinstance(direct, ShardedRows)
        np.testing.assert_array_equal(direct.read(0, via_zarr.shape[0]), via_zarr)


def test_a_crop_reads_only_the_chunks_that_hold_it(tmp_path, monkeypatch):
    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path), make_spec(), layout=layout)
    write_parts(path, {"p000000": [("pad", 5), ("long", 200)]}, layout=layout)
    cache = open_cache(path)
    touched = []
    original = ShardedRows._chunk
    monkeypatch.setattr(ShardedRows, "_chunk", lambda self, f, s, c: touched.append((s, c)) or original(self, f, s, c))
    cache.read("long", 2, 40, 60)  # part rows 45..65 -> chunks 5, 6, 7, 8 (rows 40..72)
    assert sorted(s * 4 + c for s, c in touched) == [5, 6, 7, 8]
