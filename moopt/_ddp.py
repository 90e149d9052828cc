"""Collectives for gradient combiners under ``torch.distributed`` (data parallelism).

A gradient combiner that is not linear in the per-task gradients (PCGrad, MGDA, ...)
must see the per-task gradients of the **global** batch: averaging the per-task
gradients across ranks and then aggregating is right; aggregating on each rank and then
averaging the updates (what ``DistributedDataParallel`` would do to a per-rank update) is
not, because ``aggregate(mean_r J_r) != mean_r aggregate(J_r)``. These helpers do the
communication; :meth:`moopt.GradientCombiner.backward` decides what to send.

Every helper is a no-op when ``group`` is ``None`` (no process group, or one process).
"""

from __future__ import annotations

from typing import Any

import torch


def resolve_group(process_group: Any = None) -> Any:
    """The process group to average over, or ``None`` when there is nothing to average.

    ``process_group=None`` means the default (world) group when ``torch.distributed`` is
    available and initialised; a group of one process, or no initialised group, gives
    ``None``.
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        if process_group is not None:
            raise ValueError(
                "process_group was given but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first"
            )
        return None
    group = torch.distributed.group.WORLD if process_group is None else process_group
    if torch.distributed.get_world_size(group) <= 1:
        return None
    return group


def world_size(group: Any) -> int:
    """Number of processes in ``group`` (1 when ``group`` is ``None``)."""
    return 1 if group is None else torch.distributed.get_world_size(group)


def all_reduce_sum_(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``group``, in place."""
    if group is not None:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """Average ``tensor`` over the ranks of ``group``, in place."""
    if group is not None:
        all_reduce_sum_(tensor, group).div_(world_size(group))
    return tensor


def used_on_any_rank(flags: list[bool], group: Any, device: torch.device) -> list[bool]:
    """For each flag, whether it is set on at least one rank of ``group``.

    Decides which tensors get a ``.grad`` under data parallelism: one that no loss of any
    rank depends on is left alone, as ``backward`` would leave it.
    """
    if group is None:
        return list(flags)
    counts = torch.tensor([float(f) for f in flags], device=device)
    return [bool(c > 0) for c in all_reduce_sum_(counts, group)]


def broadcast_from_first(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """``tensor`` as it is on the group's first rank (a copy, on every rank).

    Keeps the replicas identical when an aggregator is randomised (PCGrad's task order,
    GradDrop's masks) or when round-off differs between ranks.
    """
    if group is None:
        return tensor
    tensor = tensor.clone()
    source = torch.distributed.get_process_group_ranks(group)[0]
    torch.distributed.broadcast(tensor, src=source, group=group)
    return tensor


def gather_columns(block: torch.Tensor, group: Any) -> tuple[torch.Tensor, int]:
    """Concatenate the ``(K, n_r)`` blocks of all ranks along columns.

    Returns the ``(K, Σ n_r)`` matrix (identical on every rank) and the column offset of
    this rank's block. Ranks may hold different ``n_r`` (an uneven last batch).
    """
    if group is None:
        return block, 0
    size = torch.tensor([block.shape[1]], dtype=torch.long, device=block.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size(group))]
    torch.distributed.all_gather(sizes, size, group=group)
    counts = [int(s) for s in sizes]
    widest = max(counts)
    padded = torch.zeros(block.shape[0], widest, dtype=block.dtype, device=block.device)
    padded[:, : block.shape[1]] = block
    pieces = [torch.empty_like(padded) for _ in counts]
    torch.distributed.all_gather(pieces, padded.contiguous(), group=group)
    rank = torch.distributed.get_rank(group)
    full = torch.cat([piece[:, :count] for piece, count in zip(pieces, counts)], 1)
    return full, sum(counts[:rank])
