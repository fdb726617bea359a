"""Issue 11: compact storage modes, their error bounds, derived caches, audio modes, training on them."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from extract import ExtractConfig, extract_features
from store import open_cache, verify_cache
from store.cli import main as cache_cli
from store.fidelity import fidelity
from store.modes import TARGET_MODES, fit_stats
from tests.conftest import build_corpus, write_wav


def _features(n=4000, d=768, seed=0):
    """Post-LayerNorm-like rows with per-channel offsets and a few outlier channels (what breaks per-row-only scaling)."""
    channels = np.random.default_rng(1234)  # the same channels for fitting and held-out rows
    scale, offset = channels.uniform(0.3, 1.5, d), channels.normal(0, 0.5, d)
    scale[:3] *= 8
    x = np.random.default_rng(seed).standard_normal((n, d)) * scale + offset
    return x.astype(np.float32)


@pytest.mark.parametrize("mode,rel_mean,rel_worst,cos_min", [
    ("float32", 0, 0, 0.99999), ("float16", 1e-3, 2e-3, 0.99999), ("bfloat16", 6e-3, 1e-2, 0.9999),
    ("int8", 0.01, 0.025, 0.999), ("int4", 0.2, 0.35, 0.95), ("pq", 0.4, 0.7, 0.8)])
def test_each_mode_round_trips_within_its_bound(mode, rel_mean, rel_worst, cos_min):
    x, held = _features(seed=0), _features(n=1000, seed=1)
    stats = TARGET_MODES[mode].fit([x]) if TARGET_MODES[mode].needs_stats else None
    m = fidelity(mode, stats, [held])
    assert m["rel_l2_mean"] <= rel_mean and m["rel_l2_worst"] <= rel_worst and m["cos_min"] >= cos_min, m


def test_pq_keeps_a_byte_per_four_channels_and_its_codebooks_beside_the_parts(tmp_path, tiny_teacher):
    """A codebook mode end to end: extraction fits the codebooks (faiss), keeps them as arrays, records the error;
    a deleted codebook array is one line, not zeros."""
    from store import CorruptDataError

    corpus = build_corpus(str(tmp_path / "c"), n=6)
    s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), storage_dtype="pq",
                                       progress=False))
    cache = open_cache(s.path)
    uid = cache.utterance_ids[0]
    stored = cache.read_stored(uid, 3)
    assert set(stored) == {""} and stored[""].dtype == np.uint8 and stored[""].shape[1] == 32 // 4
    assert cache.stats[3]["codebooks"].shape == (8, 256, 4)
    assert cache.read(uid, 3).shape == (cache.num_frames(uid), 32) and cache.read(uid, 3).dtype == np.float32
    fid = json.loads(CliRunner().invoke(cache_cli, ["info", s.path, "--json"]).output)["fidelity"]["layers"]["3"]
    assert 0 < fid["rel_l2_mean"] < 0.6
    assert verify_cache(s.path) == []
    from store.hdf5 import export_hdf5, import_hdf5

    export_hdf5(s.path, str(tmp_path / "pq.h5"))  # the codebooks travel with the export: the same cache comes back
    back = import_hdf5(str(tmp_path / "pq.h5"), str(tmp_path / "imported"))
    assert back.fingerprint == cache.fingerprint and np.array_equal(back.read(uid, 3), cache.read(uid, 3))
    import shutil

    shutil.rmtree(os.path.join(s.path, "codebooks", "layer_3"))
    assert any("codebooks/layer_3: codebooks missing" in p for p in verify_cache(s.path))
    with pytest.raises(CorruptDataError, match="codebooks/layer_3: codebooks missing"):
        open_cache(s.path).read(uid, 3)
    r = CliRunner().invoke(cache_cli, ["rm", s.path, "--yes"])  # codebooks/ is the cache's own: rm takes pq caches too
    assert r.exit_code == 0 and not os.path.exists(s.path), r.output


def test_rvq_codes_structured_rows_at_a_few_bytes_where_pq_cannot():
    """16 (8) bytes a row over the whole vector: on rows with the structure of a network's layer (a low-rank part, a
    little noise) rvq16 beats pq at 8x its bytes per row of this width; on i.i.d. noise nothing at 16 B could."""
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((12, 128)).astype(np.float32)

    def rows(n, seed):
        r = np.random.default_rng(seed)
        return (r.standard_normal((n, 12)).astype(np.float32) @ basis + 0.1 * r.standard_normal((n, 128)).astype(np.float32))

    x, held = rows(4000, 1), rows(1000, 2)
    found = {}
    for mode in ("rvq16", "rvq8", "pq"):
        stats = TARGET_MODES[mode].fit([x])
        found[mode] = fidelity(mode, stats, [held])["rel_l2_mean"]
        codes = TARGET_MODES[mode].encode(held, stats)[""]
        assert codes.dtype == np.uint8 and codes.shape == (1000, {"rvq16": 16, "rvq8": 8, "pq": 32}[mode])
    assert found["rvq16"] < found["rvq8"] < 0.5 and found["rvq16"] < found["pq"], found


def test_rvq_keeps_its_books_bytes_a_row_whatever_the_width(tmp_path, tiny_teacher):
    """Issue 38's codebook mode: 16 (8) bytes a frame a layer, its codebooks beside the parts, round-tripped by HDF5."""
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    src = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), progress=False))
    from store.convert import convert_cache
    from store.hdf5 import ImportError_, export_hdf5, import_hdf5

    for books in (16, 8):
        cache = convert_cache(src.path, f"rvq{books}")
        uid = cache.utterance_ids[0]
        stored = cache.read_stored(uid, 3)
        assert stored[""].dtype == np.uint8 and stored[""].shape == (cache.num_frames(uid), books)
        assert cache.stats[3]["codebooks"].shape == (books, 256, 32) and verify_cache(cache.path) == []
        exact = open_cache(src.path).read(uid, 3)
        assert np.linalg.norm(cache.read(uid, 3) - exact) / np.linalg.norm(exact) < 0.6
        export_hdf5(cache.path, str(tmp_path / f"{books}.h5"))  # floats, as every export; the import would code them
        with pytest.raises(ImportError_, match="cannot be imported into the same cache: its coding is a beam search"):
            import_hdf5(str(tmp_path / f"{books}.h5"), str(tmp_path / f"imported{books}"))  # to other codes: refused, not near


def test_pq_on_too_little_audio_is_one_line(tmp_path, tiny_teacher):
    from extract.cli import main as extract_cli

    write_wav(str(tmp_path / "c/a.wav"), 1.0)
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", str(tmp_path / "c"), "--cache-dir", str(tmp_path / "k"),
                                         "--layers", "1", "--storage", "pq", "--quiet"])
    assert r.exit_code == 2 and "Traceback" not in r.output and r.stderr.count("\n") == 1, r.output
    assert "--storage pq fits 256 centroids per channel group, but the fitting sample holds 49 frames" in r.stderr


def test_int4_packs_odd_widths():
    x = _features(n=50, d=7)
    mode, stats = TARGET_MODES["int4"], fit_stats([_features(n=500, d=7)])
    stored = mode.encode(x, stats)
    assert stored[""].shape == (50, 4) and stored[""].dtype == np.uint8 and stored["_scale"].shape == (50,)
    assert mode.decode(stored, stats).shape == (50, 7)


def test_int8_extraction_records_its_error_and_reads_floats(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    exact = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                           storage_dtype="float32", progress=False))
    small = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), storage_dtype="int8",
                                           audio="int16", progress=False))
    a, b = open_cache(exact.path), open_cache(small.path)
    assert a.fingerprint != b.fingerprint and b.spec["storage_stats"].startswith("sha256:")
    fid = b.provenance["fidelity"]["layers"]
    assert set(fid) == {"1", "3"} and all(m["rel_l2_mean"] < 0.02 and m["cos_min"] > 0.998 for m in fid.values())
    for uid in a.utterance_ids:
        x, y = a.read(uid, 3), b.read(uid, 3)
        assert y.dtype == np.float32 and np.linalg.norm(y - x) / np.linalg.norm(x) < 0.02
        stored = b.read_stored(uid, 3, 2, 9)
        assert stored[""].dtype == np.int8 and stored["_scale"].shape == (7,)
        np.testing.assert_array_equal(b.decode(3, stored), b.read(uid, 3, 2, 9))
        np.testing.assert_array_equal(b.read_audio(uid), sf.read(f"{corpus}/{uid}.wav", dtype="float32")[0])  # 16-bit: exact
    assert verify_cache(b.path) == []
    info = CliRunner().invoke(cache_cli, ["info", b.path, "--json"])
    shown = json.loads(info.stdout)
    assert shown["fidelity"]["layers"]["3"]["cos_min"] > 0.99 and "int8 targets (36 B" in shown["storage"]  # 32 codes + a float32 scale
    write_wav(f"{corpus}/spk5/new.wav", 1.0, seed=55)  # growth keeps the statistics, so the same cache
    grown = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), storage_dtype="int8",
                                           audio="int16", progress=False))
    assert grown.path == small.path and grown.utterances == 7


def test_convert_derives_a_cache_without_the_teacher(tmp_path, tiny_teacher):
    corpus = build_corpus(str(tmp_path / "c"), n=5)
    src = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), storage_dtype="float32",
                                         progress=False))
    r = CliRunner().invoke(cache_cli, ["convert", src.path, "--storage", "int4", "--audio", "int16", "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    dst = open_cache(out["path"])
    assert dst.spec["derived_from"] == {"fingerprint": src.fingerprint, "transform": "convert@1"}
    assert dst.fingerprint not in (src.fingerprint,) and dst.utterance_ids == open_cache(src.path).utterance_ids
    assert sorted(dst.parts) == sorted(open_cache(src.path).parts) and verify_cache(dst.path) == []
    again = CliRunner().invoke(cache_cli, ["convert", src.path, "--storage", "int4", "--audio", "int16", "--json"])
    assert json.loads(again.stdout.strip().splitlines()[-1])["fingerprint"] == dst.fingerprint  # same source + args: same cache
    assert {p: d for p, d in open_cache(dst.path).part_dirs.items()} == dst.part_dirs  # nothing rewritten
    r = CliRunner().invoke(cache_cli, ["convert", src.path, "--storage", "int9"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1


@pytest.mark.parametrize("storage", ["int8", "pq"])
def test_convert_layers_keeps_and_fits_only_those(tmp_path, tiny_teacher, storage):
    """A --layers all cache converted for a student that trains on 2 of its layers: fit and store only those."""
    if storage == "pq":
        pytest.importorskip("faiss")
    corpus = build_corpus(str(tmp_path / "c"), n=6)
    src = extract_features(ExtractConfig(tiny_teacher, corpus, layers="all", cache_dir=str(tmp_path / "k"), storage_dtype="float32",
                                         progress=False))
    r = CliRunner().invoke(cache_cli, ["convert", src.path, "--storage", storage, "--layers", "3,1", "--json"])
    assert r.exit_code == 0, r.stderr
    dst = open_cache(json.loads(r.stdout.strip().splitlines()[-1])["path"])
    assert dst.layers == [1, 3] and sorted(dst.stats) == [1, 3] and verify_cache(dst.path) == []
    assert not any(os.path.exists(os.path.join(dst.path, "parts", d, "layer_2")) for d in dst.part_dirs.values())
    full = open_cache(json.loads(CliRunner().invoke(cache_cli, ["convert", src.path, "--storage", storage, "--json"])
                                 .stdout.strip().splitlines()[-1])["path"])
    assert full.fingerprint != dst.fingerprint  # other layers, other cache
    if storage == "int8":  # int8's statistics are per layer: the same layer is stored alike
        np.testing.assert_array_equal(dst.read(dst.utterance_ids[0], 3), full.read(dst.utterance_ids[0], 3))
    bad = CliRunner().invoke(cache_cli, ["convert", src.path, "--storage", storage, "--layers", "1,9"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "has layers 0,1,2,3, not 9" in bad.stderr


def test_audio_none_trains_from_the_sources_and_refuses_a_changed_one(tmp_path, tiny_teacher):
    from train.cli import main as train_cli

    corpus = build_corpus(str(tmp_path / "c"), n=5)
    s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"), storage_dtype="int8",
                                       audio="none", progress=False))
    cache = open_cache(s.path)
    assert not any(os.path.exists(os.path.join(s.path, "parts", d, "audio")) for d in cache.part_dirs.values())
    args = ["--cache", s.path, "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--max-crop-samples", "8000",
            "--num-workers", "0", "--valid-fraction", "0", "--quiet"]
    r = CliRunner().invoke(train_cli, args)
    assert r.exit_code == 0, r.stderr
    for f in os.listdir(f"{corpus}/spk0"):
        write_wav(f"{corpus}/spk0/{f}", 0.9, seed=99)
    r = CliRunner().invoke(train_cli, [*args[:3], str(tmp_path / "run2"), *args[4:]])
    assert r.exit_code == 2 and "changed since it was extracted" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_flac_audio_is_bit_exact_to_int16_reads_crops_and_is_verified(tmp_path, tiny_teacher):
    from extract.cli import main as extract_cli

    corpus = build_corpus(str(tmp_path / "c"), n=4)
    r = CliRunner().invoke(extract_cli, ["--teacher", tiny_teacher, "--corpus", corpus, "--layers", "1,3", "--cache-dir",
                                         str(tmp_path / "k"), "--storage", "int8", "--audio", "flac", "--quiet"])
    assert r.exit_code == 0, r.stderr
    flac = open_cache(r.stdout.strip().splitlines()[-1])
    int16 = open_cache(extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(tmp_path / "k"),
                                                      storage_dtype="int8", audio="int16", progress=False)).path)
    for uid in flac.utterance_ids:
        np.testing.assert_array_equal(flac.read_audio(uid), int16.read_audio(uid))
        np.testing.assert_array_equal(flac.read_audio(uid, 1000, 5000), int16.read_audio(uid, 1000, 5000))
    assert verify_cache(flac.path) == []
    part = flac.parts[0]
    victim = os.path.join(flac.path, "parts", flac.part_dirs[part], "audio_flac", "0.flac")
    os.remove(victim)
    assert any("audio file" in p and "missing" in p for p in verify_cache(flac.path))


def test_flac_audio_is_made_durable_once_per_part_not_per_file(tmp_path, tiny_teacher, monkeypatch):
    """--audio flac fsynced every utterance's file and directory (~5 minutes over LibriSpeech); now one syncfs per part
    at commit, before the marker (acknowledged = durable), and an fsync each where there is no syncfs."""
    import os

    from extract import ExtractConfig, extract_features
    from store import fs
    from tests.conftest import build_corpus

    if fs._syncfs() is None:
        pytest.skip("no syncfs(2) on this platform")
    calls = {"syncfs": 0, "fsync": 0}
    real_syncfs, real_fsync = fs._syncfs(), os.fsync

    def syncfs(fd):
        calls["syncfs"] += 1
        return real_syncfs(fd)

    def fsync(fd):
        calls["fsync"] += 1
        return real_fsync(fd)

    monkeypatch.setattr(fs, "_syncfs", lambda: syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    counts = []
    for n in (2, 8):
        calls.update(syncfs=0, fsync=0)
        corpus = build_corpus(str(tmp_path / f"c{n}"), n=n)
        s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1,), cache_dir=str(tmp_path / f"k{n}"), audio="flac",
                                           part_seconds=1000, progress=False))
        assert s.parts_total == 1 and calls["syncfs"] == 1
        counts.append(calls["fsync"])
    assert counts[0] == counts[1]  # four times the utterances, not one fsync more
    monkeypatch.setattr(fs, "_syncfs", lambda: None)  # the fallback: every file fsynced at commit, then its directory
    names = [str(tmp_path / "d" / f"{i}.flac") for i in range(3)]
    for name in names:
        fs.write_bytes(name, b"x", durable=False)
    calls.update(fsync=0)
    fs.make_durable(names, str(tmp_path / "d"))
    assert calls["fsync"] == 4


def test_pq_codes_are_the_nearest_centroids():
    """pq encodes with faiss (30x faster than numpy's einsum): each code is still the nearest centroid of its group,
    checked in float64 (rows whose best two centroids are within rounding of each other left out)."""
    pytest.importorskip("faiss")
    from store.modes import TARGET_MODES

    rng = np.random.default_rng(0)
    mode = TARGET_MODES["pq"]
    x = [rng.standard_normal((400, 32)).astype(np.float32) * rng.uniform(0.5, 2, 32).astype(np.float32) for _ in range(2)]
    stats = mode.fit(x)
    codes = mode.encode(x[0], stats)[""]
    z = ((x[0] - stats["mean"]) / stats["std"]).astype(np.float64).reshape(len(x[0]), -1, mode.SUB)
    d = ((z[:, :, None, :] - stats["codebooks"][None].astype(np.float64)) ** 2).sum(-1)  # [rows, groups, 256]
    best = np.sort(d, -1)
    clear = best[..., 1] - best[..., 0] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(codes[clear], d.argmin(-1)[clear])
