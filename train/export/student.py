"""Run-dir outputs: the student for `HubertModel.from_pretrained`, its heads apart, and the loss plot."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable

from safetensors.torch import save_file

from store import fs
from train.data import STUDENT_INPUT_NORMALIZED
from train.model import Student


def export_student(model: Student, out_dir: str, layers: list[int], sample_rate: int) -> str:
    """student/ (config.json, model.safetensors, preprocessor_config.json) and heads.safetensors beside it.

    The preprocessor config says what the student was trained on: the raw waveform (train.data feeds
    crops as cached, STUDENT_INPUT_NORMALIZED = False), whatever the teacher's own config asks for.
    Every output is staged and renamed into place: a full disk mid-export leaves no half-written student that
    loads, no temporary file, and the checkpoint to resume from."""
    from transformers import Wav2Vec2FeatureExtractor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' "Writing model shards" bar is not this command's line

    def student(tmp: str) -> None:
        model.encoder.save_pretrained(tmp)
        Wav2Vec2FeatureExtractor(sampling_rate=sample_rate, do_normalize=STUDENT_INPUT_NORMALIZED,
                                 return_attention_mask=True).save_pretrained(tmp)

    heads = {k: v.detach().cpu().contiguous() for k, v in model.heads.state_dict().items()}
    staged(os.path.join(out_dir, "heads.safetensors"), lambda tmp: save_file(heads, tmp))
    objective = "layer-to-layer" if model.match else "heads"
    write_json(os.path.join(out_dir, "heads.json"), {"target_layers": layers, "dim": model.encoder.config.hidden_size,
                                                     "target_dim": model.target_dim, "objective": objective,
                                                     "match": [list(m) for m in model.match]}, indent=None)
    return staged(os.path.join(out_dir, "student"), student)


def load_student(run_dir: str) -> Student:
    """The exported student with its heads, built by the one builder (train.model.build_student) from what the run dir
    holds: student/ (config and weights) and heads.json/heads.safetensors. Read back from disk, so checked: a run dir
    that is not a distilcache export, or whose parts disagree, is one line."""
    from safetensors.torch import load_file
    from transformers import HubertModel
    from transformers.utils import logging as hf_logging

    from train.checkpoint import CheckpointError

    hf_logging.disable_progress_bar()  # its "Loading weights" bar: not the caller's line
    from train.design import Design
    from train.model import build_student

    student_dir = os.path.join(run_dir, "student")
    try:
        with open(os.path.join(run_dir, "heads.json")) as f:
            meta = json.load(f)
        encoder = HubertModel.from_pretrained(student_dir)
        heads = load_file(os.path.join(run_dir, "heads.safetensors"))
        layers, match = list(meta["target_layers"]), tuple(tuple(int(x) for x in m) for m in meta.get("match") or ())
        target_dim = int(meta.get("target_dim") or next(v.shape[0] for k, v in heads.items() if k.endswith("weight")))
        design = Design("exported", encoder.config.num_hidden_layers, encoder.config.hidden_size,
                        encoder.config.num_attention_heads, encoder.config.intermediate_size, match)
        model = build_student(design, {"hidden_size": target_dim}, len(layers), saved_config=encoder.config.to_dict())
        model.encoder.load_state_dict(encoder.state_dict())
        model.heads.load_state_dict(heads)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, StopIteration) as e:
        raise CheckpointError(f"{run_dir}: not a loadable distilcache export ({type(e).__name__}: {str(e).splitlines()[0][:100]}); "
                              "give the run dir of a finished train-student run") from None
    model.target_layers = layers
    return model.eval()


WRITE_FAILURES = ("no space left", "storagefull", "code: 28", "failed writing", "disk quota")


def staged(path: str, write: Callable[[str], None]) -> str:
    """write(tmp) then rename tmp to path (a file or a directory, replacing the old one); on any failure the temporary
    output goes and the error is one line naming the path (OSError, which the CLIs print as such)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        if os.path.isdir(tmp) and os.path.isdir(path):  # a directory cannot replace a non-empty one in one rename
            old = f"{path}.old-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            fs.remove_quietly(tmp)
        if isinstance(e, OSError):  # named by the output the user asked for, not its temporary name
            raise OSError(e.errno, e.strerror or str(e), path) from None
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, Exception) and any(w in str(e).lower() for w in WRITE_FAILURES):  # safetensors', torch's words for it
            raise OSError(errno.EIO, f"cannot write it ({str(e).splitlines()[0][:120]})", path) from None
        raise
    return path


def write_json(path: str, data, indent: int | None = 1) -> str:
    """A run-dir JSON file (eval.json, run.json, heads.json), staged like every other output."""
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)

    return staged(path, dump)


def plot_losses(metrics_file: str, out_png: str, title: str | None = None) -> str | None:
    """loss.png from metrics.jsonl: the training loss and per-layer L1, and the held-out loss at each evaluation; None
    when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(metrics_file)
    held = [r["eval"] for r in rows if isinstance(r.get("eval"), dict) and isinstance(r["eval"].get("loss"), (int, float))
            and isinstance(r["eval"].get("step"), int)]
    rows = [r for r in rows if isinstance(r.get("loss"), (int, float)) and isinstance(r.get("step"), int)]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], label="loss", lw=2)
    for key in sorted(k for k in rows[0] if k.startswith("l1_layer")):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key.replace("_", " "), lw=1)
    if held:  # the held-out loss beside the training loss: the one a reader judges over-fitting by
        ax.plot([h["step"] for h in held], [h["loss"] for h in held], "o--", color="black", label="held-out loss", ms=5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if title:  # which run and which targets: a loss.png copied out of its run dir still says
        ax.set_title(title, fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    staged(out_png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return out_png


def _rows(metrics_file: str) -> list[dict]:
    """metrics.jsonl's rows; a line cut short (a crash or a full disk mid-write, then --resume) is passed over."""
    if not os.path.exists(metrics_file):
        return []
    rows = []
    with open(metrics_file) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def check_export_target(run_dir: str, out: str, option: str, what: str, example: str, ours: Callable[[str], bool], error) -> None:
    """Never overwrite what is not ours: refuse (`error`, one line) a directory, anything inside the run's student/, and an
    existing file `ours` does not recognise as `what` this command wrote."""
    target = os.path.realpath(out)
    student = os.path.realpath(os.path.join(run_dir, "student"))
    if os.path.isdir(target):
        raise error(f"{option} {out}: is a directory; give a file name, e.g. {os.path.join(out, example)}")
    if target == student or target.startswith(student + os.sep):
        raise error(f"{option} {out}: is inside the run's student/ (the exported student); give a path outside it")
    if os.path.exists(target) and not ours(target):
        raise error(f"{option} {out}: exists and is not {what} written by export-student; nothing was overwritten: give a new "
                    "file name")
