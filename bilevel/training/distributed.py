"""Several processes under `torchrun`: each takes a slice of every batch of tasks, and
the hypergradients and logged scalars are combined with all-reduce.

With n_r tasks on process r and N = sum_r n_r, the batch's hypergradient is

    g = sum_r n_r g_r / N

(g_r the mean over process r's tasks), the same as one process with all N tasks.
With one process (WORLD_SIZE unset or 1) every function here is the identity.
"""

import dataclasses
import os

import torch
import torch.distributed as dist

from bilevel.errors import InvalidInputError
from bilevel.tree import ravel, tree_flatten, tree_map, tree_unflatten


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's rank among world_size; owns_group: whether `start` created the
    process group (and `stop` must destroy it)."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: torch.device) -> Processes:
    """Join the process group that `torchrun` set up in the environment (WORLD_SIZE > 1):
    gloo for CPU tensors, nccl for CUDA ones."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), owns)


def stop(processes: Processes) -> None:
    if processes.owns_group:
        dist.destroy_process_group()


def shard(tasks, n: int, processes: Processes, argument: str):
    """This process's contiguous slice of a batch of n tasks (sizes differ by at most 1)."""
    if processes.world_size == 1:
        return tasks, n
    if n < processes.world_size:
        raise InvalidInputError(
            f"{argument}={n} must be >= the number of processes ({processes.world_size})"
        )
    start = processes.rank * n // processes.world_size
    stop = (processes.rank + 1) * n // processes.world_size
    return tree_map(lambda t: t[start:stop], tasks), stop - start


def mean_over_tasks(tree, n_local: int, n_total: int, processes: Processes):
    """sum_r n_r x_r / N for a pytree of tensors x_r, each a mean over n_r tasks."""
    if processes.world_size == 1:
        return tree
    flat, unravel = ravel(tree)
    flat = flat * n_local
    dist.all_reduce(flat)
    return unravel(flat / n_total)


def sum_over_processes(tree, processes: Processes):
    """sum_r x_r for a pytree of tensors."""
    if processes.world_size == 1:
        return tree
    leaves, spec = tree_flatten(tree)
    flat = torch.stack(leaves)
    dist.all_reduce(flat)
    return tree_unflatten(list(flat.unbind()), spec)


def combine(entries, n_local: int, n_total: int, processes: Processes) -> dict:
    """Python numbers from (name, 0-dim tensor, op) entries (`bilevel.info.Info.scalars`):
    all-reduced by op, then moved to the host in one transfer (the step's one sync)."""
    if not entries:
        return {}
    values = torch.stack([value for _, value, _ in entries])
    if processes.world_size > 1:
        ops = [op for _, _, op in entries]
        device = values.device
        summed = torch.tensor([op in ("mean", "sum") for op in ops], device=device)
        is_max = torch.tensor([op == "max" for op in ops], device=device)
        weight = torch.tensor([n_local / n_total if op == "mean" else 1.0 for op in ops],
                              dtype=values.dtype, device=device)
        totals = torch.where(summed, values * weight, 0.0)
        dist.all_reduce(totals)
        maxima = torch.where(is_max, values, -torch.inf)
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        values = torch.where(summed, totals, torch.where(is_max, maxima, values))
    host = values.tolist()
    return {name: int(v) if op == "sum" else v
            for (name, _, op), v in zip(entries, host, strict=True)}


def barrier(processes: Processes) -> None:
    if processes.world_size > 1:
        dist.barrier()
