"""Statistics of compact caches (int8/int4/pq) are fitted only on what the pipeline accepts, never poisoned, never reused
when bad, and robust to a channel that was constant on the fitting sample."""

import numpy as np
import pytest
import soundfile as sf

from extract import ExtractConfig, extract_features
from store import open_cache
from store.errors import StatsError
from store.fidelity import check_stats, fit_and_measure
from store.modes import fit_stats
from tests.conftest import build_corpus


def _cfg(teacher, corpus, root, **kw):
    return ExtractConfig(teacher, corpus, layers=(1, 3), cache_dir=str(root), storage_dtype="int8", progress=False, **kw)


def _all_rows_finite(cache) -> bool:
    return all(np.isfinite(cache.read(u, k)).all() for u in cache.utterance_ids for k in cache.layers)


def test_a_nan_file_does_not_poison_int8_statistics(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    sf.write(f"{corpus}/spk0/nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    s = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k", on_error="skip"))
    cache = open_cache(s.path)
    assert len(cache) == 5 and any("NaN" in x["reason"] for x in s.skipped)
    assert all(np.isfinite(v).all() for st in cache.stats.values() for v in st.values())
    assert _all_rows_finite(cache)
    fid = cache.provenance["fidelity"]["layers"]
    assert all(np.isfinite(m["rel_l2_mean"]) and m["rel_l2_mean"] < 0.05 for m in fid.values()), fid


def test_poisoned_statistics_of_an_older_cache_are_never_reused(tmp_path, tiny_teacher, monkeypatch, capsys):
    import extract.compact
    import extract.run

    corpus = build_corpus(str(tmp_path / "c"), n=4)
    good = extract.compact.fit_with_teacher

    def poisoned(*a, **kw):  # what an older distilcache wrote when a NaN file reached the sample
        stats, measured = good(*a, **kw)
        for v in stats.values():
            v["mean"][:] = np.nan
        return stats, measured

    monkeypatch.setattr(extract.compact, "fit_with_teacher", poisoned)
    bad = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert not np.isfinite(open_cache(bad.path).stats[1]["mean"]).all()
    monkeypatch.setattr(extract.compact, "fit_with_teacher", good)
    again = extract_features(_cfg(tiny_teacher, corpus, tmp_path / "k"))
    assert again.fingerprint != bad.fingerprint and again.teacher_work
    assert "statistics are not finite; fitting new ones" in capsys.readouterr().err
    assert _all_rows_finite(open_cache(again.path))


def test_non_finite_statistics_or_error_are_refused_in_one_line():
    with pytest.raises(StatsError, match="layer 4 are not finite"):
        check_stats("int8", {4: {"mean": np.array([np.nan], np.float32), "std": np.ones(1, np.float32)}}, None)
    with pytest.raises(StatsError, match="no utterance of the corpus gives finite targets"):
        fit_and_measure("int8", [4], ["a", "b"], lambda u: {4: np.full((5, 3), np.nan, np.float32)})


def _layer(n, d, seed, constant_channel=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.5, 1.5, d).astype(np.float32)
    if constant_channel:
        x[:, 0] = 0.25  # e.g. a channel that only fires on speech, on a sample of silence
    return x


@pytest.mark.parametrize("mode,bound", [("int8", 0.03), ("int4", 0.35)])
def test_a_channel_constant_on_the_sample_does_not_wipe_out_unseen_rows(mode, bound):
    """The std floor is relative to the layer's scale: with an absolute 1e-6 floor int8's error on such an utterance was 82%."""
    d = 64
    ids = [f"u{i:03d}" for i in range(60)]
    ranked = sorted(ids, key=lambda u: __import__("hashlib").sha1(u.encode()).hexdigest())
    fitting = set(ranked[:32])
    feats = {u: {4: _layer(50, d, i, constant_channel=u in fitting)} for i, u in enumerate(ids)}
    stats, measured = fit_and_measure(mode, [4], ids, lambda u: feats[u])
    m = measured["layers"]["4"]
    assert measured["held_out_utterances"] == 16 and m["rel_l2_mean"] < bound, m
    assert fit_stats([feats[ranked[0]][4]])["std"][0] >= 0.05  # the floor: a tenth of the layer's RMS channel std


def test_a_cache_fitted_on_silence_and_grown_with_speech_records_its_real_error(tmp_path, tiny_teacher):
    from click.testing import CliRunner

    from store import describe
    from store.cli import main as cache_cli
    from store.fidelity import error_summary, error_sums, merge_error_sums

    corpus = tmp_path / "c"
    for i in range(4):  # digital silence: the statistics are fitted here (their error on it is ~0)
        (corpus / "quiet").mkdir(parents=True, exist_ok=True)
        sf.write(corpus / "quiet" / f"q{i}.wav", np.zeros(16000 + 800 * i, np.float32), 16000, subtype="FLOAT")
    first = extract_features(_cfg(tiny_teacher, str(corpus), tmp_path / "k"))
    held_out = open_cache(first.path).provenance["fidelity"]["layers"]
    build_corpus(str(corpus / "speech"), n=4, seed=3)  # then the corpus grows with speech-like audio, same statistics
    grown = extract_features(_cfg(tiny_teacher, str(corpus), tmp_path / "k"))
    assert grown.fingerprint == first.fingerprint and grown.utterances == 8
    exact = open_cache(extract_features(ExtractConfig(tiny_teacher, str(corpus), layers=(1, 3), cache_dir=str(tmp_path / "x"),
                                                      storage_dtype="float32", progress=False)).path)
    cache = open_cache(grown.path)
    stored = describe(cache)["stored_error"]
    assert stored["parts"] == stored["of_parts"] == len(cache.parts)
    for k in cache.layers:
        sums = None
        for u in cache.utterance_ids:
            sums = merge_error_sums(sums, error_sums(exact.read(u, k), cache.read(u, k)))
        want = error_summary(sums)
        got = stored["layers"][str(k)]
        assert got["frames"] == want["frames"] == cache.total_frames
        np.testing.assert_allclose(got["rel_l2_mean"], want["rel_l2_mean"], rtol=1e-4)
        np.testing.assert_allclose(got["cos_min"], want["cos_min"], rtol=1e-4)
        assert got["rel_l2_mean"] > 3 * held_out[str(k)]["rel_l2_mean"], (got, held_out)  # not the sample's figure
    out = CliRunner().invoke(cache_cli, ["info", cache.path]).output
    assert f"stored layer {cache.layers[0]}" in out and "on all" in out
