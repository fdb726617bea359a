"""The probes' heads and how they are trained: SUPERB's featurizer (each layer layer-normed, then a learnable
softmax-weighted sum over layers) with one linear layer, for classification or CTC; Adam with the epoch chosen on
dev; bootstrap intervals over test utterances. train.probe.features feeds them a cache's layers and writes the probe dir.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from store.progress import bar
from train.probe.config import TOKENS, ProbeConfig, ProbeError


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


def layer_normed(x: np.ndarray) -> torch.Tensor:
    """SUPERB's featurizer normalisation: each layer's frames layer-normed (no learned scale) before the weighted sum,
    so that upstreams and layers of different scales are weighed and compared fairly."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    return nn.functional.layer_norm(t, t.shape[-1:])


# ---- the two tasks -------------------------------------------------------------------------------------------


def still_improving(epochs_run: int, best_epoch: int, cap: int, patience: int) -> bool:
    """Whether the cap, not the patience, ended a probe: its best epoch is among the last `patience` (a best epoch of 199
    of 200 is no finished probe either)."""
    return epochs_run == cap and epochs_run - best_epoch < patience


def _bootstrap(errors: np.ndarray, totals: np.ndarray, n: int, seed: int) -> list[float]:
    """95% interval of sum(errors)/sum(totals) over test utterances resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(n, len(errors)))
    stats = errors[idx].sum(1) / np.maximum(totals[idx].sum(1), 1)
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def _epoch(model: nn.Module, opt, cfg: ProbeConfig, n: int, loss_of, dev_score, log, seed: int, epoch: int, rng) -> tuple:
    """One pass over the training split in a random order, then the dev score: (dev loss, dev error)."""
    order, total, count = rng.permutation(n), 0.0, 0
    model.train()
    for i in range(0, n, cfg.batch_size):
        loss = loss_of(order[i : i + cfg.batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
        n_batch = len(order[i : i + cfg.batch_size])
        total, count = total + loss.item() * n_batch, count + n_batch
    model.eval()
    with torch.no_grad():
        error, dev_loss = dev_score()
    log({"seed": seed, "epoch": epoch, "loss": total / max(count, 1), "dev_error": error, "dev_loss": dev_loss})
    return dev_loss, error


def _train_loop(model: nn.Module, cfg: ProbeConfig, n: int, loss_of, dev_score, log, seed: int) -> dict:
    """Adam over the training split; after every epoch the dev score (error, loss). cfg.selection decides which ranks the
    epochs: "error" (1 - accuracy, or the error rate; the loss breaks its ties) or "loss" (the error breaks its ties).
    CTC ranks by loss: early in training its greedy decode is almost all blanks and the dev error wanders on that plateau
    (one lucky dip became "best" at epochs 11-14 while the dev loss still fell, docs/benchmarks.md), the loss does not.
    The best epoch's weights are kept: SUPERB selects its checkpoint on dev, and reports test there. Stops when dev has
    not improved for cfg.patience epochs. Leaves `model` at its best epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(seed)
    best, best_state, best_epoch, epoch = (float("inf"), float("inf")), None, 0, 0
    with bar(cfg.epochs, f"probe seed {seed}", "epoch", cfg.progress) as progress:  # minutes at LibriSpeech size
        for epoch in range(1, cfg.epochs + 1):
            dev = _epoch(model, opt, cfg, n, loss_of, dev_score, log, seed, epoch, rng)
            rank = dev if cfg.selection == "loss" else dev[::-1]
            if rank < best:
                best, best_epoch = rank, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            progress.update(1)
            progress.set_postfix(dev_error=f"{dev[1]:.3f}", dev_loss=f"{dev[0]:.3f}", best_epoch=best_epoch)
            if epoch - best_epoch >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    at_cap = still_improving(epoch, best_epoch, cfg.epochs, cfg.patience)
    if at_cap:
        print(f"probe seed {seed}: still improving at the cap (--epochs {cfg.epochs} stopped it {epoch - best_epoch} epoch(s) "
              f"after its best, before --patience {cfg.patience} did): the probe is not done; raise --epochs", file=sys.stderr)
    return {"best_epoch": best_epoch, "epochs_run": epoch, "still_improving_at_cap": at_cap}


def over_seeds(cfg: ProbeConfig, test: list[str], one_seed) -> dict:
    """Run `one_seed(seed)` for cfg.seeds seeds (cfg.seed, cfg.seed + 1, ...), each a fresh head trained and chosen
    alone, and pool them: per test clip, the counts (right answers, or edits) and totals summed over seeds, so the value
    is the seeds' mean and its interval is bootstrapped over clips, the unit that varies. Each seed's own value, chosen
    epoch and layer weights are kept, and the per-clip counts, so two upstreams scored on the same clips can be compared
    paired (train.compare)."""
    runs = [one_seed(seed) for seed in range(cfg.seed, cfg.seed + cfg.seeds)]
    counts, totals = sum(r.pop("counts") for r in runs), sum(r.pop("totals") for r in runs)
    value, ci = _scores(counts, totals, cfg)
    values = [r["value"] for r in runs]
    first = runs[0]
    return {**first, "value": value, "ci95": ci, "seeds": runs, "value_range": [min(values), max(values)],
            "by_split": {k: float(np.mean([r["by_split"][k] for r in runs])) for k in first["by_split"]},
            "layer_weights": np.mean([r["layer_weights"] for r in runs], 0).tolist(),
            "still_improving_at_cap": any(r["still_improving_at_cap"] for r in runs),
            "per_clip": {"ids": list(test), "counts": counts.tolist(), "totals": totals.tolist()}}


def _scores(counts: np.ndarray, totals: np.ndarray, cfg: ProbeConfig) -> tuple[float, list[float]]:
    """sum(counts) / sum(totals) over test utterances (right answers, or edits per reference symbol) and its interval."""
    value = float(counts.sum() / max(totals.sum(), 1))
    return value, _bootstrap(counts, totals, cfg.bootstrap, cfg.seed)


def classify(cfg: ProbeConfig, read, dim: int, n_layers: int, labels: dict[str, str], splits: dict[str, list[str]],
             log) -> dict:
    train, test = splits["train"], splits["test"]
    classes = sorted({labels[u] for u in train})
    if len(classes) < 2:
        raise ProbeError(f"--labels {cfg.labels}: the training split has {len(classes)} class ({classes[0] if classes else '-'}); "
                         "a classifier needs at least two")
    unseen = sorted({labels[u] for u in test + splits["dev"]} - set(classes))
    if unseen:
        raise ProbeError(f"--labels {cfg.labels}: class '{unseen[0]}' ({len(unseen)} such) is in the test or dev split but never "
                         "in training; label more utterances or give the split yourself")
    index = {c: i for i, c in enumerate(classes)}
    # mean over frames of each layer-normed layer, once per utterance: the weighted sum and the mean are both linear
    pooled = {u: layer_normed(read(u)).mean(1) for u in train + splits["dev"] + test}  # [N, D] per utterance
    x = {name: torch.stack([pooled[u] for u in ids]) for name, ids in splits.items()}
    y = {name: torch.tensor([index[labels[u]] for u in ids]) for name, ids in splits.items()}

    def one_seed(seed: int) -> dict:
        torch.manual_seed(seed)
        model = Probe(n_layers, dim, len(classes))

        def wrong(name: str) -> np.ndarray:
            with torch.no_grad():
                return (model(x[name]).argmax(1) != y[name]).numpy().astype(np.float64)

        def loss(name: str, b=slice(None)) -> torch.Tensor:
            return nn.functional.cross_entropy(model(x[name][b]), y[name][b])

        chosen = _train_loop(model, cfg, len(train), lambda b: loss("train", b),
                             lambda: (float(wrong("dev").mean()), loss("dev").item()), log, seed)
        right = 1 - wrong("test")
        return {"seed": seed, "value": float(right.mean()), **chosen, "counts": right, "totals": np.ones(len(test)),
                "by_split": {name: 1 - float(wrong(name).mean()) for name in splits},
                "layer_weights": model.featurizer.weights().tolist()}

    majority = max(sum(labels[u] == c for u in test) for c in classes) / len(test)
    return {"metric": "accuracy", "chance": float(majority), **over_seeds(cfg, test, one_seed), "classes": classes}


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


def held_or_streamed(cfg: ProbeConfig, read, frames, dim: int, n_layers: int, ids: list[str]):
    """(utterance -> its layer-normed features, utterance -> its frame count). Every layer of every utterance read once
    and kept as float16 when that fits cfg.memory_gb (no cache read per epoch: small sets stay as fast as they were);
    else read from the cache per batch, memory flat in corpus size (a SUPERB phone probe on LibriSpeech-100 with
    HuBERT-base's 13 layers would keep ~360 GB)."""
    need = sum(frames(u) for u in ids) * n_layers * dim * 2 if frames else 0
    if need <= cfg.memory_gb * 1e9:
        feats = {u: layer_normed(read(u)).half() for u in ids}
        return feats.__getitem__, lambda u: feats[u].shape[1]
    print(f"probe: the features would take {need / 1e9:.1f} GB in memory (over --memory-gb {cfg.memory_gb:g}): read from the "
          "cache for every batch instead", file=sys.stderr)
    return (lambda u: layer_normed(read(u)).half()), frames


def ctc(cfg: ProbeConfig, read, dim: int, n_layers: int, labels: dict[str, str], splits: dict[str, list[str]],
        log, frames=None) -> dict:
    train = splits["train"]
    vocab = sorted({s for u in train for s in _symbols(labels[u], cfg.tokens)})
    missing = sorted({s for u in splits["test"] + splits["dev"] for s in _symbols(labels[u], cfg.tokens)} - set(vocab))
    if missing:
        raise ProbeError(f"--labels {cfg.labels}: symbol {missing[0]!r} ({len(missing)} such) is in the test or dev split but never "
                         "in training; label more utterances, or give the split yourself")
    index = {s: i + 1 for i, s in enumerate(vocab)}  # 0 is CTC's blank
    get, length = held_or_streamed(cfg, read, frames, dim, n_layers, [u for ids in splits.values() for u in ids])
    too_short = [u for u in train if length(u) < len(_symbols(labels[u], cfg.tokens))]
    if too_short:
        print(f"{len(too_short)} training utterance(s) have fewer frames than symbols (first: {too_short[0]}): CTC cannot align "
              "them, left out of training", file=sys.stderr)
        short = set(too_short)
        train = [u for u in train if u not in short]
    holder: dict[str, nn.Module] = {}

    def batch(ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        got = [get(u) for u in ids]
        x = torch.zeros(len(ids), n_layers, max(g.shape[1] for g in got), dim)
        for i, g in enumerate(got):
            x[i, :, : g.shape[1]] = g
        return x, torch.tensor([g.shape[1] for g in got])

    def loss_of(b, ids: list[str] = train) -> torch.Tensor:
        ids = [ids[i] for i in b]
        x, lengths = batch(ids)
        logp = holder["model"](x).log_softmax(-1).transpose(0, 1)  # [T, B, V]
        targets = [torch.tensor([index[s] for s in _symbols(labels[u], cfg.tokens)]) for u in ids]
        return nn.functional.ctc_loss(logp, torch.cat(targets), lengths, torch.tensor([len(t) for t in targets]), zero_infinity=True)

    def edits(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        errors, totals = [], []
        with torch.no_grad():
            for i in range(0, len(ids), 64):
                x, lengths = batch(ids[i : i + 64])
                for row, u, n in zip(holder["model"](x).argmax(-1), ids[i : i + 64], lengths, strict=True):
                    path = row[: int(n)].tolist()
                    hyp = [vocab[p - 1] for j, p in enumerate(path) if p and (j == 0 or p != path[j - 1])]
                    ref = _symbols(labels[u], cfg.tokens)
                    errors.append(_edits(ref, hyp, cfg.tokens))
                    totals.append(len(ref))
        return np.array(errors, np.float64), np.array(totals, np.float64)

    def error_rate(ids: list[str]) -> float:
        e, t = edits(ids)
        return float(e.sum() / max(t.sum(), 1))

    def dev_score() -> tuple[float, float]:
        dev = splits["dev"]
        loss = sum(loss_of(range(i, min(i + 64, len(dev))), dev).item() * min(64, len(dev) - i) for i in range(0, len(dev), 64))
        return error_rate(dev), loss / len(dev)

    def one_seed(seed: int) -> dict:
        torch.manual_seed(seed)
        holder["model"] = model = Probe(n_layers, dim, len(vocab) + 1)
        chosen = _train_loop(model, cfg, len(train), loss_of, dev_score, log, seed)
        errors, totals = edits(splits["test"])
        value = float(errors.sum() / max(totals.sum(), 1))
        return {"seed": seed, "value": value, **chosen, "counts": errors, "totals": totals,
                "by_split": {"train": error_rate(train), "dev": error_rate(splits["dev"]), "test": value},
                "layer_weights": model.featurizer.weights().tolist()}

    return {"metric": TOKENS[cfg.tokens], **over_seeds(cfg, splits["test"], one_seed), "vocabulary": vocab}
