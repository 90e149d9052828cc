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

from moopt.frontier import ProblemTraining, trace
from moopt.problems import Circle, SphereOctant

CASES = [
    ("Circle, linear+epsilon, 11 pts, 2 seeds", Circle(), dict(n_points=11, seeds=2), 300),
    ("SphereOctant, linear+epsilon, 5 pts", SphereOctant(), dict(n_points=5), 300),
]


def _timed(training: ProblemTraining, batched: bool, kwargs: dict) -> tuple[float, object]:
    start = time.perf_counter()
    front = trace(training, methods=["linear", "epsilon"], batched=batched, **kwargs)
    return time.perf_counter() - start, front


def main() -> None:
    trace(ProblemTraining(Circle(), steps=5), methods="linear", n_points=2)  # one-time warm-up
    header = f"{'case':<42}{'runs':>6}{'one by one s':>14}{'batched s':>11}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    for name, problem, kwargs, steps in CASES:
        training = ProblemTraining(problem, steps=steps)
        slow, single = _timed(training, False, kwargs)
        fast, batched = _timed(training, True, kwargs)
        gap = np.abs(single.losses - batched.losses).max(axis=1)
        ref = [1.1] * problem.n_objectives
        print(f"{name:<42}{len(single):>6}{slow:>14.2f}{fast:>11.2f}{slow / fast:>9.1f}x")
        print(
            f"{'':<42}loss difference between the paths: median {np.median(gap):.1e}, "
            f"max {gap.max():.1e}; hypervolume {single.hypervolume(ref):.4f} vs "
            f"{batched.hypervolume(ref):.4f}"
        )


if __name__ == "__main__":
    main()
