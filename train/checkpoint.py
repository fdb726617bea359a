"""Checkpoints: one dict (model, optimizer, scaler, RNG, step, config), written atomically, loaded safely."""

from __future__ import annotations

import os

import torch

from store.oneline import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used; one line."""

CKPT = "ckpt.pt"


def save_checkpoint(run_dir: str, state: dict) -> str:
    """Write to a temp file, then rename: a crash mid-save leaves the previous checkpoint intact."""
    path = os.path.join(run_dir, CKPT)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, Ctrl-C: the previous checkpoint stays, and no half-written temp file beside it
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, RuntimeError):  # torch reports a failed write (ENOSPC) as RuntimeError
            raise CheckpointError(f"{path}: cannot write the checkpoint ({str(e).splitlines()[0][:120]}); free some space "
                                  "under --out and resume with --resume") from None
        raise
    return path


#: What a resumed run may change: how it is watched and run, not what is trained (docs/cli.md).
RESUMABLE_CHANGES = ("out", "cache_dir", "teacher", "eval_interval", "eval_max_utterances", "log_interval", "checkpoint_interval",
                     "stop_after", "num_workers", "device", "precision", "progress", "resume", "allow_partial", "allow_pickle",
                     "cache", "eval_cache", "storage")  # storage: a selector of the cache, whose fingerprint is compared


def load_checkpoint(run_dir: str) -> dict | None:
    """The run dir's checkpoint, or None; a damaged one is one line (never a suggestion to unpickle code)."""
    path = os.path.join(run_dir, CKPT)
    if not os.path.exists(path):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # DESIGN invariant 6: no pickled code
    except Exception as e:  # noqa: BLE001 - truncated zip, random bytes, foreign pickles: all "not our checkpoint"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); restore a copy, or remove it to "
                              "start the run over") from None
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step", "config", "identity"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a checkpoint of this distilcache (keys missing); remove it to start the run over")
    kinds = {"model": dict, "optimizer": dict, "config": dict, "identity": dict, "student_config": (dict, type(None)),
             "layers": (list, type(None)), "rng": (dict, type(None))}
    wrong = [k for k, t in kinds.items() if not isinstance(ckpt.get(k), t)]
    if wrong or type(ckpt["step"]) is not int or ckpt["step"] < 0:
        raise CheckpointError(f"{path}: hand-edited or damaged ({', '.join(wrong) or 'step'} is not what train-student writes); "
                              "restore a copy, or remove it to start the run over")
    return ckpt


def restore(path: str, fn, *args) -> None:
    """Load a checkpoint's part into the live objects; a state of the wrong shape or kind is one line, not a traceback."""
    try:
        fn(*args)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:120]}); restore a "
                              "copy, or remove it to start the run over") from None


def resume_differences(saved: dict, now: dict) -> list[str]:
    """What differs between the checkpoint's run and this one, among the things that change what is trained."""
    return [f"{k}: checkpoint has {saved.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
