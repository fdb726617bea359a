"""Requests per training crop on S3 at LibriSpeech's shape (issue 34, item 3): many parts of short utterances, crops
drawn across parts as the training sampler draws them, so that nearly every crop lands in another part than the last.
Counted on a real S3 API (a moto server on loopback), by method: a count, not a time."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from store import Layout, PartWriter, create_cache, open_cache
from store.index import consolidate
from store.layout import part_name
from store.spec import FORMAT_VERSION

PARTS, PER_PART, SECONDS, RATE, LAYERS, DIM = 20, 40, 3, 16000, (2, 4, 6), 8


def _write(root: str) -> str:
    spec = {"format_version": FORMAT_VERSION, "teacher": {"digest": "sha256:s3-requests", "config": {"hidden_size": DIM}},
            "layers": list(LAYERS), "dim": DIM, "compute_dtype": "float32", "storage_dtype": "float16",
            "preprocessing": {"sample_rate": RATE, "mono": "mean", "resampler": "soxr-HQ", "normalize": False},
            "frame": {"window": 400, "hop": 320}}
    # LibriSpeech's proportions: ~7 utterances a shard, 7 shards a part (49 utterances of 12 s, 4,096-frame shards)
    layout = Layout(chunk_frames=32, shard_frames=1024)
    path = create_cache(root, spec, {"teacher": "s3-requests"}, layout)
    rng = np.random.default_rng(0)
    for p in range(PARTS):
        ids = [f"spk{p:02d}/utt{i:02d}" for i in range(PER_PART)]
        writer = PartWriter(path, part_name(ids), list(LAYERS), DIM, "float16", layout)
        for uid in ids:
            n = SECONDS * RATE
            frames = (n - 400) // 320 + 1
            writer.add(uid, {k: rng.standard_normal((frames, DIM)).astype(np.float32) for k in LAYERS},
                       (0.1 * rng.standard_normal(n)).astype(np.float32))
        writer.commit()
    consolidate(path)
    return path


@pytest.fixture
def logged_s3(monkeypatch, tmp_path):
    """(bucket url, a function giving the requests moto answered so far by method)."""
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "moto.log", "w+")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # a line per request, as it comes
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("crops")

    def requests() -> dict[str, int]:
        log.flush()
        log.seek(0)
        counts: dict[str, int] = {}
        for method in re.findall(r'"(?:\x1b\[[0-9;]*m)*(GET|HEAD|PUT|POST|DELETE) ', log.read()):  # 206s are coloured
            counts[method] = counts.get(method, 0) + 1
        return counts

    yield "s3://crops/caches", requests
    s3fs.S3FileSystem.clear_instance_cache()
    proc.kill()
    log.close()


def test_a_training_crop_costs_at_most_five_requests_and_no_head(tmp_path, logged_s3):
    import s3fs

    from train.data import BucketBatches, CachedCrops

    url, requests = logged_s3
    local = _write(str(tmp_path / "caches"))
    remote = f"{url}/{os.path.basename(local)}"
    s3fs.S3FileSystem().put(local, remote, recursive=True)
    cache = open_cache(remote)
    ids = sorted(cache.utterance_ids)
    crops = CachedCrops(cache, ids, list(LAYERS), 4 * RATE, seed=0)  # whole utterances, as LibriSpeech's under 15.6 s crops
    batches = BucketBatches([min(cache.num_samples(u), 4 * RATE) for u in ids], 4, 0)  # the training sampler's order
    keys = [key for _, batch in zip(range(len(ids) // 4), batches.from_step(0), strict=False) for key in batch]
    assert len({cache.part_of(ids[i]) for _, i in keys}) == PARTS  # drawn across every part
    before = requests()
    local_cache = open_cache(local)
    local_crops = CachedCrops(local_cache, ids, list(LAYERS), 4 * RATE, seed=0)
    for key in keys:  # the same bytes as from the local copy
        wave, targets = crops[key]
        wave_l, targets_l = local_crops[key]
        np.testing.assert_array_equal(wave.numpy(), wave_l.numpy())
        np.testing.assert_array_equal(targets.numpy(), targets_l.numpy())
    after = requests()
    spent = {m: after.get(m, 0) - before.get(m, 0) for m in after}
    per_crop = sum(spent.values()) / len(keys)
    assert spent.get("HEAD", 0) == 0, spent
    assert per_crop <= 5, (per_crop, spent)
    print(f"requests per crop: {per_crop:.2f} ({spent}, {len(keys)} crops over {PARTS} parts; {before} before)")

    # the marker's record of the chunk sizes is untrusted input too: edited, a read fails loudly (crc32c), never wrong values
    import base64
    import json

    from store.errors import CorruptDataError
    from store.layout import commit_path

    s3 = s3fs.S3FileSystem()
    part = cache.part_of(ids[0])
    marker = json.loads(s3.cat_file(commit_path(remote, part)))
    sizes = np.frombuffer(base64.b64decode(marker["shards"]["layer_2"]), "<u4").copy()
    sizes[0] += 8
    marker["shards"]["layer_2"] = base64.b64encode(sizes.tobytes()).decode()
    s3.pipe_file(commit_path(remote, part), json.dumps(marker).encode())
    with pytest.raises(CorruptDataError, match="crc32c"):
        open_cache(remote).read(ids[0], 2, 0, 60)
