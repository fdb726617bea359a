"""`export-student RUN_DIR --s3prl OUT.ckpt`: the student as the checkpoint s3prl's `distiller_local` upstream loads, so
SUPERB's downstream runner (`run_downstream.py -u distiller_local -k OUT.ckpt`) and ESPnet's S3PRL front-end take it
unchanged. The layout is the one s3prl's distiller pretraining saves: `Config["distiller"]` and the `Distiller` state
dict (extract.s3prl_distiller maps the weights); a design DistillerModel cannot express is refused in one line."""

from __future__ import annotations

import os

import torch

from extract.s3prl_distiller import distiller_config, inexpressible, to_distiller
from store.oneline import UserError
from train.export.student import check_export_target, load_student, staged

MARK = "distilcache_export"  # a key of every checkpoint written here: only those may be overwritten


class S3prlExportError(UserError):
    """A student or a target s3prl's checkpoint cannot take; one line."""


def export_s3prl(run_dir: str, out: str) -> dict:
    """Write OUT (staged, renamed into place); returns what was written."""
    model = load_student(run_dir)
    config = model.encoder.config.to_dict()
    why = inexpressible(config, model.match)
    if why:
        raise S3prlExportError(f"--s3prl: {run_dir}'s student has {why}, which s3prl's DistillerModel cannot express; export "
                               "it with --onnx, or train the distilhubert design for SUPERB")
    check_target(run_dir, out)
    distiller = distiller_config(config, list(model.target_layers), model.target_dim)
    states = {"Config": {"distiller": distiller},
              "Distiller": to_distiller(model.encoder.state_dict(), model.heads.state_dict(), config),
              MARK: {"run_dir": os.path.abspath(run_dir), "target_layers": list(model.target_layers)}}
    staged(out, lambda tmp: torch.save(states, tmp))
    return {"s3prl": out, "layers": config["num_hidden_layers"], "pred_layer_id": distiller["pred_layer_id"]}


def check_target(run_dir: str, out: str) -> None:
    """Never overwrite what is not ours: a directory, anything inside the run's student/, a file this command did not
    write."""
    check_export_target(run_dir, out, "--s3prl", "a checkpoint", "student.ckpt", _ours, S3prlExportError)


def _ours(path: str) -> bool:
    try:
        return MARK in torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any file at all may be there
        return False
