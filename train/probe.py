"""SUPERB-style probes from a cache: light heads trained on frozen cached layers, so an upstream (the teacher, a student,
a student trained on int4 targets) is judged without running it again on every downstream step.

Both heads start with SUPERB's featurizer, a learnable softmax-weighted sum over the cached layers, then
- classify: mean over the utterance's frames + one linear layer (SUPERB's KS/SID/ER heads). The mean and the weighted
  sum are both linear, so each layer's mean is computed once per utterance and training never reads the cache again;
- ctc: one linear layer per frame with CTC over the labels' symbols (characters, phones or words), greedy decoding;
  the error rate (CER/PER/WER) is computed by jiwer, per test utterance, so the 95% interval can be bootstrapped.

The split is the user's (train/test id files) or the training's own hash split by recording (train.data.split_ids).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from store import open_cache
from store.oneline import UserError
from train.data import split_ids
from train.labels import read_ids, read_labels

TASKS = ("classify", "ctc")
FEATURES = ("cache", "logmel")
TOKENS = {"char": "CER", "phone": "PER", "word": "WER"}  # ctc: what a label is made of -> the error rate reported


class ProbeError(UserError):
    """A probe that cannot be run as asked; one line."""


@dataclass(frozen=True)
class ProbeConfig:
    cache: str
    task: str
    labels: str
    out: str
    cache_dir: str | None = None
    field: str = "text"  # lhotse supervisions: the label's key (text, speaker, or a custom field)
    tokens: str = "char"  # ctc: char | phone (space-separated symbols) | word
    layers: tuple[int, ...] = ()  # () = every cached layer
    features: str = "cache"  # cache: the cached layers | logmel: 80 log-mel bins of the cached audio (the no-upstream baseline)
    train_ids: str | None = None
    test_ids: str | None = None
    test_fraction: float = 0.2  # hash split by recording, when no id files are given
    epochs: int = 40
    batch_size: int = 16
    lr: float = 5e-3
    seed: int = 0
    bootstrap: int = 1000
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ProbeError(f"--task {self.task}: choose {' or '.join(TASKS)}")
        if self.tokens not in TOKENS:
            raise ProbeError(f"--tokens {self.tokens}: choose {', '.join(TOKENS)}")
        if self.features not in FEATURES:
            raise ProbeError(f"--features {self.features}: choose {' or '.join(FEATURES)}")
        if not 0 < self.test_fraction < 1:
            raise ProbeError(f"--test-fraction {self.test_fraction}: a fraction between 0 and 1")
        if bool(self.train_ids) != bool(self.test_ids):
            raise ProbeError("--train-ids and --test-ids go together; give both, or neither for a hash split by recording")
        for name in ("epochs", "batch_size", "bootstrap"):
            if not 1 <= getattr(self, name) <= 10**7:
                raise ProbeError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a positive number")
        if not (0 < self.lr < 10):
            raise ProbeError(f"--lr {self.lr}: give a positive learning rate below 10")


class WeightedSum(nn.Module):
    """SUPERB's featurizer: softmax(w) over layers, summed. x: [B, N, ..., D] -> [B, ..., D]."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights().view(1, -1, *([1] * (x.dim() - 2)))
        return (w * x).sum(1)


class Probe(nn.Module):
    def __init__(self, n_layers: int, dim: int, n_out: int):
        super().__init__()
        self.featurizer = WeightedSum(n_layers)
        self.linear = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.featurizer(x))


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


def split(cfg: ProbeConfig, cache, ids: list[str]) -> tuple[list[str], list[str], dict]:
    """(train ids, test ids, how the split was made). The user's id files, or a hash split by recording."""
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


# ---- the two tasks -------------------------------------------------------------------------------------------


def _bootstrap(errors: np.ndarray, totals: np.ndarray, n: int, seed: int) -> list[float]:
    """95% interval of sum(errors)/sum(totals) over test utterances resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(n, len(errors)))
    stats = errors[idx].sum(1) / np.maximum(totals[idx].sum(1), 1)
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def _train_loop(model: nn.Module, cfg: ProbeConfig, n: int, loss_of, log) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    for epoch in range(cfg.epochs):
        order, total, count = rng.permutation(n), 0.0, 0
        for i in range(0, n, cfg.batch_size):
            loss = loss_of(order[i : i + cfg.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            n_batch = len(order[i : i + cfg.batch_size])
            total, count = total + float(loss.detach()) * n_batch, count + n_batch
        log({"epoch": epoch + 1, "loss": total / max(count, 1)})


def classify(cfg: ProbeConfig, read, frames, dim: int, n_layers: int, labels: dict[str, str], train: list[str], test: list[str],
             log) -> dict:
    classes = sorted({labels[u] for u in train})
    if len(classes) < 2:
        raise ProbeError(f"--labels {cfg.labels}: the training split has {len(classes)} class ({classes[0] if classes else '-'}); "
                         "a classifier needs at least two")
    unseen = sorted({labels[u] for u in test} - set(classes))
    if unseen:
        raise ProbeError(f"--labels {cfg.labels}: class '{unseen[0]}' ({len(unseen)} such) is in the test split but never in "
                         "training; label more utterances or give the split yourself")
    index = {c: i for i, c in enumerate(classes)}
    pooled = {u: torch.from_numpy(read(u).mean(1)) for u in train + test}  # [N, D] per utterance
    x_train = torch.stack([pooled[u] for u in train])
    y_train = torch.tensor([index[labels[u]] for u in train])
    torch.manual_seed(cfg.seed)
    model = Probe(n_layers, dim, len(classes))
    _train_loop(model, cfg, len(train), lambda b: nn.functional.cross_entropy(model(x_train[b]), y_train[b]), log)
    with torch.no_grad():
        predicted = model(torch.stack([pooled[u] for u in test])).argmax(1).numpy()
    wrong = np.array([classes[p] != labels[u] for p, u in zip(predicted, test, strict=True)], np.float64)
    ones = np.ones(len(test))
    majority = max(sum(labels[u] == c for u in test) for c in classes) / len(test)
    lo, hi = _bootstrap(ones - wrong, ones, cfg.bootstrap, cfg.seed)
    return {"metric": "accuracy", "value": float(1 - wrong.mean()), "ci95": [lo, hi], "chance": float(majority),
            "classes": classes, "layer_weights": model.featurizer.weights().tolist()}


def _symbols(label: str, tokens: str) -> list[str]:
    return list(label) if tokens == "char" else label.split()


def _edits(ref: list[str], hyp: list[str], tokens: str) -> int:
    """Substitutions + deletions + insertions of one utterance, by jiwer (characters, or space-separated tokens)."""
    import jiwer

    if not hyp:
        return len(ref)
    if tokens == "char":  # no Strip (jiwer's default): a leading or trailing space the probe emits is an insertion
        chars = jiwer.ReduceToListOfListOfChars()
        out = jiwer.process_characters("".join(ref), "".join(hyp), reference_transform=chars, hypothesis_transform=chars)
    else:
        out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return int(out.substitutions + out.deletions + out.insertions)


def ctc(cfg: ProbeConfig, read, frames_of, dim: int, n_layers: int, labels: dict[str, str], train: list[str], test: list[str],
        log) -> dict:
    vocab = sorted({s for u in train for s in _symbols(labels[u], cfg.tokens)})
    missing = sorted({s for u in test for s in _symbols(labels[u], cfg.tokens)} - set(vocab))
    if missing:
        raise ProbeError(f"--labels {cfg.labels}: symbol {missing[0]!r} ({len(missing)} such) is in the test split but never in "
                         "training; label more utterances, or give the split yourself")
    index = {s: i + 1 for i, s in enumerate(vocab)}  # 0 is CTC's blank
    frames = {u: frames_of(u) for u in train + test}
    too_short = [u for u in train if frames[u] < len(_symbols(labels[u], cfg.tokens))]
    if too_short:
        _say(f"{len(too_short)} training utterance(s) have fewer frames than symbols (first: {too_short[0]}): CTC cannot align "
             "them, left out of training")
        train = [u for u in train if u not in set(too_short)]
    torch.manual_seed(cfg.seed)
    model = Probe(n_layers, dim, len(vocab) + 1)

    def batch(ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(frames[u] for u in ids)
        x = torch.zeros(len(ids), n_layers, longest, dim)
        for i, u in enumerate(ids):
            x[i, :, : frames[u]] = torch.from_numpy(read(u))
        return x, torch.tensor([frames[u] for u in ids])

    def loss_of(b) -> torch.Tensor:
        ids = [train[i] for i in b]
        x, lengths = batch(ids)
        logp = model(x).log_softmax(-1).transpose(0, 1)  # [T, B, V]
        targets = [torch.tensor([index[s] for s in _symbols(labels[u], cfg.tokens)]) for u in ids]
        return nn.functional.ctc_loss(logp, torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]), zero_infinity=True)

    _train_loop(model, cfg, len(train), loss_of, log)
    errors, totals = [], []
    with torch.no_grad():
        for i in range(0, len(test), cfg.batch_size):
            ids = test[i : i + cfg.batch_size]
            x, lengths = batch(ids)
            best = model(x).argmax(-1)
            for row, u, n in zip(best, ids, lengths, strict=True):
                path = row[: int(n)].tolist()
                hyp = [vocab[p - 1] for j, p in enumerate(path) if p and (j == 0 or p != path[j - 1])]
                ref = _symbols(labels[u], cfg.tokens)
                errors.append(_edits(ref, hyp, cfg.tokens))
                totals.append(len(ref))
    errors_, totals_ = np.array(errors, np.float64), np.array(totals, np.float64)
    lo, hi = _bootstrap(errors_, totals_, cfg.bootstrap, cfg.seed)
    return {"metric": TOKENS[cfg.tokens], "value": float(errors_.sum() / totals_.sum()), "ci95": [lo, hi],
            "vocabulary": vocab, "layer_weights": model.featurizer.weights().tolist()}


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
    return sum(p.numel() for p in model.parameters())


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
                          upstream={"name": "log-mel (80 bins, no upstream)", "digest": None, "parameters": 0})
    layers = check_layers(cfg, cache)
    upstream = {"name": cache.provenance.get("teacher"), "digest": cache.spec["teacher"]["digest"],
                "class": cache.spec["teacher"].get("class"), "parameters": upstream_parameters(cache.spec)}
    return probe_with(cfg, cache, lambda u: features(cache, u, layers), layers, cache.spec["dim"], cache.num_frames, upstream)


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


def probe_with(cfg: ProbeConfig, cache, read, layers: list[int], dim: int, frames=None, upstream: dict | None = None) -> dict:
    """probe_features() over any features of the cache's utterances: `read(uid)` -> [len(layers), frames, dim] (a
    baseline with no upstream, log-mel say); `frames(uid)` its frame count (default: read it)."""
    check_out(cfg.out)
    frames = frames or (lambda u: read(u).shape[1])
    labels, missing = labelled_ids(cfg, cache)
    train, test, how = split(cfg, cache, sorted(labels))
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "metrics.jsonl"), "w") as metrics:
        def log(row: dict) -> None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()

        found = (classify if cfg.task == "classify" else ctc)(cfg, read, frames, dim, len(layers), labels, train, test, log)
    named = "accuracy" if cfg.task == "classify" else "error_rate"  # DESIGN.md: the metric by name, whatever the unit
    result = {"task": cfg.task, **found, named: found["value"], f"{named}_ci95": found["ci95"], "layers": layers, "split": how,
              "ids": missing,
              "upstream": upstream or {"name": "none (features of the cache's audio)", "parameters": 0},
              "cache": {"path": cache.path, "fingerprint": cache.fingerprint, "storage": cache.spec["storage_dtype"]},
              "labels": os.path.abspath(cfg.labels), "config": dataclasses.asdict(cfg)}
    with open(os.path.join(cfg.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_layer_weights(result, os.path.join(cfg.out, "layers.png"))
    return result


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
