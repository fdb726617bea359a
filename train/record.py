"""What a run dir says it holds: run.json and a resolved config.json, written before the first step.

config.json holds the flags as resolved (the cache's path, not `--cache` with no value; the layers, teacher, student
sizes, device and precision actually used, never 0 or "auto"), so `train-student --config RUN/config.json` reruns the
same thing. run.json says what was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from importlib import metadata

from train.config import TrainConfig, save_config
from train.export.student import write_json


def _versions() -> dict:
    out = {}
    for name in ("distilcache", "torch", "transformers", "zarr"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    """The commit of the checkout this code runs from (with "+changes" when its tracked files differ), or None when it
    is not a git checkout (an installed wheel): the package version then says what ran."""
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(here, ".git")):
        return None
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


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


def resolved(cfg: TrainConfig, src, layers: list[int], design, device: str, precision: str) -> TrainConfig:
    """What was used: the cache's path, the layers, the teacher, the design's sizes (not 0), the device and precision
    (not "auto")."""
    teacher = cfg.teacher or (src.teacher.name if src.teacher is not None else None)
    return dataclasses.replace(cfg, cache=src.cache.path if src.cache is not None else None, layers=tuple(layers), teacher=teacher,
                               device=device, precision=precision, **design.flags())


def run_record(cfg: TrainConfig, src, layers: list[int], design) -> dict:
    """`cfg` resolved (resolved()): the teacher named is the one used, else the one the cache records."""
    cache = src.described
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


HELD_OUT_IDS = "held_out_ids.txt"  # beside run.json: the held-out utterances by id, one a line


def write_run_dir_records(cfg: TrainConfig, src, layers: list[int], design, device: str, precision: str) -> dict:
    used = resolved(cfg, src, layers, design, device, precision)
    record = run_record(used, src, layers, design)
    if src.valid is not None:
        ids = sorted(src.valid.ids)
        write_text(os.path.join(cfg.out, HELD_OUT_IDS), "".join(f"{u}\n" for u in ids))
        record["held_out"]["ids_file"] = HELD_OUT_IDS
    save_config(used, cfg.out)
    write_json(os.path.join(cfg.out, "run.json"), record)
    return record


def record_end(out: str, record: dict, seconds: float, steps: int) -> None:
    """run.json (`record`, as written before the first step) gains the run's wall time and speed at its end (this
    session's, for a resumed run)."""
    record.update(wall_seconds=round(seconds, 1), steps_this_session=steps,
                  steps_per_second=round(steps / seconds, 4) if seconds > 0 else None)
    write_json(os.path.join(out, "run.json"), record)


def write_text(path: str, text: str) -> None:
    from train.export.student import staged

    def save(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    staged(path, save)
