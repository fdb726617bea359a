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
    touched, reads = [], []
    original = ShardedRows._decoded
    monkeypatch.setattr(ShardedRows, "_decoded", lambda self, raw, s, c: touched.append((s, c)) or original(self, raw, s, c))
    import store.fs

    real = store.fs.read_range
    monkeypatch.setattr(store.fs, "read_range", lambda path, start, stop=None: reads.append((start, stop)) or real(path, start, stop))
    expected = cache.read("long", 2, 40, 60)  # part rows 45..65 -> chunks 5, 6, 7, 8 (rows 40..72)
    assert sorted(s * 4 + c for s, c in touched) == [5, 6, 7, 8]
    # coalesced: per shard one index read (its tail) and one read of its chunks 5-7 / 8, back to back
    assert sorted(r[1] is None for r in reads) == [False, False, True, True]
    at = cache._locate("long")
    direct = zarr.open_array(f"{path}/parts/{at.dir}/layer_2", mode="r")[at.first_frame + 40 : at.first_frame + 60]
    np.testing.assert_array_equal(expected, direct)  # zarr-python's own chunk-by-chunk read: the same rows


@pytest.mark.parametrize("damage", ["flipped byte", "truncated shard"])
def test_a_coalesced_read_still_checks_every_chunk(tmp_path, damage):
    """One ranged read now fetches a run of chunks; each is still checked against its crc32c, and a shard shorter than
    its index says is one clear error, not a decode of the wrong bytes."""
    from store import CorruptDataError

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(str(tmp_path), make_spec(), layout=layout)
    write_parts(path, {"p000000": [("long", 30)]}, layout=layout)
    cache = open_cache(path)
    shard = f"{path}/parts/{cache._locate('long').dir}/layer_2/c/0/0"
    data = bytearray(open(shard, "rb").read())
    index = np.frombuffer(bytes(data[-(16 * 4 + 4) : -4]), dtype="<u8").reshape(4, 2)
    third = int(index[2][0]) + 5  # inside chunk 2 of a run 0..3
    if damage == "flipped byte":
        data[third] ^= 0xFF
        open(shard, "wb").write(bytes(data))
    else:
        open(shard, "wb").write(bytes(data[: int(index[1][0])] + data[-(16 * 4 + 4) :]))  # chunks 1.. cut out, index kept
    with pytest.raises(CorruptDataError, match="chunk at rows 16-24 failed its crc32c|shorter than its index"):
        cache.read("long", 2, 0, 30)
