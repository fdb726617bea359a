"""--follow: training picks up parts committed while it runs, between epochs, and resumes exactly."""

import shutil

import pytest
import torch

from extract import ExtractConfig, extract_features
from tests.conftest import build_corpus, write_wav
from train.config import ConfigError, TrainConfig
from train.loop import train


def _cfg(cache, out, **kw):
    kw = {"steps": 12, "follow": True, "valid_fraction": 0.25, **kw}
    return TrainConfig(cache=cache, out=str(out), batch_size=2, max_crop_samples=8000, num_workers=0,
                       eval_interval=100, checkpoint_interval=100, progress=False, init="random", **kw)


def test_follow_picks_up_new_parts_between_epochs_and_resumes_exactly(tmp_path, tiny_teacher, capsys):
    corpus = build_corpus(str(tmp_path / "c"), n=4, seed=3)
    extract = ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False)
    path = extract_features(extract).path
    train(_cfg(path, tmp_path / "run", stop_after=3))  # epoch 0 and part of epoch 1 on what is committed now
    first = torch.load(tmp_path / "run/ckpt.pt", weights_only=True)["follow"]
    assert first["sizes"] == [len(first["ids"])] * 2
    for i in range(8):  # extraction goes on: more parts are committed into the same cache
        write_wav(f"{corpus}/spk9/new{i}.wav", 1.0, seed=50 + i)
    assert extract_features(extract).path == path
    shutil.copytree(tmp_path / "run", tmp_path / "twin")
    capsys.readouterr()
    train(_cfg(path, tmp_path / "run", resume=True))
    assert "utterances committed since the last epoch" in capsys.readouterr().err
    state = torch.load(tmp_path / "run/ckpt.pt", weights_only=True)["follow"]
    assert state["ids"][: len(first["ids"])] == first["ids"]  # the list only grows: an index names one utterance for good
    assert state["sizes"][:2] == first["sizes"] and state["sizes"][2] > first["sizes"][1]
    assert any(u.startswith("spk9/") for u in state["ids"][state["sizes"][1] :])
    train(_cfg(path, tmp_path / "twin", resume=True))  # the same checkpoint, resumed again: the same weights
    a = torch.load(tmp_path / "run/ckpt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "twin/ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_follow_trains_on_a_cache_being_extracted_and_needs_a_cache(tmp_path, tiny_teacher):
    from store import SpecMismatchError
    from store.lock import exclusive

    path = extract_features(ExtractConfig(tiny_teacher, build_corpus(str(tmp_path / "c"), n=4), layers=(1, 3),
                                          cache_dir=str(tmp_path / "k"), progress=False)).path
    with exclusive(path):  # an extract-features holds the cache's lock while it runs
        with pytest.raises(SpecMismatchError, match="is being extracted now"):
            train(_cfg(path, tmp_path / "plain", follow=False, steps=2))
        assert train(_cfg(path, tmp_path / "followed", steps=2))["step"] == 2
    with pytest.raises(ConfigError, match="--follow .* give --cache"):
        TrainConfig(out=str(tmp_path / "r"), teacher="t", corpus="c", follow=True)


def _bucket(key: str) -> float:
    import hashlib

    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


def test_growth_never_moves_a_held_out_recording_into_training(tmp_path, tiny_teacher):
    """The held-out split under --follow is a pure function of the recording id: the old fallback (hold out the lowest
    hash when the fraction holds none) moved to a newly committed utterance and put the first one into training."""
    corpus = build_corpus(str(tmp_path / "c"), n=4, seed=3)
    extract = ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False)
    path = extract_features(extract).path
    from store import open_cache

    ids = open_cache(path).utterance_ids
    fraction = min(map(_bucket, ids)) / 2  # holds none of the first utterances out by hash
    train(_cfg(path, tmp_path / "run", stop_after=2, valid_fraction=fraction))
    first = torch.load(tmp_path / "run/ckpt.pt", weights_only=True)["follow"]
    low = next(f"spk9/new{i}" for i in range(10_000) if _bucket(f"spk9/new{i}") < fraction / 2)  # held out by hash
    write_wav(f"{corpus}/{low}.wav", 1.0, seed=77)
    write_wav(f"{corpus}/spk9/other.wav", 1.0, seed=78)
    extract_features(extract)
    train(_cfg(path, tmp_path / "run", resume=True, valid_fraction=fraction))
    state = torch.load(tmp_path / "run/ckpt.pt", weights_only=True)["follow"]
    joined = set(state["ids"]) - set(first["ids"])
    assert joined == {"spk9/other"}, joined  # never an utterance that was held out before, nor the one held out now
