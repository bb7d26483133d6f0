"""torchrun: the process group, this process's rank, and the device it computes on."""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def join() -> tuple[int, int]:
    """(rank, world size); joins the torchrun group (nccl on GPU, with LOCAL_RANK's GPU; gloo on CPU) on first call."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timedelta(hours=4))
    return rank_world()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the joined group, (0, 1) outside torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def leave(finished: bool) -> None:
    """Leave the torchrun group before the interpreter exits: gloo's threads torn down at exit abort the process
    ("terminate called without an active exception") when the group is still open. A finished rank first waits for
    the others, so none leaves while another still talks to it; a failed rank leaves at once (its peers may never
    reach a barrier)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def local_device() -> torch.device:
    """This rank's GPU (set by `join`), the GPU, or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())
