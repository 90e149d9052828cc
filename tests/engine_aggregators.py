"""Small aggregators private to the engine tests (the real ones live in moopt.gradsurgery).

Each is written in the most direct way so that the engine can be checked against it.
"""

from __future__ import annotations

import torch
from torch import nn

from moopt import GradientCombiner, GramianWeighting


class NanGradient(torch.autograd.Function):
    """Identity whose gradient is NaN wherever the incoming gradient is non-zero (a task
    whose backward breaks, without touching the tasks that do not use it)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.masked_fill(grad != 0, float("nan"))


class MeanOfGradients(GradientCombiner):
    """``d = mean_k g_k``: linear, so it must equal the gradient of ``mean_k L_k``."""

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        return jacobian.mean(0)


class NormalisedSum(GramianWeighting):
    """``w_k = 1 / ||g_k||`` from the Gramian's diagonal: non-linear in ``J``."""

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return gramian.diagonal().rsqrt()


class ProjectConflicting(GradientCombiner):
    """Two-task gradient projection (deterministic PCGrad): non-linear, uses ``J`` whole."""

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        g1, g2 = jacobian
        dot = g1 @ g2
        if dot < 0:
            g1, g2 = g1 - dot / (g2 @ g2) * jacobian[1], g2 - dot / (g1 @ g1) * jacobian[0]
        return g1 + g2


class MultiTaskNet(nn.Module):
    """A shared MLP trunk and one linear regression head per task."""

    def __init__(self, n_in: int = 5, hidden: int = 7, n_tasks: int = 3) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return torch.cat([head(h) for head in self.heads], 1), h


def task_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each task (column): a 1-D tensor of K losses."""
    return ((outputs - targets) ** 2).mean(0)


def reference_jacobian(losses: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """K separate ``autograd.grad`` calls, rows flattened and concatenated."""
    rows = []
    for k in range(losses.numel()):
        grads = torch.autograd.grad(losses[k], inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(x) if g is None else g).reshape(-1)
                    for g, x in zip(grads, inputs)
                ]
            )
        )
    return torch.stack(rows)


class InverseLoss(GramianWeighting):
    """``w_k = 1 / L_k`` from the loss values of the backward in progress."""

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        return 1.0 / self.loss_values.to(gramian)
