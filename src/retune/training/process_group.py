"""The process group a torchrun job trains in: ``Group.from_env`` joins it (nccl on CUDA, one GPU per process; gloo
on CPU). Each process trains on its own shard of the training rows (``shard_rows``: a seeded permutation padded to
equal length, as torch's DistributedSampler does), the loss goes through a ``DistributedDataParallel`` module so
gradients are averaged across processes at every step, and rank 0 alone computes the validation score (broadcast, so
early stopping agrees everywhere), scores the test split and writes the run directory. Without torchrun (WORLD_SIZE
unset or 1) nothing here is used. Starting the job is ``retune.distributed.ddp.launch``'s work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Group:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str:
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"

    @classmethod
    def from_env(cls) -> Group | None:
        """The process group torchrun describes in the environment (joined on first call); None without torchrun."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend)
        return cls(dist.get_rank(), world_size, local_rank, backend)

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    @contextmanager
    def in_turn(self) -> Iterator[None]:
        """Run the block one rank after another (rank 0 first): store writes never meet the store's writer lock,
        and later ranks find rank 0's cached embeddings."""
        for turn in range(self.world_size):
            if turn == self.rank:
                yield
            self.barrier()

    def shard_rows(self, rows: torch.Tensor, seed: int) -> torch.Tensor:
        """This rank's training rows: a seeded permutation padded (by wrapping) to a multiple of the world size, every
        world_size-th row from this rank's offset; every rank gets as many rows, so all take as many steps."""
        order = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
        padded = torch.cat([order, order[: (-len(order)) % self.world_size]])
        return padded[self.rank :: self.world_size]

    def synchronised_loss(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``loss`` run through DistributedDataParallel around ``model``: gradients are averaged across ranks at
        every backward, and rank 0's weights are broadcast once at the start."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(_LossModule(model, loss), device_ids=device_ids)

    def rank_zero_score(self, score: Callable[[], float | None]) -> Callable[[], float | None]:
        """``score`` computed on rank 0 and broadcast, so every rank takes the same early-stopping decisions."""
        import torch.distributed as dist

        def shared() -> float | None:
            value = [score() if self.is_main else None]
            dist.broadcast_object_list(value, src=0)
            return value[0]

        return shared

    def close(self) -> None:
        """Leave the process group (torchrun's processes then exit cleanly)."""
        import torch.distributed as dist

        dist.destroy_process_group()


class _LossModule(nn.Module):
    """Wraps ``model`` so that DDP sees the loss computation as its forward pass."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *args) -> torch.Tensor:
        return self.loss(*args)
