"""Per-task gradients: the K×D Jacobian of K losses with respect to a list of tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def task_jacobian(
    losses: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool = False
) -> torch.Tensor:
    """Return the K×D matrix whose row k is the flattened gradient of ``losses[k]``.

    D is the total number of elements of ``params``; a tensor that a loss does not depend
    on contributes zeros.
    """
    rows = []
    n_tasks = losses.numel()
    for k in range(n_tasks):
        keep = retain_graph or k < n_tasks - 1
        grads = torch.autograd.grad(losses[k], params, retain_graph=keep, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, p in zip(grads, params)
                ]
            )
        )
    return torch.stack(rows)
