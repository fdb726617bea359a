"""Checkpoints: one dict (model, optimizer, scaler, RNG, step, config), written atomically, loaded safely."""

from __future__ import annotations

import os

import torch

CKPT = "ckpt.pt"


def save_checkpoint(run_dir: str, state: dict) -> str:
    """Write to a temp file, then rename: a crash mid-save leaves the previous checkpoint intact."""
    path = os.path.join(run_dir, CKPT)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, CKPT)
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # DESIGN invariant 6: no pickled code


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
