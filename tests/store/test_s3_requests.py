"""Requests per training crop on S3 at LibriSpeech's shape (issue 34, item 3): many parts of short utterances, crops
drawn across parts as the training sampler draws them, so that nearly every crop lands in another part than the last.
Counted on a real S3 API (a moto server on loopback, bench.common.moto_server), by method: a count, not a time."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.s3_crops import LAYERS, RATE, build
from store import Layout, open_cache

PARTS = 20


@pytest.fixture
def logged_s3():
    """(bucket url, the server's MotoLog: requests answered so far, by method)."""
    import s3fs

    from bench.common import moto_server

    with moto_server() as log:
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("crops")
        yield "s3://crops/caches", log
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_training_crop_costs_at_most_five_requests_and_no_head(tmp_path, logged_s3):
    import s3fs

    from train.data import BucketBatches, CachedCrops

    url, log = logged_s3
    # LibriSpeech's proportions: ~7 utterances a shard, 7 shards a part (49 utterances of 12 s, 4,096-frame shards)
    local = build(str(tmp_path / "caches"), parts=PARTS, per_part=40, seconds=3, dim=8,
                  layout=Layout(chunk_frames=32, shard_frames=1024))
    remote = f"{url}/{os.path.basename(local)}"
    s3fs.S3FileSystem().put(local, remote, recursive=True)
    cache = open_cache(remote)
    ids = sorted(cache.utterance_ids)
    crops = CachedCrops(cache, ids, list(LAYERS), 4 * RATE, seed=0)  # whole utterances, as LibriSpeech's under 15.6 s crops
    batches = BucketBatches([min(cache.num_samples(u), 4 * RATE) for u in ids], 4, 0)  # the training sampler's order
    keys = [key for _, batch in zip(range(len(ids) // 4), batches.from_step(0), strict=False) for key in batch]
    assert len({cache.part_of(ids[i]) for _, i in keys}) == PARTS  # drawn across every part
    before = log.requests(), log.requests("HEAD")
    local_crops = CachedCrops(open_cache(local), ids, list(LAYERS), 4 * RATE, seed=0)
    for key in keys:  # the same bytes as from the local copy
        wave, targets = crops[key]
        wave_l, targets_l = local_crops[key]
        np.testing.assert_array_equal(wave.numpy(), wave_l.numpy())
        np.testing.assert_array_equal(targets.numpy(), targets_l.numpy())
    per_crop, heads = (log.requests() - before[0]) / len(keys), log.requests("HEAD") - before[1]
    assert heads == 0, heads
    assert per_crop <= 5, per_crop
    print(f"requests per crop: {per_crop:.2f}, {len(keys)} crops over {PARTS} parts")

    # the marker's record of the chunk sizes is untrusted input too: edited, a read fails loudly (crc32c), never wrong values
    import base64
    import json

    from store.errors import CorruptDataError
    from store.layout import commit_path

    s3 = s3fs.S3FileSystem()
    part = cache.part_of(ids[0])
    marker = json.loads(s3.cat_file(commit_path(remote, part)))
    key = f"layer_{LAYERS[0]}"
    sizes = np.frombuffer(base64.b64decode(marker["shards"][key]), "<u4").copy()
    sizes[0] += 8
    marker["shards"][key] = base64.b64encode(sizes.tobytes()).decode()
    s3.pipe_file(commit_path(remote, part), json.dumps(marker).encode())
    with pytest.raises(CorruptDataError, match="crc32c"):
        open_cache(remote).read(ids[0], LAYERS[0], 0, 60)
