"""Parts as dask tasks: one teacher per worker process, one task per part.

A part is written by exactly one task and committed last, so a task that dies with its worker
is simply rerun elsewhere (dask reschedules it) and rewrites the part from scratch.
"""

from __future__ import annotations

import sys

from extract.errors import ExtractError
from store import Layout

SCHEDULER_TIMEOUT = "10s"
_TEACHERS: dict = {}  # per worker process: (name, revision, device, dtype) -> Teacher


def _worker_device(device: str) -> str:
    """--workers N on a multi-GPU box: LocalCluster worker i takes GPU i mod #GPUs (names are 0..N-1).

    Workers started elsewhere (dask-cuda sets CUDA_VISIBLE_DEVICES per worker) keep what they were given."""
    import torch

    if device not in ("auto", "cuda") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return device
    from dask.distributed import get_worker

    name = str(get_worker().name)
    return f"cuda:{int(name) % torch.cuda.device_count()}" if name.isdigit() else device


def _worker_part(path: str, part: dict, cfg, spec: dict, layout: Layout) -> tuple[int, int]:
    from extract.pipeline import extract_part
    from extract.teacher import load_teacher

    device = _worker_device(cfg.device)
    key = (cfg.teacher, cfg.revision, device, cfg.dtype)
    if key not in _TEACHERS:
        _TEACHERS[key] = load_teacher(cfg.teacher, cfg.revision, device, cfg.dtype, cfg.allow_pickle)
    teacher = _TEACHERS[key]
    if teacher.digest != spec["teacher"]["digest"]:
        raise ExtractError(f"worker loaded different weights for --teacher {cfg.teacher}; give every worker the same teacher files")
    extract_part(path, part, teacher, spec, layout, cfg.batch_seconds, cfg.on_error)
    return len(part["items"]), sum(it.samples for it in part["items"])


def connect(address: str):
    """A client of the dask scheduler at `address`, or one line saying it cannot be reached. extract.run calls it once
    before any cache is created, so an unreachable scheduler leaves nothing behind."""
    from dask.distributed import Client

    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as e:
        raise ExtractError(f"--scheduler {address}: cannot reach it ({str(e).splitlines()[0][:120]}); check the address, "
                           "or start one with `dask scheduler`") from None


def run_parts(cfg, path: str, pending: list[dict], spec: dict, layout: Layout, progress) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if cfg.scheduler:
        client = connect(cfg.scheduler)
    else:
        cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
    print(f"dask: {len(client.scheduler_info()['workers'])} workers, dashboard {client.dashboard_link}", file=sys.stderr)
    try:
        name = path.rstrip("/").split("/")[-1]
        futures = [client.submit(_worker_part, path, part, cfg, spec, layout, key=f"extract-{name}-{part['name']}",
                                 pure=False, retries=1) for part in pending]
        for fut in as_completed(futures):
            progress(*fut.result())  # raises the task's error (bad file with --on-error fail) in the client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
