"""Issue 30: a teacher made here (HuBERT's first iteration in miniature) and the espeak-ng corpora it learns from."""

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import build_corpus


def test_mfcc_frames_are_the_teachers_frames():
    from train.pretraining.pretrain import mfcc

    for n in (400, 401, 719, 720, 16000, 48_123):
        assert mfcc(np.zeros(n, np.float32) + 0.01).shape == ((n - 400) // 320 + 1, 39)


def test_masks_are_spans_of_the_given_length():
    from train.pretraining.pretrain import PretrainConfig, masks

    m = masks(4, 200, PretrainConfig("c", "o"), np.random.default_rng(0)).numpy()
    assert m.any(1).all() and 0.2 < m.mean() < 0.8  # HuBERT's p = 0.08, length 10: about half
    runs = np.diff(np.concatenate([np.zeros((4, 1)), m, np.zeros((4, 1))], 1).astype(int), axis=1)
    assert all(((np.where(r == -1)[0] - np.where(r == 1)[0]) >= 10).all() for r in runs)


def test_a_pretrained_teacher_is_saved_like_a_hub_model_found_again_and_extracted(tmp_path):
    pytest.importorskip("faiss")
    from extract import ExtractConfig, extract_features
    from train.pretraining.pretrain import PretrainConfig, pretrain

    corpus = build_corpus(str(tmp_path / "c"), n=6)
    cfg = PretrainConfig(corpus, str(tmp_path / "t"), layers=2, hidden=32, heads=2, ffn=64, conv=32, clusters=8, steps=3, batch=2,
                         crop_seconds=1.0, held_out=0.2)
    record = pretrain(cfg)
    assert set(os.listdir(tmp_path / "t")) >= {"config.json", "model.safetensors", "preprocessor_config.json", "pretrain.json"}
    assert 0 <= record["masked_accuracy_held_out"]["after"] <= 1 and len(record["log"]) >= 2
    stamp = os.stat(tmp_path / "t" / "model.safetensors").st_mtime_ns
    assert pretrain(cfg) == record and os.stat(tmp_path / "t" / "model.safetensors").st_mtime_ns == stamp  # made once
    s = extract_features(ExtractConfig(str(tmp_path / "t"), corpus, layers="all", cache_dir=str(tmp_path / "k"), progress=False))
    assert s.utterances == 6
    with pytest.raises(SystemExit, match="another config"):
        pretrain(PretrainConfig(corpus, str(tmp_path / "t"), steps=4))
    (tmp_path / "t" / "pretrain.json").write_text("[not a record")  # read back from disk: untrusted, one line
    with pytest.raises(SystemExit, match="unreadable pretrain.json"):
        pretrain(cfg)


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng (make espeak)")
def test_the_espeak_corpus_writes_audio_and_every_label_file(tmp_path):
    import soundfile as sf

    from train.pretraining.speech_corpus import KEYWORDS, make_corpus

    summary = make_corpus(str(tmp_path / "s"), 2, 3, 0, keywords_per_speaker=2)
    assert summary["utterances"] == 10 and make_corpus(str(tmp_path / "s"), 2, 3, 0, keywords_per_speaker=2) == summary
    speakers = dict(line.split("\t") for line in open(tmp_path / "s" / "speakers.tsv").read().splitlines())
    phones = dict(line.split(" ", 1) for line in open(tmp_path / "s" / "phones.txt").read().splitlines())
    keywords = dict(line.split("\t") for line in open(tmp_path / "s" / "keywords.tsv").read().splitlines())
    assert len(speakers) == 10 and set(speakers.values()) == {"s00", "s01"} and len(phones) == 6 and len(keywords) == 4
    assert set(keywords.values()) <= set(KEYWORDS) | {"_unknown_"} and all(len(p.split()) >= 5 for p in phones.values())
    assert all(sf.info(str(tmp_path / "s" / f"{u}.wav")).duration > 0.2 for u in speakers)
    json.dump({"args": {}}, open(tmp_path / "s" / "corpus.json", "w"))
    with pytest.raises(SystemExit, match="holds another corpus"):
        make_corpus(str(tmp_path / "s"), 2, 3, 0, keywords_per_speaker=2)


def _tiny(corpus, out, **kw):
    from train.pretraining.pretrain import PretrainConfig

    small = dict(layers=1, hidden=16, heads=2, ffn=32, conv=16, clusters=4, steps=2, batch=2, crop_seconds=1.0, held_out=0.2)
    return PretrainConfig(str(corpus), str(out), **{**small, **kw})


def test_the_held_out_utterances_are_not_in_the_clusters_fit(tmp_path, monkeypatch):
    """The MFCC standardisation and k-means were fitted on every utterance, the held-out ones included."""
    pytest.importorskip("faiss")
    from train.pretraining import pretrain as module

    fitted = {}
    real = module.cluster_labels

    def spy(feats, fit_ids, k, seed):
        fitted["ids"] = list(fit_ids)
        return real(feats, fit_ids, k, seed)

    monkeypatch.setattr(module, "cluster_labels", spy)
    corpus = build_corpus(str(tmp_path / "c"), n=10)
    cfg = _tiny(corpus, tmp_path / "t", held_out=0.3)
    record = module.pretrain(cfg)
    feats = {u: module.mfcc(w) for u, w in module.load_corpus(corpus).items()}
    held, train_ids = module.split_held_out(module.long_enough(feats, cfg), cfg, np.random.default_rng(cfg.seed))
    assert record["held_out"] == len(held) == 3 and set(fitted["ids"]) == set(train_ids) and not held & set(fitted["ids"])


def test_small_corpora_are_one_line_each(tmp_path):
    """One file (numpy's 'a cannot be empty'), a held-out file under 400 samples (IndexError in masks), under the
    cluster count of frames (faiss's RuntimeError): one line each, or the short file left out saying so."""
    pytest.importorskip("faiss")
    import soundfile as sf

    from tests.conftest import write_wav
    from train.pretraining.pretrain import pretrain

    one = tmp_path / "one"
    write_wav(str(one / "a.wav"), 1.0)
    with pytest.raises(SystemExit, match="at least 2"):
        pretrain(_tiny(one, tmp_path / "t1"))
    few = tmp_path / "few"
    for i in range(2):
        write_wav(str(few / f"{i}.wav"), 0.3, seed=i)  # 14 frames each: fewer than 100 clusters
    with pytest.raises(SystemExit, match="k-means with 100 clusters needs at least 100"):
        pretrain(_tiny(few, tmp_path / "t2", clusters=100))
    short = build_corpus(str(tmp_path / "short"), n=4)
    sf.write(str(tmp_path / "short" / "tiny.wav"), np.zeros(300, np.float32), 16000)
    record = pretrain(_tiny(short, tmp_path / "t3", held_out=0.5))
    assert record["utterances"] == 4  # the 300-sample file was left out, with a line
