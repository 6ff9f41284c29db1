"""Data-parallel training on PyTorch's own engine: torchrun starts one process per rank, each
joins the process group here, trains its slice of every minibatch inside
torch.nn.parallel.DistributedDataParallel, and the metrics are all-reduced sums and counts.

Started by torchrun (`python -m torch.distributed.run --standalone --nproc-per-node N -m cli.main
train ...`, or `aerec train ... --nproc N`, which runs that command): RANK, WORLD_SIZE and
LOCAL_RANK come from its environment (https://pytorch.org/docs/stable/elastic/run.html). Without
them every function here is the single-process identity: world size 1, rank 0.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    """This process's place in the job: `rank` in 0..size-1, `local_rank` on its machine."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes run folders and checkpoints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def env_world() -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (World() when unset).
    Raises ValueError for values that are not integers or a rank outside 0..size-1."""
    try:
        w = World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                  int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if w.size < 1 or not 0 <= w.rank < w.size:
        raise ValueError(f"RANK {w.rank} outside 0..WORLD_SIZE-1 (WORLD_SIZE {w.size})")
    return w


def world() -> World:
    """The process group's world when one is initialised, else World() (one process)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def setup(device: str = "auto", timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun described, once (later calls return the same world):
    NCCL when this rank trains on CUDA, gloo on the CPU. A CUDA rank is pinned to the GPU of
    its LOCAL_RANK, so `cuda` means that GPU. Under no launcher: World(), nothing initialised."""
    w = env_world()
    if not w.parallel or dist.is_initialized():
        return world() if w.parallel else w
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return world()


@contextlib.contextmanager
def session(device: str = "auto"):
    """The process group for one command, set up at its top: `with session(config.device) as w:`
    joins the group torchrun described (setup; World() under no launcher) and, when the block
    ends normally, leaves it (teardown). On an exception the group is left as it is: the other
    ranks may still be inside a collective, and the process is about to exit."""
    w = setup(device)
    yield w
    teardown()


def teardown() -> None:
    """Leave the process group (after the last collective), if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def batch_part(batch: np.ndarray, w: World) -> np.ndarray:
    """This rank's rows of one global minibatch: every size-th row from its rank on, so the N
    ranks together train on exactly the rows one process would, each on about batch/N of them."""
    return batch[w.rank::w.size] if w.parallel else batch


def shard_range(n_rows: int, w: World) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous block of n_rows rows (the first n_rows % size
    ranks get one more)."""
    base, extra = divmod(n_rows, w.size)
    start = w.rank * base + min(w.rank, extra)
    return start, start + base + (w.rank < extra)


def all_sum(values, device="cpu") -> np.ndarray:
    """Element-wise sum over ranks of a float64 vector (numbers or an array), as numpy float64.
    float64, because sums of squared errors over millions of ratings lose digits in float32
    (gloo sums in the tensor's dtype; NCCL gets a tensor on this rank's device)."""
    local = np.asarray(values, dtype=np.float64)
    if not world().parallel:
        return local
    t = torch.from_numpy(local.copy()).to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def all_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks, in place (returned for chaining); unchanged in one process."""
    if world().parallel:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(obj, src: int = 0):
    """Rank `src`'s picklable `obj` on every rank (the object itself in one process)."""
    if not world().parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank ([obj] in one process)."""
    if not world().parallel:
        return [obj]
    out = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world().parallel:
        dist.barrier()


def wrap(model: torch.nn.Module, device) -> torch.nn.Module:
    """`model` inside DistributedDataParallel when the world is parallel (gradients averaged
    over ranks in backward; rank 0's initial weights broadcast at construction), else `model`."""
    if not world().parallel:
        return model
    ids = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else None  # pinned in setup
    return DistributedDataParallel(model, device_ids=ids)


def under_launcher() -> bool:
    """Is this process one of torchrun's workers (WORLD_SIZE set)?"""
    return "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """The command line that runs `python -m module *args` in `nproc` processes on this machine
    under torchrun (torch.distributed.run; --standalone: a local rendezvous on a free port).
    Raises ValueError for nproc < 1."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *args]
