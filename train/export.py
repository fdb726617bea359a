"""Run-dir outputs: the student for `HubertModel.from_pretrained`, its heads apart, and the loss plot."""

from __future__ import annotations

import json
import os

from safetensors.torch import save_file

from train.data import STUDENT_INPUT_NORMALIZED
from train.model import Student


def export_student(model: Student, out_dir: str, layers: list[int], sample_rate: int) -> str:
    """student/ (config.json, model.safetensors, preprocessor_config.json) and heads.safetensors beside it.

    The preprocessor config says what the student was trained on: the raw waveform (train.data feeds
    crops as cached, STUDENT_INPUT_NORMALIZED = False), whatever the teacher's own config asks for."""
    from transformers import Wav2Vec2FeatureExtractor

    student_dir = os.path.join(out_dir, "student")
    model.encoder.save_pretrained(student_dir)
    Wav2Vec2FeatureExtractor(sampling_rate=sample_rate, do_normalize=STUDENT_INPUT_NORMALIZED, return_attention_mask=True).save_pretrained(
        student_dir)
    heads = {k: v.detach().cpu().contiguous() for k, v in model.heads.state_dict().items()}
    save_file(heads, os.path.join(out_dir, "heads.safetensors"))
    with open(os.path.join(out_dir, "heads.json"), "w") as f:
        json.dump({"target_layers": layers, "dim": model.encoder.config.hidden_size,
                   "objective": "layer-to-layer" if model.match else "heads", "match": [list(m) for m in model.match]}, f)
    return student_dir


def plot_losses(metrics_file: str, out_png: str) -> str | None:
    """loss.png from metrics.jsonl (total and per-layer L1); None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_file)] if os.path.exists(metrics_file) else []
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], label="loss", lw=2)
    for key in sorted(k for k in rows[0] if k.startswith("l1_layer")):
        ax.plot(steps, [r[key] for r in rows], label=key.replace("_", " "), lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
