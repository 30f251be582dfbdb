"""Training on several processes: torchrun launch, DistributedDataParallel, batch sharding.

``facelab train --nproc N`` re-runs the same command under ``torch.distributed.run`` (torchrun)
with N processes. Each process reads its rank from the environment torchrun sets
(:func:`Distributed.from_env`), joins a gloo process group (the trainer runs on CPU), and
wraps the model in :class:`torch.nn.parallel.DistributedDataParallel`.

Every rank computes the same epoch order (seeded by epoch, drawn from the person-level
training split) and the same augmented global batch, then trains on its contiguous share of
it (:meth:`Distributed.shard`); DDP averages the gradients, and BatchNorm statistics are
synchronised over the global batch (:class:`SyncBatchNorm` below: torch's own one needs a
GPU), so a step on N processes equals a step of one process on the same global batch, up to
floating-point summation order. Rank 0 alone writes checkpoints, logs and the split; every
rank validates (same weights, same answer) so early stopping and schedules agree.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from facelab.errors import ConfigError


@dataclass
class Distributed:
    """This process's place in a run: rank and world size (1 = not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the process that writes files and shows progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Join the process group torchrun described in the environment (RANK, WORLD_SIZE,
        MASTER_ADDR, MASTER_PORT); a single process when WORLD_SIZE is unset or 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ConfigError(f"batch_size={batch_size} is not divisible by the {self.world} processes; "
                              f"use a multiple of {self.world} (the global batch is split evenly)")

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of ``n`` rows."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` with synchronised BatchNorm inside DistributedDataParallel (identity when
        not distributed). The returned module shares ``model``'s parameters."""
        if not self.active:
            return model
        convert_batchnorm(model)
        # a process's share may hold no labelled row of some task (mixed data sets): that
        # head then gets no gradient there, and DDP must not wait for it
        return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums over all ranks."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.active:
            dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """The torchrun command line that runs ``python -m facelab <args>`` on ``nproc`` processes.

    Example:
        >>> launch_command(2, ["train", "-o", "runs/x"])[1:6]
        ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m']
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 (got {nproc})")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "facelab", *args]


class _SyncBN(torch.autograd.Function):
    """Batch normalisation with statistics over the whole distributed batch (any device)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0, *range(2, x.dim())]
        n = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), n])
        dist.all_reduce(stats)
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total = total
        ctx.shape = shape
        return xhat * weight.view(shape) + bias.view(shape), mean, var, total

    @staticmethod
    def backward(ctx, gy, _gm, _gv, _gt):
        xhat, weight, invstd = ctx.saved_tensors
        dims = [0, *range(2, gy.dim())]
        shape = ctx.shape
        sum_dy, sum_dy_xhat = gy.sum(dims), (gy * xhat).sum(dims)
        g_weight, g_bias = sum_dy_xhat.clone(), sum_dy.clone()  # local: DDP averages them
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        c = sum_dy.numel()
        mean_dy, mean_dy_xhat = both[:c] / ctx.total, both[c:] / ctx.total
        gx = (weight * invstd).view(shape) * (gy - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape))
        return gx, g_weight, g_bias, None


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover every rank's share of the batch (gloo/CPU
    as well as GPU); in eval mode, or outside a process group, a plain BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        if not self.affine or not self.track_running_stats:
            raise ConfigError("distributed BatchNorm needs affine=True and running statistics")
        y, mean, var, total = _SyncBN.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * total / (total - 1).clamp_min(1), alpha=m)
            self.num_batches_tracked.add_(1)
        return y


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d of ``model`` into :class:`SyncBatchNorm` in place (same
    parameters, buffers and train/eval state)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SyncBatchNorm
    return model

