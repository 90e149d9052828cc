"""Batched fast path of moopt.frontier.trace vs the same runs one by one.

Both paths run the same configurations with the same initialisation, optimizer and
schedule (tests check that the losses agree); the batched path stacks the runs of a task
into one parameter and differentiates their summed scalarizations once per step.
Vectorised kernels round differently, so the two paths differ at the last bits, and runs
whose answer is not unique (SphereOctant ε bounds beyond the front: a whole arc of
minimisers) can end at different minimisers.

    python benchmarks/frontier_batched.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from moopt.frontier import ModuleTraining, ProblemTraining, trace
from moopt.problems import Circle, SphereOctant

_X = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
_TARGETS = torch.stack([_X @ torch.linspace(-1, 1, 8), _X @ torch.linspace(1, -1, 8).roll(3)])


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def _regressions(forward, step: int) -> torch.Tensor:
    return ((forward(_X)[:, 0] - _TARGETS) ** 2).mean(dim=1)


LINEAR_EPS = ["linear", "epsilon"]
CASES = [
    (
        "Circle, linear+epsilon, 11 pts, 2 seeds",
        ProblemTraining(Circle(), steps=300),
        dict(methods=LINEAR_EPS, n_points=11, seeds=2),
        2,
    ),
    (
        "SphereOctant, linear+epsilon, 5 pts",
        ProblemTraining(SphereOctant(), steps=300),
        dict(methods=LINEAR_EPS, n_points=5),
        3,
    ),
    (
        "MLP 8-32-1, two regressions, linear, 11 w x 2 seeds",
        ModuleTraining(_mlp, _regressions, n_objectives=2, steps=300, lr=0.01),
        dict(methods="linear", n_points=11, seeds=2),
        2,
    ),
]


def _timed(training: object, batched: bool, kwargs: dict) -> tuple[float, object]:
    start = time.perf_counter()
    front = trace(training, batched=batched, **kwargs)
    return time.perf_counter() - start, front


def main() -> None:
    trace(ProblemTraining(Circle(), steps=5), methods="linear", n_points=2)  # one-time warm-up
    header = f"{'case':<52}{'runs':>6}{'one by one s':>14}{'batched s':>11}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    for name, training, kwargs, n_objectives in CASES:
        slow, single = _timed(training, False, kwargs)
        fast, batched = _timed(training, True, kwargs)
        gap = np.abs(single.losses - batched.losses).max(axis=1)
        ref = single.losses.max(axis=0) * 1.1 if n_objectives == 2 else [1.1] * n_objectives
        print(f"{name:<52}{len(single):>6}{slow:>14.2f}{fast:>11.2f}{slow / fast:>9.1f}x")
        print(
            f"{'':<52}loss difference between the paths: median {np.median(gap):.1e}, "
            f"max {gap.max():.1e}; hypervolume {single.hypervolume(ref):.4f} vs "
            f"{batched.hypervolume(ref):.4f}"
        )


if __name__ == "__main__":
    main()
