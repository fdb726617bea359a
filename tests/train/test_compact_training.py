"""Compact caches in training: the loader ships codes and scales, the step decodes them to what cache.read() gives."""

import numpy as np
import pytest
import torch

from extract import ExtractConfig, extract_features
from store import open_cache
from store.convert import convert_cache
from train.data import CachedCrops, collate
from train.decode import DeviceDecoder


@pytest.mark.parametrize("storage", ["int8", "int4", "pq", "rvq16"])
def test_device_decoding_equals_the_reader(cached, tmp_path, storage):
    src = extract_features(ExtractConfig(cached["teacher"], cached["corpus"], layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                         storage_dtype="float32", progress=False))
    cache = convert_cache(src.path, storage, "int16")
    ds = CachedCrops(cache, cache.utterance_ids, [1, 3], max_samples=12000, seed=0)
    batch = collate([ds[(0, i)] for i in range(len(ds))])
    assert batch["codes"].dtype == (torch.int8 if storage == "int8" else torch.uint8) and "targets" not in batch
    assert ("scales" in batch) == (storage in ("int8", "int4"))  # pq and rvq ship codes only (one byte per 4 channels, per book)
    targets = DeviceDecoder(cache, [1, 3], torch.device("cpu"))(batch["codes"], batch.get("scales"))
    for i in range(len(ds)):
        uid, k, _ = ds.crop((0, i))
        n = int(batch["frames"][i])
        for j, layer in enumerate((1, 3)):
            np.testing.assert_allclose(targets[i, j, :n].numpy(), cache.read(uid, layer, k, k + n), rtol=1e-5, atol=1e-5)
    exact = open_cache(src.path)
    uid = cache.utterance_ids[0]
    rel = np.linalg.norm(cache.read(uid, 3) - exact.read(uid, 3)) / np.linalg.norm(exact.read(uid, 3))
    assert rel < {"int8": 0.02, "int4": 0.3, "pq": 0.6, "rvq16": 0.6}[storage]


def test_train_on_int8_and_judge_against_exact_targets(cached, tmp_path, tiny_teacher, monkeypatch):
    import json

    from extract.teacher import Teacher

    def no_teacher(*a, **k):
        raise AssertionError("a cached run must never run the teacher (it is loaded only to initialise the student)")


    from click.testing import CliRunner

    from train.cli import main

    exact = extract_features(ExtractConfig(cached["teacher"], cached["corpus"], layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                           storage_dtype="float32", progress=False))
    small = convert_cache(exact.path, "int8")
    args = ["--cache", small.path, "--steps", "2", "--batch-size", "2", "--max-crop-samples", "8000", "--num-workers", "0",
            "--valid-fraction", "0.3", "--quiet"]
    with monkeypatch.context() as m:  # int8 batches carry codes, not targets: they once fell through to the online teacher
        m.setattr(Teacher, "forward", no_teacher)
        r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a"), "--eval-cache", exact.path])
    assert r.exit_code == 0, r.stderr
    judged = json.load(open(tmp_path / "a" / "eval.json"))
    assert judged["utterances"] >= 1 and judged["loss"] > 0
    other = build_other_teacher_cache(tmp_path, cached["corpus"])
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--eval-cache", other])
    assert r.exit_code == 2 and "another teacher" in r.stderr


def build_other_teacher_cache(tmp_path, corpus) -> str:
    from tests.conftest import build_tiny_teacher

    teacher = build_tiny_teacher(str(tmp_path / "other-teacher"), seed=7)
    return extract_features(ExtractConfig(teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k2"), progress=False)).path
