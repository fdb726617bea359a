"""Shared bench helpers: machine description, timing, table printing, a HuBERT-base-shaped teacher."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` runs (after one warm-up): the least noisy estimate on a shared machine."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def hubert_base_teacher(path: str, layers: int = 12) -> str:
    """HuBERT-base-shaped random weights (94.68M parameters at 12 layers), saved like a hub checkpoint."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    HubertModel(HubertConfig(num_hidden_layers=layers)).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(path)
    return path


def ab_args(doc: str):
    """The A/B benches' arguments: --steps and where make demo left its corpus and teacher."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--demo-out", default="demo-out", help="where make demo left its corpus and teacher")
    return ap.parse_args()


def demo_inputs(demo_out: str) -> tuple[str, str, str]:
    """(corpus, what its audio is, teacher) of the demo: 48 espeak utterances and a 6-layer 256-wide random HuBERT."""
    from train.demo import small_teacher
    from train.pretraining.speech_corpus import demo_corpus

    corpus = os.path.join(demo_out, "corpus")
    kind = demo_corpus(corpus)
    return corpus, kind, small_teacher(os.path.join(demo_out, "small-hubert"))


def demo_cache(demo_out: str, tmp: str, storage_dtype: str = "float16") -> dict:
    """The demo's inputs and one cache of their layers 2,4,6 under `tmp`: {cache, corpus, kind, teacher}."""
    from extract import ExtractConfig, extract_features

    corpus, kind, teacher = demo_inputs(demo_out)
    cache = extract_features(ExtractConfig(teacher, corpus, layers=(2, 4, 6), cache_dir=os.path.join(tmp, "k"),
                                           storage_dtype=storage_dtype, progress=False)).path
    return {"cache": cache, "corpus": corpus, "kind": kind, "teacher": teacher}


class MotoLog:
    """The request log of a moto server: one line per request it answered."""

    def __init__(self, f):
        self.f = f

    def requests(self, method: str | None = None) -> int:
        """Requests answered (2xx, 4xx), of one method if given (moto colours some lines: their codes are skipped)."""
        self.f.flush()
        self.f.seek(0)
        lines = [line for line in self.f.read().splitlines() if '" 20' in line or '" 40' in line]
        if method is None:
            return len(lines)
        return sum(1 for line in lines if re.search(r'"(?:\x1b\[[0-9;]*m)*' + method + " ", line))


@contextlib.contextmanager
def moto_server():
    """A moto S3 server on loopback for the length of the block, with AWS_* set to reach it (as they were after it);
    yields its MotoLog. Tests use it too (tests/store/test_s3_requests.py)."""
    import socket
    import subprocess
    import sys
    import tempfile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(os.path.join(tempfile.mkdtemp(), "moto.log"), "w+")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each request's line as it comes
    reach = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
             "AWS_DEFAULT_REGION": "us-east-1"}
    before = {k: os.environ.get(k) for k in reach}
    os.environ.update(reach)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield MotoLog(log)
    finally:
        proc.kill()
        log.close()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
