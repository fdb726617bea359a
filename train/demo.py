"""`make demo`: the whole pipeline on an embedded default, end to end, with the real CLIs.

corpus (espeak-ng speech, else numpy-made) -> extract-features -> train-student --cache ->
held-out eval -> exported student. Runs in a few minutes on 2 CPU cores; a second run finds the
cache and does no teacher work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

from train.pretraining.speech_corpus import demo_corpus

OUT = os.path.abspath(os.environ.get("DEMO_OUT", "demo-out"))
HUB_TEACHER = "facebook/hubert-base-ls960"
def hub_reachable(name: str) -> bool:
    """Whether the hub serves `name`: extract.teacher's one quick connect first (no hub, no 5 s wait), then the model."""
    from extract.teacher import hub_reachable as hub_answers

    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_answers():
        return False
    try:
        from huggingface_hub import model_info

        model_info(name, timeout=5)
        return True
    except Exception:  # noqa: BLE001 - any failure means "use the local teacher"
        return False


def small_teacher(path: str) -> str:
    """A 6-layer HuBERT (256 wide, 128-channel CNN) built locally with random weights, saved like a hub checkpoint."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, conv_dim=(128,) * 7,
                       num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16)
    HubertModel(cfg).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(path)
    return path


def script(name: str) -> str:
    """The console script installed beside the interpreter running the demo (.venv/bin/NAME under `make demo`).

    Never a bare name: without an activated venv, .venv/bin is not on PATH (a fresh clone's `make demo` failed so)."""
    path = os.path.join(sysconfig.get_path("scripts"), name)
    if not os.path.exists(path):
        sys.exit(f"demo: {path} is missing; install the project first (make install, or pip install -e .)")
    return path


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run([script(cmd[0]), *cmd[1:]], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(proc.returncode)
    return proc.stdout.strip().splitlines()[-1]


def main() -> None:
    t0 = time.time()
    os.makedirs(OUT, exist_ok=True)
    kind = demo_corpus(os.path.join(OUT, "corpus"))
    print(f"corpus: {os.path.join(OUT, 'corpus')} ({kind})")
    if hub_reachable(HUB_TEACHER):
        teacher, layers, steps, crop, batch = HUB_TEACHER, "4,8,12", 60, 32000, 4  # a 23M student on CPU: ~5 s/step
        print(f"teacher: {HUB_TEACHER} from the hub")
    else:
        teacher, layers, steps, crop, batch = small_teacher(os.path.join(OUT, "small-hubert")), "2,4,6", 150, 32000, 8
        print(f"teacher: the hub is not reachable, so a small HuBERT (6 layers, 256 wide, random weights) was built locally at "
              f"{teacher}; its layers 2,4,6 stand in for hubert-base's 4,8,12")
    cache_dir = os.path.join(OUT, "cache")
    summary = json.loads(run(["extract-features", "--teacher", teacher, "--corpus", os.path.join(OUT, "corpus"), "--layers", layers,
                              "--cache-dir", cache_dir, "--batch-seconds", "40", "--json"]))
    run_dir = os.path.join(OUT, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    student = run(["train-student", "--cache", "--teacher", teacher, "--layers", layers, "--cache-dir", cache_dir, "--out", run_dir,
                   "--steps", str(steps), "--batch-size", str(batch), "--max-crop-samples", str(crop), "--valid-fraction", "0.1",
                   "--eval-interval", "100", "--log-interval", "10", "--checkpoint-interval", "100", "--num-workers", "1"])
    evaluation = json.load(open(os.path.join(run_dir, "eval.json")))
    first = next(json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if '"loss"' in line)
    print(f"""
done in {time.time() - t0:.0f} s
  cache    {summary['path']}
           {summary['utterances']} utterances, {summary['frames']} frames; teacher work this run: {summary['teacher_work']}
  training loss {first['loss']:.3f} at step {first['step']} -> held-out loss {evaluation['loss']:.3f} at step {evaluation['step']}
  eval     {os.path.join(run_dir, 'eval.json')}
  plot     {os.path.join(run_dir, 'loss.png')}
  student  {student}   (transformers.HubertModel.from_pretrained("{student}"))
Run `make demo` again: the cache is found and reused (no teacher work).""")


if __name__ == "__main__":
    main()
