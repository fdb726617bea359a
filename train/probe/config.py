"""What a probe is asked to do (ProbeConfig) and how it refuses (ProbeError): shared by train.probe.features, which runs it, and
train.probe.heads, which trains its heads; it imports neither."""

from __future__ import annotations

from dataclasses import dataclass

from store.oneline import UserError

TOKENS = {"char": "CER", "phone": "PER", "word": "WER"}  # ctc: what a label is made of -> the error rate reported


class ProbeError(UserError):
    """A probe that cannot be run as asked; one line."""


TASKS = ("classify", "ctc")
FEATURES = ("cache", "logmel")


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
    dev_ids: str | None = None  # selects the epoch; default: a hash split of the training side by recording
    test_fraction: float = 0.2  # hash split by recording, when no id files are given
    dev_fraction: float = 0.1  # of the labelled utterances, taken from the training side when no --dev-ids
    epochs: int = 100  # at most: training stops when the dev metric has not improved for `patience` epochs
    patience: int = 20
    batch_size: int = 16
    lr: float | None = None  # None: SUPERB's linear heads, 1e-2 for ctc (PR), 1e-3 for classify
    seed: int = 0
    seeds: int = 1  # heads trained with seeds seed..seed+seeds-1, pooled per test clip (mean, range, one interval)
    select: str | None = None  # which dev score ranks epochs: loss | error; None: loss for ctc (blank plateau), error for classify
    bootstrap: int = 1000
    memory_gb: float = 4.0  # ctc: features kept in memory up to this, else read from the cache per batch (memory flat)
    verbose: bool = False
    progress: bool = True  # a bar per seed over its epochs, with the dev scores (stderr, on a terminal)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ProbeError(f"--task {self.task}: choose {' or '.join(TASKS)}")
        if self.tokens not in TOKENS:
            raise ProbeError(f"--tokens {self.tokens}: choose {', '.join(TOKENS)}")
        if self.features not in FEATURES:
            raise ProbeError(f"--features {self.features}: choose {' or '.join(FEATURES)}")
        for name in ("test_fraction", "dev_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ProbeError(f"--{name.replace('_', '-')} {getattr(self, name)}: a fraction between 0 and 1")
        if self.test_fraction + self.dev_fraction >= 1:
            raise ProbeError(f"--test-fraction {self.test_fraction} and --dev-fraction {self.dev_fraction} leave nothing to train on")
        if bool(self.train_ids) != bool(self.test_ids):
            raise ProbeError("--train-ids and --test-ids go together; give both, or neither for a hash split by recording")
        if self.dev_ids and not self.train_ids:
            raise ProbeError("--dev-ids goes with --train-ids and --test-ids; without them the split is made by hash")
        if self.select not in (None, "loss", "error"):
            raise ProbeError(f"--select {self.select}: choose loss or error")
        if not 0 < self.memory_gb < 1e6:
            raise ProbeError(f"--memory-gb {self.memory_gb}: give a positive number of GB")
        if not 1 <= self.seeds <= 100:
            raise ProbeError(f"--seeds {self.seeds}: give 1 to 100")
        for name in ("epochs", "patience", "batch_size", "bootstrap"):
            if not 1 <= getattr(self, name) <= 10**7:
                raise ProbeError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a positive number")
        if self.lr is not None and not (0 < self.lr < 10):
            raise ProbeError(f"--lr {self.lr}: give a positive learning rate below 10")

    @property
    def selection(self) -> str:
        return self.select or ("loss" if self.task == "ctc" else "error")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.task == "ctc" else 1e-3)
