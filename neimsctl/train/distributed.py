"""DistributedDataParallel under ``torchrun`` and the seeded, shardable sampler.

No launcher here: start several processes with PyTorch's own engine,

    torchrun --nproc_per_node=2 -m neimsctl.cli.main distill ...      # or python -m torch.distributed.run

which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` reads them (gloo on CPU, nccl on CUDA); without them it returns a
single-process :class:`DistInfo` and nothing is initialised. Only rank 0 writes checkpoints,
logs and the report (:attr:`DistInfo.is_main`).

:class:`SeededSampler` is the data order of every run, single or distributed: the permutation
depends only on ``(seed, epoch)``, each rank takes ``perm[rank::world_size]`` of the padded
permutation (as ``torch.utils.data.DistributedSampler`` does), and ``start`` skips the samples
already consumed when resuming in the middle of an epoch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info(env: dict[str, str] | None = None) -> DistInfo:
    """The torchrun environment as a :class:`DistInfo` (single process when unset)."""
    env = os.environ if env is None else env
    return DistInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                    int(env.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes; pins the CUDA device to ``LOCAL_RANK``.

    Returns the single-process info (and initialises nothing) when ``WORLD_SIZE`` is 1/unset.
    """
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda:LOCAL_RANK`` under multi-GPU torchrun, else ``device`` unchanged."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def wrap_model(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """DDP-wrap ``model`` (already on ``device``) when distributed, else return it."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar logs over ranks (identity when not distributed)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: v / info.world_size for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is set on any rank (so all ranks stop together on Ctrl-C)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class SeededSampler(Sampler[int]):
    """Shuffled indices whose order depends only on ``(seed, epoch)``; shards by rank.

    Parameters
    ----------
    n
        Dataset length.
    seed
        Base seed (``train.seed``).
    shuffle
        False gives ``0..n-1`` (validation).
    rank, world_size
        This process's shard; the permutation is padded (repeating its head) to a multiple of
        ``world_size`` so every rank gets the same number of samples.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = -(-n // world_size) if n else 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip the first ``start`` samples of this rank's share."""
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> list[int]:
        """This rank's full order for the current epoch (before ``start`` is applied)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world_size
        if perm and total > len(perm):
            perm += (perm * (total // len(perm) + 1))[: total - len(perm)]
        return perm[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)
