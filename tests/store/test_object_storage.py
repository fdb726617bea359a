"""Caches on S3: a real S3 API (a moto server on loopback) reached through s3fs, no mocks of our code."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from store import StoreAccessError, open_cache, verify_cache
from store.cli import main as feature_cache
from tests.conftest import build_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.kill()


@pytest.fixture
def s3(monkeypatch, s3_endpoint):
    import s3fs

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"caches-{time.time_ns()}"
    fs.mkdir(bucket)
    yield f"s3://{bucket}/team"
    s3fs.S3FileSystem.clear_instance_cache()


def test_extract_read_verify_and_train_on_s3(s3, tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    base = dict(teacher=tiny_teacher, corpus=corpus, layers=(1, 3), part_seconds=2, progress=False)
    local = extract_features(ExtractConfig(**base, cache_dir=str(tmp_path / "local")))
    remote = extract_features(ExtractConfig(**base, cache_dir=s3))
    assert remote.path == f"{s3}/{local.fingerprint}" and remote.utterances == 5 and remote.teacher_work
    again = extract_features(ExtractConfig(**base, cache_dir=s3))
    assert not again.teacher_work  # found on the bucket, nothing redone

    a, b = open_cache(local.path), open_cache(remote.path)
    assert a.utterance_ids == b.utterance_ids
    for uid in a.utterance_ids:
        np.testing.assert_array_equal(a.read(uid, 3, 1, 9), b.read(uid, 3, 1, 9))
        np.testing.assert_array_equal(a.read_audio(uid), b.read_audio(uid))
    assert verify_cache(remote.path) == []

    runner = CliRunner()
    assert local.fingerprint in runner.invoke(feature_cache, ["ls", "--cache-dir", s3]).output
    info = runner.invoke(feature_cache, ["info", local.fingerprint[:8], "--cache-dir", s3])
    assert info.exit_code == 0 and "parts_pending      0" in info.output

    from train.config import TrainConfig
    from train.loop import train

    result = train(TrainConfig(cache=remote.fingerprint, cache_dir=s3, out=str(tmp_path / "run"), steps=2, batch_size=2,
                               max_crop_samples=16000, num_workers=1, valid_fraction=0, progress=False, teacher=tiny_teacher))
    assert result["step"] == 2 and os.path.isdir(result["student"])


def test_unreachable_store_is_one_clear_line(monkeypatch, tmp_path, tiny_teacher):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    corpus = build_corpus(str(tmp_path / "c"), n=1)
    with pytest.raises(StoreAccessError, match="s3://nowhere/caches.*cannot use this store \\(EndpointConnectionError"):
        extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1,), cache_dir="s3://nowhere/caches", progress=False))
    s3fs.S3FileSystem.clear_instance_cache()


def test_missing_credentials_are_one_clear_line(monkeypatch, s3_endpoint):
    import s3fs

    from store import list_caches

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StoreAccessError, match="s3://some-bucket/caches: cannot use this store \\(NoCredentialsError"):
        list_caches("s3://some-bucket/caches")
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_missing_bucket_is_one_line(s3, tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=1)
    missing = "s3://no-such-bucket-here/caches"
    from extract.cli import main as extract_cli

    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1", "--cache-dir", missing,
                                         "--quiet"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "no-such-bucket-here" in r.stderr and "bucket" in r.stderr, r.stderr
    r = CliRunner().invoke(feature_cache, ["ls", "--cache-dir", missing])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "bucket" in r.stderr, r.stderr


def test_two_extractors_on_one_s3_cache_both_finish_with_every_utterance_once(s3, tmp_path, tiny_teacher):
    from concurrent.futures import ThreadPoolExecutor

    corpus = build_corpus(str(tmp_path / "c"), n=6)
    cfg = ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=s3, part_seconds=2, progress=False)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: extract_features(cfg), range(2)))
    cache = open_cache(results[0].path)
    assert len(cache) == 6 and not cache.duplicates and verify_cache(cache.path) == []


_SECOND_WRITER = """
import sys
from store import Layout, PartWriter
from tests.conftest import fake_utterance
writer = PartWriter(sys.argv[1], "p000000", [1, 2, 3], 16, "float16", Layout(chunk_frames=8, shard_frames=32))
feats, audio = fake_utterance("b/second", 9)
writer.add("b/second", feats, audio)
print(writer.commit()["dir"])
"""


def test_two_writers_of_one_part_on_s3_exactly_one_commits_even_with_a_stale_listing(s3):
    from store import Layout, PartWriter, create_cache, fs
    from tests.conftest import fake_utterance, make_spec

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(s3, make_spec(), {"teacher": "tiny"}, layout)
    other = PartWriter(path, "p000001", [1, 2, 3], 16, "float16", layout)
    other.add("c/other", *fake_utterance("c/other", 3))
    other.commit()
    first = PartWriter(path, "p000000", [1, 2, 3], 16, "float16", layout)
    feats, audio = fake_utterance("a/first", 5)
    first.add("a/first", feats, audio)
    assert fs.listdir(f"{path}/commits") == ["p000001.json"]  # this process's view of commits/ is now cached, as a long writer's is
    second = subprocess.run([sys.executable, "-c", _SECOND_WRITER, path], capture_output=True, text=True, env=os.environ,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert second.returncode == 0, second.stderr
    winner = second.stdout.strip()
    marker = first.commit()  # the store refuses this PUT: the part is the second writer's
    assert marker["dir"] == winner and marker["ids"] == ["b/second"]
    assert not fs.exists(f"{path}/parts/{first.dir}/zarr.json")  # the loser's attempt is gone
    cache = open_cache(path)
    assert cache.ids_by_part() == {"p000000": ["b/second"], "p000001": ["c/other"]} and verify_cache(cache.path) == []


def test_a_commit_retried_after_a_lost_reply_keeps_its_own_part(s3, monkeypatch):
    """botocore retries a PUT whose reply was lost; the retry's 412 is about the writer's own first try, which landed:
    the part stands (it used to take the 412 for another writer's marker and remove the directory its marker names)."""
    import s3fs

    from store import Layout, create_cache
    from tests.conftest import make_spec, write_parts

    real = s3fs.S3FileSystem._pipe_file
    lost = []

    async def reply_lost(self, path, data, *args, mode="overwrite", **kwargs):
        out = await real(self, path, data, *args, mode=mode, **kwargs)
        if mode == "create":  # it landed; the reply did not, and botocore's retry met the marker
            lost.append(path)
            raise FileExistsError(path)
        return out

    layout = Layout(chunk_frames=8, shard_frames=32)
    path = create_cache(s3, make_spec(), layout=layout)
    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", reply_lost)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec binds the sync pipe_file per instance
    truth = write_parts(path, {"p000000": [("a", 5), ("b", 40)]}, layout=layout)
    assert len(lost) == 1
    cache = open_cache(path)
    assert cache.utterance_ids == ["a", "b"]
    np.testing.assert_allclose(cache.read("b", 2), truth["b"][0][2], atol=1e-2)
    assert verify_cache(path) == []
