"""SUPERB-style probes from a cache: light heads trained on frozen cached layers, so an upstream (the teacher, a student,
a student trained on int4 targets) is judged without running it again on every downstream step.

SUPERB's protocol: train, dev and test splits; the epoch is chosen on dev (training stops when dev has not improved for
--patience epochs) and test is reported there, with train/dev/test metrics all in result.json. Both heads start with
SUPERB's featurizer, each layer layer-normed and then a learnable softmax-weighted sum over the cached layers, then
- classify: mean over the utterance's frames + one linear layer (SUPERB's KS/SID/ER heads). The mean and the weighted
  sum are both linear, so each layer's mean is computed once per utterance and training never reads the cache again;
- ctc: one linear layer per frame with CTC over the labels' symbols (characters, phones or words), greedy decoding;
  the error rate (CER/PER/WER) is computed by jiwer, per test utterance, so the 95% interval can be bootstrapped. Every
  layer of every utterance is read once and kept in memory (float16), never re-read per epoch, when that fits
  --memory-gb; a larger set is read from the cache per batch, memory flat.

The split is the user's (train/dev/test id files) or the training's own hash split by recording (train.data.split_ids).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import numpy as np
import torch

from store import open_cache
from train.data import split_ids
from train.probe.config import FEATURES, TASKS, TOKENS, ProbeConfig, ProbeError
from train.probe.heads import classify, ctc
from train.probe.labels import read_ids, read_labels

__all__ = ["FEATURES", "TASKS", "TOKENS", "ProbeConfig", "ProbeError", "probe_features", "upstream_parameters"]

# ---- inputs: labels, split, features --------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def labelled_ids(cfg: ProbeConfig, cache) -> tuple[dict[str, str], dict]:
    """The cache's utterances that have labels; ids missing on either side are said, one line each (listed with --verbose)."""
    labels = read_labels(cfg.labels, cfg.field)
    unknown = sorted(u for u in labels if u not in cache)
    unlabelled = [u for u in cache.utterance_ids if u not in labels]
    for ids, what in ((unknown, f"labelled in {cfg.labels} but not in the cache"), (unlabelled, "in the cache without a label")):
        if ids:
            _say(f"{len(ids)} utterance(s) {what} (first: {ids[0]}): left out"
                 + (":\n  " + "\n  ".join(ids) if cfg.verbose else "; --verbose lists them"))
    kept = {u: labels[u] for u in cache.utterance_ids if u in labels}
    if not kept:
        first = cache.utterance_ids[0] if len(cache) else "-"
        raise ProbeError(f"--labels {cfg.labels}: none of its {len(labels)} ids is an utterance of {cache.path} (e.g. "
                         f"'{next(iter(labels))}' vs the cache's '{first}'); give labels by the cache's ids")
    return kept, {"labels_not_in_cache": len(unknown), "cache_without_labels": len(unlabelled)}


def split(cfg: ProbeConfig, cache, ids: list[str]) -> tuple[list[str], list[str], list[str], dict]:
    """(train, dev, test ids, how the split was made). The user's id files, or a hash split by recording; the dev split
    is the user's too, or a hash split (salted: not the test's buckets) of the training side by recording."""
    train, test, how = _train_test(cfg, cache, ids)
    recording = cache.recording if cache.has_recordings else (lambda u: u)
    if cfg.dev_ids:
        labelled, listed = set(ids), read_ids(cfg.dev_ids, "--dev-ids")
        dev = [u for u in listed if u in labelled]
        if not dev:
            raise ProbeError(f"--dev-ids {cfg.dev_ids}: none of its {len(listed)} ids is a labelled utterance of the cache")
        shared = sorted(set(dev) & set(test))
        if shared:
            raise ProbeError(f"--dev-ids {cfg.dev_ids} shares utterances with the test split (first: {shared[0]})")
        in_dev = set(dev)
        also_train = [u for u in train if u in in_dev]
        if also_train:  # the user listed them for training too: dev wins (it selects the epoch), and that is said
            _say(f"--dev-ids {cfg.dev_ids}: {len(also_train)} of its ids are also in the training split (first: {also_train[0]}); "
                 f"they are used as dev only, leaving {len(train) - len(also_train)} training utterances")
        train = [u for u in train if u not in in_dev]
        how["dev_ids"] = os.path.abspath(cfg.dev_ids)
    else:
        train, dev = split_ids(train, cfg.dev_fraction / (1 - cfg.test_fraction), lambda u: "dev:" + recording(u))
        how["dev_fraction"] = cfg.dev_fraction
    if not train or not dev:
        raise ProbeError(f"the split leaves {len(train)} training and {len(dev)} dev utterances; label more utterances, or give "
                         "--dev-ids")
    how.update(train=len(train), dev=len(dev))
    return train, dev, test, how


def _train_test(cfg: ProbeConfig, cache, ids: list[str]) -> tuple[list[str], list[str], dict]:
    if cfg.train_ids:
        have = set(ids)
        train, test = [], []
        for option, path, into in (("--train-ids", cfg.train_ids, train), ("--test-ids", cfg.test_ids, test)):
            listed = read_ids(path, option)
            into += [u for u in listed if u in have]
            if not into:
                raise ProbeError(f"{option} {path}: none of its {len(listed)} ids is a labelled utterance of the cache; give ids "
                                 "that --labels labels")
            if len(into) < len(listed):
                _say(f"{option} {path}: {len(listed) - len(into)} of its {len(listed)} ids are not labelled utterances of the "
                     "cache: left out")
        overlap = sorted(set(train) & set(test))
        if overlap:
            raise ProbeError(f"--train-ids and --test-ids share {len(overlap)} utterance(s) (first: {overlap[0]}): a test split "
                             "must not overlap training")
        rec = {cache.recording(u) for u in train} & {cache.recording(u) for u in test}
        if rec:
            raise ProbeError(f"--train-ids and --test-ids hold windows of the same recording ({sorted(rec)[0]}): split by recording")
        how = {"kind": "user", "train_ids": os.path.abspath(cfg.train_ids), "test_ids": os.path.abspath(cfg.test_ids)}
    else:
        train, test = split_ids(ids, cfg.test_fraction, cache.recording if cache.has_recordings else None)
        how = {"kind": "hash by recording", "test_fraction": cfg.test_fraction}
    if not train or not test:
        raise ProbeError(f"the split leaves {len(train)} training and {len(test)} test utterances; label more utterances, or "
                         "give --train-ids/--test-ids")
    how.update(train=len(train), test=len(test), test_ids_sha256=hashlib.sha256("\n".join(sorted(test)).encode()).hexdigest()[:16])
    return train, test, how


def check_layers(cfg: ProbeConfig, cache) -> list[int]:
    layers = list(cfg.layers) or list(cache.layers)
    missing = sorted(set(layers) - set(cache.layers))
    if missing:
        raise ProbeError(f"--layers {','.join(map(str, layers))}: the cache has {','.join(map(str, cache.layers))}; extract the "
                         "upstream with --layers all (or those layers) first")
    return layers


def features(cache, uid: str, layers: list[int]) -> np.ndarray:
    """[N, frames, D] float32 of one utterance."""
    return np.stack([np.asarray(cache.read(uid, k), np.float32) for k in layers])


# ---- the run ----------------------------------------------------------------------------------------------------


def upstream_parameters(spec: dict) -> int | None:
    """The upstream's parameter count from the config the cache records (built on the meta device: no memory)."""
    import transformers

    cls = spec["teacher"].get("class", "")
    config_cls = getattr(transformers, cls.replace("Model", "Config"), None)
    model_cls = getattr(transformers, cls, None)
    if config_cls is None or model_cls is None:
        return None
    try:
        with torch.device("meta"):
            model = model_cls(config_cls(**spec["teacher"]["config"]))
    except Exception:  # noqa: BLE001 - a config this transformers cannot build: the count is unknown, not an error
        return None
    # masked_spec_embed is pretraining's mask vector: a student has none, and no upstream's features ever use it
    return sum(p.numel() for name, p in model.named_parameters() if name != "masked_spec_embed")


def log_mel(cache, uid: str) -> np.ndarray:
    """[1, frames, 80] log-mel of the cached audio, 25 ms windows every 20 ms (the teacher's hop): the baseline with no
    upstream at all (transformers.audio_utils, no hand-written filterbank)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rate = cache.spec["preprocessing"]["sample_rate"]
    mel = mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=20, max_frequency=rate / 2, sampling_rate=rate)
    spec = spectrogram(cache.read_audio(uid), window_function(400, "hann"), frame_length=400, hop_length=320, fft_length=400,
                       power=2.0, mel_filters=mel, log_mel="log")
    return spec.T[None].astype(np.float32)


def probe_features(cfg: ProbeConfig) -> dict:
    """Train the probe on the cache's training split, measure it on the test split; writes cfg.out/result.json,
    metrics.jsonl and layers.png, and returns the result."""
    cache = open_cache(cfg.cache, cfg.cache_dir)
    if cfg.features == "logmel":
        if cache.audio_mode == "none":
            raise ProbeError(f"--features logmel: {cache.path} keeps no audio (--audio none); use a cache that keeps it")
        return probe_with(cfg, cache, lambda u: log_mel(cache, u), [0], 80,
                          upstream={"name": "log-mel (80 bins, no upstream)", "digest": None, "parameters": 0},
                          frames=lambda u: 1 + cache.num_samples(u) // 320)  # centred windows every 320 samples
    layers = check_layers(cfg, cache)
    upstream = {"name": cache.provenance.get("teacher"), "digest": cache.spec["teacher"]["digest"],
                "class": cache.spec["teacher"].get("class"), "parameters": upstream_parameters(cache.spec)}
    return probe_with(cfg, cache, lambda u: features(cache, u, layers), layers, cache.spec["dim"], upstream, cache.num_frames)


PROBE_FILES = ("result.json", "metrics.jsonl", "layers.png")


def check_out(out: str) -> None:
    """--out is a probe's own dir: new, empty, or holding only a probe's files. Anything else (a training run's
    metrics.jsonl and checkpoints, a user's files) would be overwritten, so it is refused before any work."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise ProbeError(f"--out {out}: is a file, not a directory; choose a new directory for the probe")
        return
    foreign = sorted(set(os.listdir(out)) - set(PROBE_FILES))
    if foreign:
        raise ProbeError(f"--out {out}: holds {foreign[0]} ({len(foreign)} file(s) a probe does not write: another tool's run?); "
                         "choose a new directory for the probe, e.g. --out " + os.path.join(out, "probe"))
    for name, mine in (("result.json", lambda r: r.get("task") in TASKS), ("metrics.jsonl", lambda r: "epoch" in r)):
        if not _first_record_is(os.path.join(out, name), mine):
            raise ProbeError(f"--out {out}: its {name} is not a probe's (a training run's?); choose a new directory for the probe")


def _first_record_is(path: str, mine) -> bool:
    """Whether a file is absent, empty, or starts with a JSON object that `mine` accepts."""
    try:
        with open(path) as f:
            head = f.readline() if path.endswith(".jsonl") else f.read()
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False
    try:
        record = json.loads(head) if head.strip() else {}
    except ValueError:
        return False
    return isinstance(record, dict) and (not record or bool(mine(record)))


def probe_with(cfg: ProbeConfig, cache, read, layers: list[int], dim: int, upstream: dict | None = None, frames=None) -> dict:
    """probe_features() over any features of the cache's utterances: `read(uid)` -> [len(layers), frames, dim] (a
    baseline with no upstream, log-mel say). Each utterance is read once."""
    check_out(cfg.out)
    labels, missing = labelled_ids(cfg, cache)
    train, dev, test, how = split(cfg, cache, sorted(labels))
    warn_small(cfg, labels, test)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "metrics.jsonl"), "w") as metrics:
        def log(row: dict) -> None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()

        splits = {"train": train, "dev": dev, "test": test}
        if cfg.task == "classify":
            found = classify(cfg, read, dim, len(layers), labels, splits, log)
        else:
            found = ctc(cfg, read, dim, len(layers), labels, splits, log, frames)
    named = "accuracy" if cfg.task == "classify" else "error_rate"  # DESIGN.md: the metric by name, whatever the unit
    result = {"task": cfg.task, **found, named: found["value"], f"{named}_ci95": found["ci95"],
              **{f"{split_name}_{named}": v for split_name, v in found["by_split"].items()}, "layers": layers, "split": how,
              "selected_by": f"dev {cfg.selection}",
              "ids": missing,
              "upstream": upstream or {"name": "none (features of the cache's audio)", "parameters": 0},
              "cache": {"path": cache.path, "fingerprint": cache.fingerprint, "storage": cache.spec["storage_dtype"]},
              "labels": os.path.abspath(cfg.labels), "config": dataclasses.asdict(cfg)}
    with open(os.path.join(cfg.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_layer_weights(result, os.path.join(cfg.out, "layers.png"))
    return result


def warn_small(cfg: ProbeConfig, labels: dict[str, str], test: list[str]) -> None:
    """A score on a few clips means little: said in one line before the probe runs, not found out from its interval."""
    if len(test) < 100:
        _say(f"probe: the test split holds {len(test)} utterances (under 100): its interval is wide, and a difference between "
             "upstreams may not show; label more, or compare paired (compare-runs)")
    if cfg.task == "classify":
        from collections import Counter

        few = sorted((n, c) for c, n in Counter(labels[u] for u in test).items() if n < 5)
        if few:
            _say(f"probe: {len(few)} class(es) have fewer than 5 test examples (first: '{few[0][1]}' with {few[0][0]}): their "
                 "accuracy is noise")


def plot_layer_weights(result: dict, out_png: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([str(k) for k in result["layers"]], result["layer_weights"])
    ax.set(xlabel="layer", ylabel="softmax weight", title=f"{result['task']}: {result['metric']} {result['value']:.3f}")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
