"""One run on several processes (GPUs) under ``torchrun``: data-parallel views.

Every rank renders and scores its own cameras (``camera.batch_size`` of them), then the gradients of the
3D parameters, the fake score and the discriminator are averaged over the ranks before each optimiser
step, so every rank holds the same parameters and takes the same update as one process whose loss
averages all the ranks' views. Randomness comes in two streams: one every rank shares (the occupancy
grid's updates, which must agree) and one per rank (cameras, render jitter, timesteps, noise). Only rank 0
writes: the run folder, metrics, validation images, checkpoints (holding every rank's stream) and outputs.

    torchrun --nproc-per-node 2 launch.py --config configs/shapeworld.yaml --train

The process group is NCCL's on CUDA (each rank on GPU ``LOCAL_RANK``) and gloo's on the CPU (the tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Rank r's own random stream is seeded with seed + VIEW_SEED_STRIDE * (r + 1), apart from the shared one.
VIEW_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training one run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def communicates(self) -> bool:
        """Whether collectives run: several ranks in an initialised process group."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def view_generator(self, shared: torch.Generator, seed: int) -> torch.Generator:
        """The stream of this rank's views: the shared one itself when there is one rank (one process keeps its
        results), its own otherwise."""
        if self.world_size == 1:
            return shared
        return torch.Generator(shared.device).manual_seed(seed + VIEW_SEED_STRIDE * (self.rank + 1))

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        """Replaces each parameter's gradient by its mean over the ranks. A parameter some rank left without a
        gradient (none of its views reached it) counts as zero there; one no rank reached keeps none."""
        if not self.communicates:
            return
        reached = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32, device=parameters[0].device)
        dist.all_reduce(reached)
        averaged = [p for p, count in zip(parameters, reached.tolist()) if count > 0]
        for parameter in averaged:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        if not averaged:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in averaged])
        dist.all_reduce(flat)
        flat /= self.world_size
        for parameter, grad in zip(averaged, flat.split([p.numel() for p in averaged])):
            parameter.grad.copy_(grad.view_as(parameter.grad))

    def any(self, flag: torch.Tensor) -> torch.Tensor:
        """A boolean tensor, true where it is true on any rank."""
        if not self.communicates:
            return flag
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.bool()

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.communicates:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def from_main(self, value):
        """Rank 0's ``value`` (picklable), on every rank."""
        if not self.communicates:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.communicates:
            dist.barrier()


def current() -> Ranks:
    """The ranks of the initialised process group, or one process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def start_from_environment() -> Ranks:
    """Joins the process group ``torchrun`` describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), if it describes several processes; on CUDA each rank takes GPU LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return current()


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
