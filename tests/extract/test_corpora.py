"""Corpora as users have them (issue 12): long recordings cut into windows, Kaldi data dirs, lhotse manifests,
bad entries named, and training that never splits a recording across the held-out line."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from extract import ExtractConfig, ExtractError, extract_features, load_teacher
from extract.segments import window_starts
from store import CorruptDataError, open_cache, verify_cache
from tests.conftest import write_wav
from train.data import split_ids
from train.sources import subset_ids

W, HOP = 5 * 16000, 4 * 16000  # --segment-seconds 5 --segment-overlap 1


def _extract(teacher, corpus, cache_dir, **kw):
    kw.setdefault("layers", (1, 3))
    return extract_features(ExtractConfig(teacher, str(corpus), cache_dir=str(cache_dir), progress=False, **kw))


def test_window_placement_covers_everything_with_equal_windows():
    assert window_starts(100, 100, 40) == [0]
    assert window_starts(101, 100, 40) == [0, 1]
    assert window_starts(250, 100, 100) == [0, 100, 150]  # the last ends at the end, overlapping its neighbour more
    for n in (401, 999, 1000, 12345):
        starts = window_starts(n, 100, 70)
        assert starts[0] == 0 and starts[-1] + 100 == n and all(b - a <= 70 for a, b in zip(starts, starts[1:], strict=False))


def test_a_long_recording_is_cut_into_windows_each_extracted_alone(tmp_path, tiny_teacher):
    corpus = tmp_path / "c"
    write_wav(str(corpus / "talks/long.wav"), 61.3, seed=1)  # over --max-seconds 60: bad input unless segmented
    write_wav(str(corpus / "short.wav"), 2.0, seed=2)
    with pytest.raises(ExtractError, match="longer than --max-seconds 60.*--segment-seconds"):
        _extract(tiny_teacher, corpus, tmp_path / "k")
    s = _extract(tiny_teacher, corpus, tmp_path / "k", segment_seconds=5.0, segment_overlap=1.0)
    cache = open_cache(s.path)
    data, _ = sf.read(corpus / "talks/long.wav", dtype="float32")
    starts = window_starts(len(data), W, HOP)
    assert set(cache.utterance_ids) == {f"talks/long@{a}-{a + W}" for a in starts} | {"short"}  # short files stay whole
    assert cache.spec["preprocessing"]["segments"]["seconds"] == 5.0
    teacher = load_teacher(tiny_teacher, device="cpu")
    for a in (starts[0], starts[5], starts[-1]):
        uid = f"talks/long@{a}-{a + W}"
        np.testing.assert_array_equal(cache.read_audio(uid), data[a : a + W])  # exactly its window of the source
        alone = teacher.forward([data[a : a + W]], [1, 3])[0]  # the teacher on that window alone
        for k in (1, 3):
            assert np.abs(cache.read(uid, k) - alone[k]).max() <= 1e-3 * max(1.0, np.abs(alone[k]).max())
        assert cache.segment(uid) == {"recording": "talks/long", "path": str(corpus / "talks/long.wav"), "start": a,
                                      "stop": a + W, "sample_rate": 16000, "channel": None}
    assert cache.segment("short")["start"] == 0 and cache.segment("short")["stop"] is None
    assert cache.recording("short") == "short"
    whole = _extract(tiny_teacher, corpus, tmp_path / "k", max_seconds=0)  # segmenting is part of the spec
    assert whole.fingerprint != s.fingerprint
    again = _extract(tiny_teacher, corpus, tmp_path / "k", segment_seconds=5.0, segment_overlap=1.0)
    assert not again.teacher_work and again.fingerprint == s.fingerprint


def test_segment_options_are_checked(tmp_path, tiny_teacher):
    write_wav(str(tmp_path / "c/a.wav"), 1.0)
    with pytest.raises(ExtractError, match="--segment-overlap 2: must be"):
        _extract(tiny_teacher, tmp_path / "c", tmp_path / "k", segment_seconds=2.0, segment_overlap=2.0)
    with pytest.raises(ExtractError, match="--segment-seconds 0.01: shorter than the teacher"):
        _extract(tiny_teacher, tmp_path / "c", tmp_path / "k", segment_seconds=0.01)


_RSS = """
import sys
from extract import ExtractConfig, extract_features
extract_features(ExtractConfig(sys.argv[1], sys.argv[2], layers=(1, 3), cache_dir=sys.argv[3], segment_seconds=10,
                               part_seconds=30, progress=False))
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's")
def test_peak_memory_does_not_grow_with_the_recordings_length(tmp_path, tiny_teacher):
    """A 10-minute file read whole would add >= 38 MB of float32 samples (plus its bytes); windows are read alone."""
    peaks = {}
    for minutes in (2, 10):
        corpus = tmp_path / f"c{minutes}"
        subprocess.run([sys.executable, "-c", f"from tests.conftest import write_wav; write_wav({str(corpus / 'long.wav')!r}, "
                        f"{minutes * 60})"], check=True, cwd=os.getcwd())  # written in another process: its peak is not ours
        out = subprocess.run([sys.executable, "-c", _RSS, tiny_teacher, str(corpus), str(tmp_path / f"k{minutes}")],
                             capture_output=True, text=True, check=True)
        peaks[minutes] = int(out.stdout.split()[-1]) / 1024
    assert peaks[10] - peaks[2] < 20, peaks


# ---- Kaldi and lhotse inputs give the cache the equivalent directory gives ----------------------------------------


SEGMENTS = [("rec1-a", "rec1", 0.5, 2.0), ("rec1-b", "rec1", 1.5, 4.25), ("rec2-a", "rec2", 0.0, 3.0)]


def _recordings(tmp_path):
    write_wav(str(tmp_path / "audio/rec1.wav"), 5.0, seed=3)
    write_wav(str(tmp_path / "audio/rec2.wav"), 3.5, seed=4, channels=2)
    return {r: str(tmp_path / f"audio/{r}.wav") for r in ("rec1", "rec2")}


def _kaldi(tmp_path, recs, segments=SEGMENTS):
    d = tmp_path / "kaldi"
    d.mkdir(exist_ok=True)
    (d / "wav.scp").write_text("".join(f"{r} {p}\n" for r, p in recs.items()))
    (d / "segments").write_text("".join(f"{u} {r} {a} {b}\n" for u, r, a, b in segments))
    return d


def _cut_directory(tmp_path, recs):
    """The equivalent directory: each segment written as its own file, named by its id."""
    d = tmp_path / "cut"
    for uid, rid, a, b in SEGMENTS:
        data, sr = sf.read(recs[rid], dtype="int16")
        sf.write(d / f"{uid}.wav" if d.exists() else (d.mkdir() or d / f"{uid}.wav"), data[int(a * sr) : int(b * sr)], sr,
                 subtype="PCM_16")
    return d


def _same_cache(a, b):
    assert a.utterance_ids == b.utterance_ids
    for uid in a.utterance_ids:
        np.testing.assert_array_equal(a.read_audio(uid), b.read_audio(uid))
        for k in a.layers:
            np.testing.assert_array_equal(a.read(uid, k), b.read(uid, k))


def test_kaldi_wav_scp_and_segments_give_the_cache_of_the_equivalent_directory(tmp_path, tiny_teacher):
    recs = _recordings(tmp_path)
    kaldi = open_cache(_extract(tiny_teacher, _kaldi(tmp_path, recs), tmp_path / "k1").path)
    _same_cache(kaldi, open_cache(_extract(tiny_teacher, _cut_directory(tmp_path, recs), tmp_path / "k2").path))
    assert kaldi.segment("rec1-b") == {"recording": "rec1", "path": recs["rec1"], "start": 24000, "stop": 68000,
                                       "sample_rate": 16000, "channel": None}
    assert kaldi.recording("rec2-a") == "rec2"
    assert subset_ids(kaldi, str(tmp_path / "kaldi")) == kaldi.utterance_ids  # a Kaldi dir selects by its ids
    os.remove(tmp_path / "kaldi/segments")  # wav.scp alone: whole recordings, ids are the recording ids
    whole = open_cache(_extract(tiny_teacher, tmp_path / "kaldi", tmp_path / "k3").path)
    _same_cache(whole, open_cache(_extract(tiny_teacher, tmp_path / "audio", tmp_path / "k4").path))


def _lhotse_manifests(tmp_path, recs, channel=None):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings = RecordingSet.from_recordings(Recording.from_file(p, recording_id=r) for r, p in recs.items())
    sups = SupervisionSet.from_segments(SupervisionSegment(u, r, a, b - a, channel=0) for u, r, a, b in SEGMENTS)
    d = tmp_path / "lhotse"
    d.mkdir(exist_ok=True)
    recordings.to_file(d / "recordings.jsonl.gz")
    sups.to_file(d / "supervisions.jsonl.gz")
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=sups).trim_to_supervisions(keep_overlapping=False)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    return tmp_path / "cuts.jsonl.gz", d


def test_a_lhotse_cutset_gives_the_same_cache_as_kaldi_and_honours_channels(tmp_path, tiny_teacher):
    pytest.importorskip("lhotse")
    recs = _recordings(tmp_path)
    cuts, manifests_dir = _lhotse_manifests(tmp_path, recs)
    kaldi = open_cache(_extract(tiny_teacher, _kaldi(tmp_path, recs), tmp_path / "k1").path)
    from_cuts = open_cache(_extract(tiny_teacher, cuts, tmp_path / "k2").path)
    # rec2 is stereo: lhotse's cut is on channel 0 alone, Kaldi mixes the channels; the mono recording agrees exactly
    assert from_cuts.utterance_ids == kaldi.utterance_ids
    for uid in ("rec1-a", "rec1-b"):
        np.testing.assert_array_equal(from_cuts.read_audio(uid), kaldi.read_audio(uid))
        np.testing.assert_array_equal(from_cuts.read(uid, 3), kaldi.read(uid, 3))
    left = sf.read(recs["rec2"], dtype="float32")[0][:, 0]
    np.testing.assert_array_equal(from_cuts.read_audio("rec2-a"), left[: 3 * 16000])
    assert from_cuts.segment("rec2-a")["channel"] == 0 and from_cuts.recording("rec2-a") == "rec2"
    _same_cache(from_cuts, open_cache(_extract(tiny_teacher, manifests_dir, tmp_path / "k3").path))  # recordings + supervisions


# ---- bad entries are named, before any teacher work ---------------------------------------------------------------


def _no_parts(cache_dir):
    return not any(f.endswith(".json") for _, _, fs in os.walk(cache_dir) for f in fs if "commits" in _)


def test_bad_kaldi_entries_are_named_with_their_line_and_skip_records_them(tmp_path, tiny_teacher):
    recs = _recordings(tmp_path)
    bad = SEGMENTS + [("late", "rec1", 4.0, 9.0), ("neg", "rec1", 2.0, 1.0), ("ghost", "nope", 0.0, 1.0), ("rec1-a", "rec2", 0, 1)]
    kaldi = _kaldi(tmp_path, recs, bad)
    with pytest.raises(ExtractError) as e:
        _extract(tiny_teacher, kaldi, tmp_path / "k")
    msg = str(e.value)
    assert "segments line 4 (late): ends at 9.000 s, past the end of" in msg
    assert "segments line 5 (neg): negative or zero duration" in msg
    assert "segments line 6 (ghost): recording 'nope' is not in wav.scp" in msg
    assert "segments line 7 (rec1-a): id 'rec1-a' is also used by" in msg and "line 1 (rec1-a)" in msg
    assert _no_parts(tmp_path / "k")
    s = _extract(tiny_teacher, kaldi, tmp_path / "k", on_error="skip")
    assert s.utterances == 3 and len(s.skipped) == 4
    (kaldi / "wav.scp").write_text(f"rec1 sox {recs['rec1']} -t wav - |\n")
    with pytest.raises(ExtractError, match=r"wav.scp line 1 \(rec1\): is a piped command"):
        _extract(tiny_teacher, kaldi, tmp_path / "k2")


def test_bad_lhotse_entries_are_named_by_cut_id(tmp_path, tiny_teacher):
    lhotse = pytest.importorskip("lhotse")
    recs = _recordings(tmp_path)
    cuts_path, _ = _lhotse_manifests(tmp_path, recs)
    cuts = list(lhotse.load_manifest(cuts_path))
    late = cuts[0].with_id("late")
    late.duration = 9.0
    write_wav(str(tmp_path / "gone/x.wav"), 2.0)
    missing = lhotse.Recording.from_file(tmp_path / "gone/x.wav", recording_id="gone").to_cut().with_id("missing")
    os.remove(tmp_path / "gone/x.wav")
    lhotse.CutSet.from_cuts([*cuts, late, missing, cuts[2]]).to_file(tmp_path / "bad.jsonl.gz")
    with pytest.raises(ExtractError) as e:
        _extract(tiny_teacher, tmp_path / "bad.jsonl.gz", tmp_path / "k")
    msg = str(e.value)
    assert "cut 'late': ends at" in msg and "cut 'missing':" in msg and "no such file" in msg
    assert "cut 'rec2-a': id 'rec2-a' is also used by" in msg
    assert _no_parts(tmp_path / "k")
    (tmp_path / "junk.jsonl.gz").write_bytes(gzip.compress(b'{"not": "a manifest"}\n'))
    with pytest.raises(ExtractError, match="junk.jsonl.gz"):
        _extract(tiny_teacher, tmp_path / "junk.jsonl.gz", tmp_path / "k")


def test_a_moved_segment_with_the_same_id_is_refused_not_kept_stale(tmp_path, tiny_teacher):
    recs = _recordings(tmp_path)
    _extract(tiny_teacher, _kaldi(tmp_path, recs), tmp_path / "k")
    moved = [("rec1-a", "rec1", 0.75, 2.0), *SEGMENTS[1:]]
    with pytest.raises(ExtractError, match=r"id 'rec1-a' is now .*rec1.wav\[12000:32000\], but the cache holds it from .*\[8000:32000\]"):
        _extract(tiny_teacher, _kaldi(tmp_path, recs, moved), tmp_path / "k")


# ---- training on segments ------------------------------------------------------------------------------------------


def test_the_held_out_split_never_separates_a_recordings_segments():
    ids = [f"rec{r:03d}@{a}-{a + 10}" for r in range(200) for a in range(0, 50, 10)]
    train, valid = split_ids(ids, 0.1, lambda u: u.split("@")[0])
    assert valid and train and len(train) + len(valid) == len(ids)
    assert not {u.split("@")[0] for u in train} & {u.split("@")[0] for u in valid}
    assert split_ids(ids, 0.1) != (train, valid)  # by id alone they would straddle: the grouping is what keeps them apart


def test_train_student_on_a_segmented_cache_keeps_recordings_whole_and_reads_windows(tmp_path, tiny_teacher):
    from train.config import TrainConfig
    from train.loop import train
    from train.sources import load_sources

    corpus = tmp_path / "c"
    for i in range(6):
        write_wav(str(corpus / f"rec{i}.wav"), 7.0 + i, seed=10 + i)
    s = _extract(tiny_teacher, corpus, tmp_path / "k", segment_seconds=3.0, audio="none")
    cache = open_cache(s.path)
    cfg = TrainConfig(cache=s.path, out=str(tmp_path / "run"), steps=2, batch_size=2, valid_fraction=0.3, init="random",
                      max_crop_samples=32000)
    src = load_sources(cfg)
    held = {cache.recording(u) for u in src.valid.ids}
    assert held and not held & {cache.recording(u) for u in src.train.ids}
    uid = src.train.ids[0]
    seg = cache.segment(uid)
    data, _ = sf.read(seg["path"], dtype="float32")
    wave, _ = src.train[(0, 0)]
    crop = wave.numpy()
    starts = [i for i in range(seg["start"], seg["stop"] - len(crop) + 1, 320) if np.array_equal(data[i : i + len(crop)], crop)]
    assert starts, "the crop comes from the segment's window of its file, at a frame boundary"
    train(cfg)
    assert os.path.isfile(tmp_path / "run/student/config.json")
    sub = load_sources(TrainConfig(cache=s.path, out=str(tmp_path / "run2"), corpus=str(corpus / "rec1.wav").rsplit("/", 1)[0],
                                   init="random"))
    assert len(sub.train.ids) + len(sub.valid.ids) == len(cache)  # a directory subset takes every window of its files
    write_wav(seg["path"], 7.5, seed=99)  # --audio none: a changed source is refused, not read
    with pytest.raises(CorruptDataError, match="changed since it was extracted"):
        src.train[(0, 0)]


def test_finding_a_cache_by_teacher_never_picks_between_segmented_and_whole_silently(tmp_path, tiny_teacher):
    from store import SpecMismatchError
    from train.config import TrainConfig
    from train.sources import load_sources

    write_wav(str(tmp_path / "c/a.wav"), 7.0)
    _extract(tiny_teacher, tmp_path / "c", tmp_path / "k")
    cfg = TrainConfig(cache="", teacher=tiny_teacher, cache_dir=str(tmp_path / "k"), out=str(tmp_path / "run"), layers=(1, 3))
    assert load_sources(cfg).cache  # one cache: found
    _extract(tiny_teacher, tmp_path / "c", tmp_path / "k", segment_seconds=3.0)
    with pytest.raises(SpecMismatchError, match="segmented differently") as e:
        load_sources(cfg)
    assert "--segment-seconds 3" in str(e.value) and "whole utterances" in str(e.value)


def test_a_supervision_on_an_unknown_recording_is_reported_and_fails_under_on_error_fail(tmp_path, tiny_teacher):
    pytest.importorskip("lhotse")
    from lhotse import SupervisionSegment, SupervisionSet

    recs = _recordings(tmp_path)
    _, d = _lhotse_manifests(tmp_path, recs)
    segs = [SupervisionSegment(u, r, a, b - a, channel=0) for u, r, a, b in SEGMENTS] + [SupervisionSegment("ghost-a", "ghost", 0, 1)]
    SupervisionSet.from_segments(segs).to_file(d / "supervisions.jsonl.gz")
    with pytest.raises(ExtractError, match="supervision 'ghost-a'.*recording 'ghost' is not in recordings"):
        _extract(tiny_teacher, d, tmp_path / "k")
    s = _extract(tiny_teacher, d, tmp_path / "k2", on_error="skip")
    assert any("ghost-a" in x["path"] for x in open_cache(s.path).skipped) and len(open_cache(s.path)) == 3


def test_an_id_shaped_like_a_window_id_is_refused_under_segments(tmp_path, tiny_teacher):
    write_wav(str(tmp_path / "c/a.wav"), 3.0, seed=1)
    write_wav(str(tmp_path / "c/a@0-16000.wav"), 1.0, seed=2)
    with pytest.raises(ExtractError, match="'a@0-16000'.*has the form of a window id"):
        _extract(tiny_teacher, tmp_path / "c", tmp_path / "k", segment_seconds=1.0)


@pytest.mark.parametrize("kind", ["kaldi", "lhotse"])
def test_a_manifests_file_rewritten_into_garbage_loses_its_stale_targets(tmp_path, tiny_teacher, kind):
    """A Kaldi segment or a lhotse cut is named by its manifest entry, not its file: its cached targets are found by id
    when its file turns into garbage, and go (the directory case: tests/test_trust_nothing_on_disk.py)."""
    if kind == "lhotse":
        pytest.importorskip("lhotse")
    recs = _recordings(tmp_path)
    corpus = _kaldi(tmp_path, recs) if kind == "kaldi" else _lhotse_manifests(tmp_path, recs)[0]
    s = _extract(tiny_teacher, corpus, tmp_path / "k", on_error="skip")
    assert {"rec1-a", "rec1-b"} <= set(open_cache(s.path).utterance_ids)
    with open(recs["rec1"], "r+b") as f:
        f.truncate(30)
    _extract(tiny_teacher, corpus, tmp_path / "k", on_error="skip")
    cache = open_cache(s.path)
    assert cache.utterance_ids == ["rec2-a"]
    assert verify_cache(s.path, sources=True) == []
