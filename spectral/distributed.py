"""Data-parallel capture under ``torchrun``: every rank is shard ``rank/world`` of the windows,
and after each condition rank 0 gathers the other ranks' capture states and merges them (the
same exact merge as ``spectral merge``), then analyses alone.

Launch: ``torchrun --nproc_per_node N -m spectral.cli run ...`` (gloo on CPU; NCCL when the model
runs on CUDA, each rank on ``cuda:LOCAL_RANK``). Across nodes, torchrun's ``--nnodes`` /
``--rdzv-endpoint`` do the rest; the output directory must be on a filesystem rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from spectral.conditions import ConditionCapture


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job."""

    rank: int
    world: int

    def barrier(self) -> None:
        torch.distributed.barrier()

    def merge_into(self, cc: ConditionCapture) -> None:
        """Gather every rank's complete state on rank 0 and merge them into rank 0's ``cc``."""
        state = cc.state_dict()
        gathered: list[object] | None = [None for _ in range(self.world)] if self.rank == 0 else None
        torch.distributed.gather_object(state, gathered, dst=0)
        if self.rank == 0:
            assert gathered is not None
            for other in gathered[1:]:
                cc.merge_state(other)  # type: ignore[arg-type]


def context() -> DistContext | None:
    """The torchrun context (process group initialised on first use), or None outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SPECTRAL_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return DistContext(dist.get_rank(), dist.get_world_size())
