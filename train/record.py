"""What a run dir says it holds: run.json and a resolved config.json, written before the first step.

config.json holds the flags as resolved (the cache's path, not `--cache` with no value; the layers and teacher actually
used), so `train-student --config RUN/config.json` reruns the same thing. run.json says what was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from importlib import metadata

from train.config import TrainConfig, save_config
from train.export import write_json
from train.sources import describe_cache


def _versions() -> dict:
    out = {}
    for name in ("distilcache", "torch", "transformers", "zarr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _amount(crops) -> dict:
    """Utterances and hours of a dataset of crops (cached or online), and a digest of its ids: runs held out on
    different sets do not compare (compare-runs says so)."""
    if crops is None:
        return {"utterances": 0, "hours": 0.0, "ids_sha256": None}
    digest = hashlib.sha256("\n".join(sorted(crops.ids)).encode()).hexdigest()[:16]
    if hasattr(crops, "utts"):  # online: the corpus's headers
        samples, rate = sum(crops.utts[u].samples_at(crops.rate) for u in crops.ids), crops.rate
    else:
        samples, rate = sum(crops.cache.num_samples(u) for u in crops.ids), crops.cache.spec["preprocessing"]["sample_rate"]
    return {"utterances": len(crops.ids), "hours": round(samples / rate / 3600, 4), "ids_sha256": digest}


def resolved(cfg: TrainConfig, src, layers: list[int]) -> TrainConfig:
    teacher = cfg.teacher or (src.teacher.name if src.teacher is not None else None)
    return dataclasses.replace(cfg, cache=src.cache.path if src.cache is not None else None, layers=tuple(layers), teacher=teacher)


def run_record(cfg: TrainConfig, src, layers: list[int], design) -> dict:
    """`cfg` resolved (resolved()): the teacher named is the one used, else the one the cache records."""
    cache = describe_cache(src.cache) if src.cache is not None else None
    return {
        "cache": cache,  # None: the teacher ran online
        "teacher": {"name": cfg.teacher or (src.cache.provenance.get("teacher") if src.cache is not None else None),
                    "digest": src.cache.spec["teacher"]["digest"] if src.cache is not None else src.teacher.digest},
        "layers": list(layers),
        "design": design.to_dict(),
        "recipe": cfg.recipe,
        "corpus": cfg.corpus,  # the subset trained on (None: the whole cache, which holds one corpus)
        "train": _amount(src.train),
        "held_out": _amount(src.valid),
        "eval_cache": src.valid.cache.fingerprint if src.valid is not None and hasattr(src.valid, "cache") else None,
        "versions": _versions(),
    }


def first_line(record: dict) -> str:
    c = record["cache"]
    where = ("the teacher online" if c is None else
             f"cache {c['fingerprint']} ({c['storage']} targets{', lossy' if c['lossy'] else ''}"
             f"{', derived from ' + c['derived_from'] if c['derived_from'] else ''})")
    return (f"training from {where}: {record['train']['utterances']} utterances ({record['train']['hours']:.3f} h), "
            f"{record['held_out']['utterances']} held out; layers {','.join(map(str, record['layers']))}")


def write_run_dir_records(cfg: TrainConfig, src, layers: list[int], design) -> dict:
    used = resolved(cfg, src, layers)
    record = run_record(used, src, layers, design)
    save_config(used, cfg.out)
    write_json(os.path.join(cfg.out, "run.json"), record)
    return record
