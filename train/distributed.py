"""torchrun DDP: who am I, which share of each global batch is mine, and global sums.

`torchrun --nproc_per_node N -m train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is
a single process and every helper is a no-op. Each rank reads its own share of every global batch
from the cache; gradients are averaged by DDP; rank 0 writes the run dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun prepared (nccl on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def my_share(batch: list, ranks: Ranks) -> list:
    """Rank r takes items r, r+W, ...: together the ranks see exactly the single-process batch."""
    return batch[ranks.rank :: ranks.world]


def global_sum(x: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.enabled:
        x = x.clone()
        dist.all_reduce(x)
    return x


def close(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
