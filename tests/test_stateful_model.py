"""A randomized model test (issue 19): hypothesis drives the real commands on a tiny teacher and small audio, and after
every step checks what must always hold, whatever happened before.

Rules: a few changes to the corpus (add, rewrite in place keeping size and mtime as `cp -p` does, truncate into garbage,
delete; long files become --segment-seconds windows), then an extraction of it, or one killed with SIGKILL at a random
moment and resumed, and of a second corpus into the same cache: a Kaldi data dir whose segments cut the same files;
export to HDF5 and import; convert to int8; train a few `--follow` steps on the first corpus. Invariants after each
extraction: every current file is either cached, window by window, in each corpus, with the audio the file holds now
and targets equal to the teacher run alone on that audio (float16 storage), or listed as skipped; no id twice; verify
clean; `info` counts each corpus; training without --corpus is refused in one line; the held-out split is a function of
the recording, disjoint from training and unchanged by growth; an int8 copy records exactly the error its rows have.

CI runs a few examples with a fixed seed (`make test`, well under 2 minutes); `make stress` runs many more
(DISTILCACHE_STRESS_EXAMPLES, DISTILCACHE_STRESS_STEPS).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from extract import ExtractConfig, extract_features, load_teacher
from extract.segments import parent, window_starts
from store import SpecMismatchError, describe, open_cache, verify_cache
from store.convert import convert_cache
from store.fidelity import error_summary, error_sums, merge_error_sums
from store.hdf5 import export_hdf5, import_hdf5
from store.oneline import UserError
from tests.conftest import build_tiny_teacher
from train.config import TrainConfig
from train.data import split_ids
from train.loop import train
from train.sources import load_sources

EXAMPLES = int(os.environ.get("DISTILCACHE_STRESS_EXAMPLES", "3"))
STEPS = int(os.environ.get("DISTILCACHE_STRESS_STEPS", "5"))
RATE, SEGMENT = 16000, 1.0  # windows of one second: files longer than that are cut
KALDI_START, KALDI_END = 0.1, 1.6  # the second corpus: one Kaldi segment of each file, cut into windows when long
LAYERS = (1, 3)
_TEACHER: dict = {}
RAN: Counter = Counter()  # rule -> times run, printed at the end (the closing note reports it)


def _teacher_dir() -> str:
    if "dir" not in _TEACHER:
        _TEACHER["dir"] = build_tiny_teacher(tempfile.mkdtemp(prefix="stateful-teacher-"))
        _TEACHER["model"] = load_teacher(_TEACHER["dir"], device="cpu")
    return _TEACHER["dir"]


def _sound(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * (120 + seed % 200) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


class CacheModel(RuleBasedStateMachine):
    """The model: which files the corpus holds now and which are garbage; the cache must agree after each extraction."""

    @initialize()
    def start(self):
        RAN["examples"] += 1
        self.root = tempfile.mkdtemp(prefix="stateful-")
        self.corpus, self.caches = os.path.join(self.root, "corpus"), os.path.join(self.root, "caches")
        self.kaldi = os.path.join(self.root, "kaldi")  # the second corpus: the same files through Kaldi segments
        os.makedirs(self.corpus)
        os.makedirs(self.kaldi)
        self.files: dict[str, bool] = {}  # path -> holds valid audio
        self.seconds: dict[str, float] = {}  # path -> length when written (a truncated file's header no longer says)
        self.counter = 0
        self.extracted = False
        self.split: dict[str, bool] = {}  # recording -> held out, as first seen
        self.follow_split: dict[str, bool] = {}  # the same, as training under --follow sees it
        self.refusals: list[str] = []

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _config(self, corpus: str | None = None) -> ExtractConfig:
        return ExtractConfig(_teacher_dir(), corpus or self.corpus, layers=LAYERS, cache_dir=self.caches, part_seconds=1.5,
                             segment_seconds=SEGMENT, on_error="skip", progress=False)

    def _kaldi_id(self, path: str) -> str:
        return "k-" + os.path.splitext(os.path.basename(path))[0]

    def _write_kaldi(self) -> None:
        """What a user regenerating a Kaldi data dir gets: one segment per file now in the corpus (deleted ones gone)."""
        with open(os.path.join(self.kaldi, "wav.scp"), "w") as scp, open(os.path.join(self.kaldi, "segments"), "w") as seg:
            for path in sorted(self.files):
                rec = "r-" + self._kaldi_id(path)[2:]
                scp.write(f"{rec} {path}\n")
                seg.write(f"{self._kaldi_id(path)} {rec} {KALDI_START:.2f} {min(self.seconds[path], KALDI_END):.2f}\n")

    # ---- what a user does to the corpus, then an extraction (killed or not): every step checks the cache --------
    @rule(changes=st.lists(st.tuples(st.sampled_from(["add", "add", "rewrite", "truncate", "delete"]), st.integers(0, 10_000)),
                           min_size=1, max_size=4),
          kill_after=st.none() | st.floats(0.2, 4.0))
    def change_the_corpus_then_extract(self, changes, kill_after):
        for what, n in changes:
            getattr(self, f"_{what}")(n)
            RAN[what] += 1
        if not self.files:
            return
        if kill_after is None:
            extract_features(self._config())
            RAN["extract"] += 1
        else:
            self._killed(kill_after)
            extract_features(self._config())  # resumes: completes whatever the killed run left
            RAN["extract_killed_then_resumed"] += 1
        self._write_kaldi()
        extract_features(self._config(self.kaldi))
        RAN["extract_kaldi"] += 1
        self.extracted = True
        self._check()

    def _add(self, n: int) -> None:
        self.counter += 1
        path = os.path.join(self.corpus, f"spk{n % 2}", f"utt{self.counter:03d}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        seconds = [0.3, 0.8, 1.0, 1.7, 2.6][n % 5]
        sf.write(path, _sound(self.counter, seconds), RATE, subtype="PCM_16")
        self.files[path], self.seconds[path] = True, seconds

    def _rewrite(self, n: int) -> None:
        """Other audio of the same length, size and mtime kept, as `cp -p` and `rsync -a` leave a file."""
        valid = sorted(p for p, ok in self.files.items() if ok)
        if not valid:
            return
        path = valid[n % len(valid)]
        before = os.stat(path)
        data, _ = sf.read(path, dtype="float32")
        sf.write(path, _sound(n + 7919, len(data) / RATE + 0.01)[: len(data)], RATE, subtype="PCM_16")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(path).st_size == before.st_size

    def _truncate(self, n: int) -> None:
        if self.files:
            path = sorted(self.files)[n % len(self.files)]
            with open(path, "r+b") as f:
                f.truncate(30)  # a header cut short: not decodable
            self.files[path] = False

    def _delete(self, n: int) -> None:
        if self.files:
            path = sorted(self.files)[n % len(self.files)]
            os.remove(path)
            del self.files[path], self.seconds[path]

    def _killed(self, delay: float) -> None:
        cfg = self._config()
        cli = os.path.join(os.path.dirname(sys.executable), "extract-features")
        proc = subprocess.Popen([cli, "--teacher", cfg.teacher, "--corpus", cfg.corpus, "--layers", "1,3", "--cache-dir", cfg.cache_dir,
                                 "--part-seconds", "1.5", "--segment-seconds", str(SEGMENT), "--on-error", "skip", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert b"Traceback" not in err, err.decode()[-2000:]

    @precondition(lambda self: self.extracted)
    @rule(n=st.integers(0, 10_000), how=st.sampled_from(["shard", "metadata", "touch"]))
    def damage_a_part_or_touch_files_then_extract(self, n, how):
        """A removed shard or edited metadata is found by the next run's structure check (stamped in checked.json) and
        its part redone; files touched (new stat, same bytes) are hashed again and nothing is redone."""
        cache = open_cache(self._path())
        if not cache.parts or not self.files:  # an empty corpus is refused in one line (the change rule's case)
            return
        RAN[f"damaged_{how}"] += 1
        part = cache.parts[n % len(cache.parts)]
        base = os.path.join(cache.path, "parts", cache.part_dirs[part])
        if how == "shard":
            shards = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(base, "layer_1", "c")) for f in fs)
            os.remove(shards[n % len(shards)])
        elif how == "metadata":
            meta_file = os.path.join(base, "layer_3", "zarr.json")
            meta = json.load(open(meta_file))
            meta["data_type"] = "float32" if meta["data_type"] != "float32" else "float16"
            with open(meta_file, "w") as f:  # in place, as an editor that does not rename would
                json.dump(meta, f)
        else:
            for path in self.files:
                os.utime(path)
        before = {p: cache.part_dirs[p] for p in cache.parts}
        extract_features(self._config())
        extract_features(self._config(self.kaldi))
        after = open_cache(self._path())
        redone = {p for p, d in before.items() if after.part_dirs.get(p) != d}
        assert redone == (set() if how == "touch" else {part}), (how, redone)
        self._check()

    @precondition(lambda self: self.extracted)
    @rule()
    def export_and_import(self):
        RAN["export_and_import"] += 1
        cache = open_cache(self._path())
        h5 = os.path.join(self.root, "x.h5")
        export_hdf5(cache.path, h5)
        other = import_hdf5(h5, os.path.join(self.root, "imported"))
        assert sorted(other.utterance_ids) == sorted(cache.utterance_ids) and verify_cache(other.path) == []
        for uid in cache.utterance_ids[:4]:
            np.testing.assert_array_equal(other.read(uid, 3), cache.read(uid, 3))
            assert other.segment(uid) == cache.segment(uid)  # recordings and windows survive the round trip
        shutil.rmtree(os.path.join(self.root, "imported"))
        os.remove(h5)

    @precondition(lambda self: self.extracted)
    @rule()
    def convert_to_int8(self):
        """The int8 copy holds every utterance, verifies clean, and records the error its rows really have."""
        RAN["convert_int8"] += 1
        src = open_cache(self._path())
        out = os.path.join(self.root, "int8")
        if not len(src):  # every file garbage: nothing to fit statistics on, refused in one line
            with pytest.raises(UserError, match="no utterance of the corpus gives finite targets") as e:
                convert_cache(src.path, "int8", cache_dir=out)
            assert "\n" not in str(e.value)
            RAN["convert_refused_empty"] += 1
            return
        dst = convert_cache(src.path, "int8", cache_dir=out)
        assert sorted(dst.utterance_ids) == sorted(src.utterance_ids) and verify_cache(dst.path) == []
        assert dst.corpora().keys() == src.corpora().keys()
        recorded = describe(dst)["stored_error"]
        assert recorded["parts"] == len(dst.parts)
        for k in LAYERS:
            sums = None
            for uid in dst.utterance_ids:
                sums = merge_error_sums(sums, error_sums(src.read(uid, k), dst.read(uid, k)))
            np.testing.assert_allclose(recorded["layers"][str(k)]["rel_l2_mean"], error_summary(sums)["rel_l2_mean"], rtol=1e-3)
        shutil.rmtree(out)

    @precondition(lambda self: self.extracted)
    @rule()
    def train_following_the_first_corpus(self):
        """Two corpora in one cache: without --corpus training is refused in one line; with it, a few --follow steps run,
        and the held-out recordings stay out of training and keep their side as the cache grows."""
        RAN["train_follow"] += 1
        path = self._path()
        out = os.path.join(self.root, "run")
        common = dict(cache=path, out=out, steps=2, batch_size=2, max_crop_samples=8000, num_workers=0, init="random",
                      valid_fraction=0.3, eval_interval=1000, log_interval=1, checkpoint_interval=1000, progress=False,
                      follow=True, seed=0)
        if len(open_cache(path).corpora()) > 1:
            with pytest.raises(SpecMismatchError, match="choose the one to train on with --corpus"):
                load_sources(TrainConfig(**common))
        cfg = TrainConfig(**common, corpus=self.corpus)
        if not open_cache(path).corpora().get(os.path.realpath(self.corpus), {}).get("utterances"):
            with pytest.raises(SpecMismatchError, match="none of its .* utterances is in"):  # its files are all garbage now
                load_sources(cfg)
            RAN["train_refused_empty"] += 1
            return
        src = load_sources(cfg)
        trained, held = set(src.train.ids), set(src.valid.ids) if src.valid is not None else set()
        assert not trained & held and not any(u.startswith("k-") for u in trained | held)
        cache = src.cache
        for uid in trained | held:
            side = uid in held
            assert self.follow_split.setdefault(cache.recording(uid), side) == side, f"{uid} changed sides under --follow"
        if trained:
            result = train(cfg)
            assert result["step"] == 2 and os.path.isdir(os.path.join(out, "student"))
        shutil.rmtree(out, ignore_errors=True)

    # ---- what must always hold ----------------------------------------------------------------------------------
    def _path(self) -> str:
        (name,) = [n for n in os.listdir(self.caches) if not n.startswith(".")]
        return os.path.join(self.caches, name)

    def _check_windows(self, cache, path: str, audio: np.ndarray, uids: list[str], expect: int) -> None:
        """One file's cached windows in one corpus: as many as its length makes, each the audio the file holds now, with
        targets equal to the teacher run alone on that audio."""
        assert len(uids) == expect, f"{path}: {len(uids)} cached windows, expected {expect}"
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        for uid in uids:
            record = cache.source(uid)
            assert record["sha256"] == digest, f"{uid}: cached from an older version of {path}"
            start = record.get("start", 0)
            stop = record.get("stop") or len(audio)
            np.testing.assert_array_equal(cache.read_audio(uid), audio[start:stop])
            alone = _TEACHER["model"].forward([audio[start:stop]], list(LAYERS))[0]
            for k in LAYERS:
                np.testing.assert_allclose(cache.read(uid, k), alone[k], rtol=2e-3, atol=2e-3)  # float16 storage

    def _check(self) -> None:
        cache = open_cache(self._path())
        assert not cache.duplicates and not cache.damaged and cache.pending()["parts"] == 0
        assert verify_cache(cache.path) == []
        corpora = cache.corpora()
        width = int(SEGMENT * RATE)
        for corpus in (self.corpus, self.kaldi):
            name = os.path.realpath(corpus)
            by_path: dict[str, list[str]] = {}
            for uid in cache.utterance_ids:
                if cache.corpus_of(uid) == name:
                    by_path.setdefault(cache.source(uid)["path"], []).append(uid)
            assert corpora.get(name, {}).get("utterances", 0) == sum(map(len, by_path.values())), f"info miscounts {name}"
            for path, valid in sorted(self.files.items()):
                kaldi = corpus == self.kaldi
                if not valid:
                    named = self._kaldi_id(path) if kaldi else path
                    assert path not in by_path and any(named in s.get("path", "") for s in cache.skipped), \
                        f"{named}: garbage, but not listed as skipped"
                    continue
                audio, _ = sf.read(path, dtype="float32")
                if kaldi:  # the segment, then cut into windows like any long utterance
                    audio = audio[: int(round(min(self.seconds[path], KALDI_END) * RATE))]
                    n = len(audio) - int(round(KALDI_START * RATE))
                else:
                    n = len(audio)
                self._check_windows(cache, path, audio, by_path.get(path, []), 1 if n <= width else len(window_starts(n, width, width)))
        ids = cache.utterance_ids
        recording = cache.recording if cache.has_recordings else (lambda u: parent(u))
        train, held = split_ids(ids, 0.3, recording, fallback=False)
        assert not set(train) & set(held)
        for uid in ids:
            rec = recording(uid)
            side = uid in held
            assert self.split.setdefault(rec, side) == side, f"{rec} changed sides of the held-out split as the cache grew"


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and fork semantics of the subprocess rule")
def test_the_cache_agrees_with_a_model_of_the_corpus():
    CacheModel.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
                                            suppress_health_check=list(HealthCheck), database=None)
    RAN.clear()
    CacheModel.TestCase().runTest()
    print(f"stateful model: {dict(RAN)}")
    assert RAN["extract"] + RAN["extract_killed_then_resumed"] > 0, "no extraction ran: the model checked nothing"
