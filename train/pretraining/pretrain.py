"""A teacher that knows speech, made on this machine: HuBERT's first iteration in miniature.

No pretrained model can be downloaded here, and a random-weight teacher knows nothing, so nothing can be distilled
from it. HuBERT's first iteration needs no teacher: cluster MFCC frames with k-means (100 clusters of 39-dim MFCC +
deltas), then train the transformer to predict the cluster of masked frames from their context. This does the same
at a CPU's scale: a `transformers.HubertModel` (a few layers, ~256 wide) on espeak-ng speech (train.pretraining.speech_corpus),
masked spans as in HuBERT (p = 0.08, 10 frames), the loss on masked and unmasked frames (HuBERT's alpha, 0.5 here:
see PretrainConfig.alpha for why). MFCCs are taken with the teacher's
own framing (400-sample windows every 320 samples), so frame k of the labels is frame k of the model.

The result is saved with `save_pretrained` (weights, config, feature extractor), so it goes through exactly the code
path a user's facebook/hubert-base-ls960 takes, and it is made once: `pretrain.json` (written last) records what made
it, and a second call with the same config returns the saved teacher.

    python -m train.pretraining.pretrain CORPUS_DIR OUT_DIR [--steps N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

RATE, WINDOW, HOP = 16000, 400, 320


@dataclass(frozen=True)
class PretrainConfig:
    corpus: str  # a directory of audio files (train.pretraining.speech_corpus)
    out: str  # the teacher's directory (save_pretrained)
    layers: int = 6  # transformer blocks: layers 2, 4, 6 stand in for hubert-base's 4, 8, 12
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    conv: int = 128  # CNN channels (hubert-base: 512); the CNN is most of a CPU step
    clusters: int = 100  # HuBERT iteration 1: k-means with 100 clusters on MFCC
    steps: int = 1600  # ~20 min on 2 CPU cores (0.75 s a step)
    batch: int = 8  # crops per step
    crop_seconds: float = 3.0
    lr: float = 5e-4  # peak (HuBERT-base's); linear warm-up over the first 8% of steps, then linear decay (HuBERT's schedule)
    alpha: float = 0.5  # HuBERT's L = alpha L_masked + (1 - alpha) L_unmasked. HuBERT uses 1 at scale; here masked-only
                        # measured no learning in 200 steps (held-out masked accuracy 0.113, unmasked 0.104, majority ~0.10)
                        # where 0.5 reached 0.132 and 0.324: the unmasked term teaches the acoustics the context builds on
    mask_prob: float = 0.08  # HuBERT: span starts with p = 0.08, spans of 10 frames (about half the frames masked)
    mask_length: int = 10
    held_out: float = 0.05  # utterances kept out of training, to show the masked prediction generalises
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "ffn", "conv", "clusters", "steps", "batch", "mask_length"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ValueError(f"{name} {getattr(self, name)}: give a positive whole number")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha {self.alpha}: the masked loss's weight is in (0, 1]")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")


def mfcc(wave: np.ndarray) -> np.ndarray:
    """[frames, 39]: 13 MFCCs with deltas and delta-deltas (HuBERT iteration 1's features), 25 ms windows every 20 ms,
    unpadded, so there is one per model frame. transformers.audio_utils gives the log-mel; the DCT-II matrix is written
    out here (one line: scipy is not a dependency)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=40, min_frequency=20, max_frequency=RATE / 2, sampling_rate=RATE)
    logmel = spectrogram(wave, window_function(WINDOW, "hann"), frame_length=WINDOW, hop_length=HOP, fft_length=512, power=2.0,
                         mel_filters=mel, log_mel="log", center=False, mel_floor=1e-6).T  # [frames, 40]
    if len(wave) < WINDOW:
        return np.zeros((0, 39), np.float32)  # no whole window: no frame (the model has none either)
    n = np.arange(40)
    dct = np.sqrt(2 / 40) * np.cos(np.pi / 40 * (n[None, :] + 0.5) * np.arange(13)[:, None])  # DCT-II rows 0..12
    c = logmel @ dct.T
    d1 = np.gradient(c, axis=0) if len(c) > 1 else np.zeros_like(c)
    d2 = np.gradient(d1, axis=0) if len(c) > 1 else np.zeros_like(c)
    return np.concatenate([c, d1, d2], 1).astype(np.float32)


def load_corpus(root: str) -> dict[str, np.ndarray]:
    """id -> float32 mono waveform at 16 kHz (the corpus is small: a few hours fit in memory as float32)."""
    from extract.audio import load_audio

    waves = {}
    for d, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith((".wav", ".flac")):
                path = os.path.join(d, f)
                waves[os.path.relpath(path, root).rsplit(".", 1)[0]] = load_audio(path, RATE)
    if not waves:
        raise SystemExit(f"{root}: no .wav or .flac files to pretrain on")
    return waves


def cluster_labels(feats: dict[str, np.ndarray], fit_ids: list[str], k: int, seed: int) -> dict[str, np.ndarray]:
    """k-means (faiss) on standardised MFCC frames of `fit_ids` (the training side); every frame's cluster id."""
    import faiss

    allf = np.concatenate([feats[u] for u in fit_ids])
    mean, std = allf.mean(0), allf.std(0) + 1e-5
    sample = np.ascontiguousarray(((allf - mean) / std)[np.random.default_rng(seed).permutation(len(allf))[: 256 * k]])
    km = faiss.Kmeans(sample.shape[1], k, niter=25, seed=seed, verbose=False)
    km.train(sample)
    return {u: km.index.search(np.ascontiguousarray((f - mean) / std), 1)[1][:, 0].astype(np.int64) for u, f in feats.items()}


def build_model(cfg: PretrainConfig):
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                          intermediate_size=cfg.ffn, conv_dim=(cfg.conv,) * 7, num_conv_pos_embeddings=64,
                          num_conv_pos_embedding_groups=16, mask_time_prob=cfg.mask_prob, mask_time_length=cfg.mask_length,
                          feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
    torch.manual_seed(cfg.seed)
    return HubertModel(config)


def masks(batch: int, frames: int, cfg: PretrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """HuBERT's span masks: each frame starts a span of mask_length with probability mask_prob."""
    starts = rng.random((batch, frames)) < cfg.mask_prob
    starts[np.arange(batch), rng.integers(0, max(1, frames - cfg.mask_length), batch)] = True  # at least one span each
    mask = np.zeros((batch, frames), bool)
    for offset in range(cfg.mask_length):
        mask[:, offset:] |= starts[:, : frames - offset]
    return torch.from_numpy(mask)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    warm = max(1, int(0.08 * cfg.steps))
    return cfg.lr * (step + 1) / warm if step < warm else cfg.lr * max(0.0, (cfg.steps - step) / (cfg.steps - warm))


def crops(waves: dict, labels: dict, ids: list[str], cfg: PretrainConfig, rng: np.random.Generator):
    """A batch of equal-length crops starting at multiples of the hop, with their frames' labels."""
    samples = int(cfg.crop_seconds * RATE)
    frames = (samples - WINDOW) // HOP + 1
    x, y = np.zeros((cfg.batch, samples), np.float32), np.full((cfg.batch, frames), -100, np.int64)
    for i, uid in enumerate(rng.choice(ids, cfg.batch)):
        w, lab = waves[uid], labels[uid]
        start = int(rng.integers(0, max(1, len(lab) - frames + 1)))
        piece = w[start * HOP : start * HOP + samples]
        x[i, : len(piece)] = piece
        n = min(frames, len(lab) - start)
        y[i, :n] = lab[start : start + n]
    return torch.from_numpy(x), torch.from_numpy(y)


def masked_accuracy(model, head, waves, labels, ids, cfg: PretrainConfig) -> float:
    """Cluster accuracy on masked frames of `ids` (fixed masks): what the pretraining learns, measured where it did not."""
    rng, right, total = np.random.default_rng(12345), 0, 0
    model.eval()
    with torch.no_grad():
        for uid in ids:
            x = torch.from_numpy(waves[uid])[None]
            lab = torch.from_numpy(labels[uid])
            m = masks(1, len(lab), cfg, rng)
            h = model(x, mask_time_indices=m).last_hidden_state[0]
            right += int((head(h[m[0]]).argmax(-1) == lab[m[0]]).sum())
            total += int(m.sum())
    model.train()
    return right / max(total, 1)


STAGING_MARK = ".distilcache-pretrain-staging"  # inside a staging directory this code made: the only kind it removes


def _staging_dirs(out: str) -> list[str]:
    """Staging directories of earlier, interrupted pretrainings into `out`: our prefix and our mark, nothing else."""
    parent, base = os.path.split(os.path.abspath(out))
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [os.path.join(parent, n) for n in names if n.startswith(f".{base}.staging-")
            and os.path.isfile(os.path.join(parent, n, STAGING_MARK))]


def finished(cfg: PretrainConfig) -> dict | None:
    """The record of a teacher already pretrained with this config in cfg.out, or None when cfg.out is free for one
    (absent or empty). Anything else there is refused in one line: cfg.out may be a user's folder, the corpus itself."""
    if not os.path.exists(cfg.out):
        return None
    if not os.path.isdir(cfg.out):
        raise SystemExit(f"{cfg.out}: is a file; give a new or empty directory for the teacher")
    if not os.listdir(cfg.out):
        return None
    record_path = os.path.join(cfg.out, "pretrain.json")
    if not os.path.isfile(record_path):
        raise SystemExit(f"{cfg.out}: is not empty and holds no pretrained teacher (no pretrain.json); nothing was touched: "
                         "give a new or empty directory")
    try:
        with open(record_path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None  # read back from disk: untrusted
    if isinstance(record, dict) and record.get("config") == {**dataclasses.asdict(cfg), "out": None}:
        return record
    raise SystemExit(f"{cfg.out}: holds a teacher pretrained with another config (or an unreadable pretrain.json); remove "
                     "it or choose another directory")


def split_held_out(ids: list[str], cfg: PretrainConfig, rng: np.random.Generator) -> tuple[set[str], list[str]]:
    """(held-out ids, training ids), made before anything is fitted: the clusters and their standardisation see the
    training side only, so the held-out accuracy is held out."""
    if len(ids) < 2:
        raise SystemExit(f"{cfg.corpus}: {len(ids)} usable utterance(s); pretraining needs at least 2 (one is held out to "
                         "measure it): give more audio")
    held = set(rng.permutation(ids)[: max(1, int(cfg.held_out * len(ids)))].tolist())
    return held, [u for u in ids if u not in held]


def long_enough(feats: dict[str, np.ndarray], cfg: PretrainConfig) -> list[str]:
    """The ids with room for a masked span (more than mask_length frames), sorted; the others are left out, saying so."""
    ids = sorted(u for u, f in feats.items() if len(f) > cfg.mask_length)
    if len(ids) < len(feats):
        short = sorted(set(feats) - set(ids))
        print(f"{cfg.corpus}: {len(short)} utterance(s) of {cfg.mask_length} frames or fewer ({cfg.mask_length * HOP + WINDOW} "
              f"samples) left out, too short for a masked span (first: {short[0]})", file=sys.stderr)
    return ids


def check_clusterable(feats: dict[str, np.ndarray], train_ids: list[str], cfg: PretrainConfig) -> None:
    frames = sum(len(feats[u]) for u in train_ids)
    if frames < cfg.clusters:
        raise SystemExit(f"{cfg.corpus}: {frames} training frame(s); k-means with {cfg.clusters} clusters needs at least "
                         f"{cfg.clusters}: give more audio")


def pretrain(cfg: PretrainConfig) -> dict:
    """Train (or find) the teacher; returns its record (pretrain.json)."""
    record = finished(cfg)
    if record is not None:
        return record
    from transformers import Wav2Vec2FeatureExtractor

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    waves = load_corpus(cfg.corpus)
    feats = {u: mfcc(w) for u, w in waves.items()}
    ids = long_enough(feats, cfg)
    rng = np.random.default_rng(cfg.seed)  # the held-out draw, then the crops: one stream, as before the split moved here
    held, train_ids = split_held_out(ids, cfg, rng)
    check_clusterable(feats, train_ids, cfg)
    labels = cluster_labels(feats, train_ids, cfg.clusters, cfg.seed)
    model = build_model(cfg)
    head = nn.Linear(cfg.hidden, cfg.clusters)  # HuBERT's projection + cosine head, as one linear layer
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    accuracy_before = masked_accuracy(model, head, waves, labels, sorted(held), cfg)
    log, smooth = [], 0.0
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, y = crops(waves, labels, train_ids, cfg, rng)
        m = masks(len(x), y.shape[1], cfg, rng) & (y >= 0)
        h = model(x, mask_time_indices=m).last_hidden_state
        loss = cfg.alpha * nn.functional.cross_entropy(head(h[m]), y[m])
        if cfg.alpha < 1:
            u = ~m & (y >= 0)
            loss = loss + (1 - cfg.alpha) * nn.functional.cross_entropy(head(h[u]), y[u])
        opt.zero_grad()
        loss.backward()
        for p in model.feature_extractor.parameters():  # HuBERT's feature_grad_mult: the CNN learns 10x slower
            if p.grad is not None:
                p.grad.mul_(0.1)
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        smooth = loss.item() if step == 0 else 0.95 * smooth + 0.05 * loss.item()  # one batch's loss is mostly its own noise
        if step % 25 == 0 or step == cfg.steps - 1:
            value = smooth
            log.append({"step": step, "loss": round(value, 4), "seconds": round(time.time() - t0, 1)})
            print(f"pretrain step {step}/{cfg.steps} loss {value:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    accuracy = masked_accuracy(model, head, waves, labels, sorted(held), cfg)
    counts = np.bincount(np.concatenate([labels[u] for u in held]), minlength=cfg.clusters)
    record = {"config": {**dataclasses.asdict(cfg), "out": None}, "utterances": len(ids), "held_out": len(held),
              "hours": round(sum(len(w) for w in waves.values()) / RATE / 3600, 3), "seconds": round(time.time() - t0, 1),
              "masked_accuracy_held_out": {"before": round(accuracy_before, 4), "after": round(accuracy, 4),
                                           "majority_cluster": round(float(counts.max() / counts.sum()), 4)},
              "log": log}
    model.eval()
    publish(cfg, lambda tmp: (model.save_pretrained(tmp),  # HuBERT-base's feature extractor: raw waveform in
                              Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=RATE).save_pretrained(tmp)), record)
    return record


def publish(cfg: PretrainConfig, save, record: dict) -> None:
    """Save into a fresh staging directory beside cfg.out (made here, marked), then rename it to cfg.out, which is absent
    or an empty directory (finished() refused anything else). Only marked staging directories are ever removed."""
    for old in _staging_dirs(cfg.out):  # of a pretraining killed while saving
        shutil.rmtree(old, ignore_errors=True)
    parent, base = os.path.split(os.path.abspath(cfg.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.staging-", dir=parent)
    open(os.path.join(tmp, STAGING_MARK), "w").close()
    try:
        save(tmp)
        with open(os.path.join(tmp, "pretrain.json"), "w") as f:
            json.dump(record, f, indent=1)
        os.remove(os.path.join(tmp, STAGING_MARK))
        if os.path.isdir(cfg.out):
            os.rmdir(cfg.out)  # empty (checked before training); a file put there since fails here, loudly, and is kept
        os.replace(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made above
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description="Pretrain a small HuBERT teacher (masked prediction of MFCC clusters)")
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    record = pretrain(PretrainConfig(args.corpus, args.out, steps=args.steps))
    print(json.dumps({k: record[k] for k in ("hours", "seconds", "masked_accuracy_held_out")}))


if __name__ == "__main__":
    main()
