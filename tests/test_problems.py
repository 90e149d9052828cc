"""The toy problems' analytic answers, checked independently of their closed forms."""

import math

import pytest
import torch

from moopt.problems import Circle, FonsecaFleming

PROBLEMS = [
    Circle(),
    Circle(p=1.5),
    Circle(convex=True),
    Circle(p=0.7),
    FonsecaFleming(2),
    FonsecaFleming(5),
]


def _dense_set(problem, n=200001):
    """A dense sample of the Pareto set, mapped through losses() (not the closed form)."""
    if isinstance(problem, Circle):
        t = torch.linspace(-14.0, 14.0, n, dtype=torch.float64)
        return problem.losses(torch.stack([t, torch.zeros_like(t)], dim=-1))
    bound = 1.0 / math.sqrt(problem.n_params)
    t = torch.linspace(-bound, bound, n, dtype=torch.float64)
    return problem.losses(t.unsqueeze(-1).repeat(1, problem.n_params))


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_front_equation_and_batched_losses(problem):
    front = problem.pareto_front(50)
    assert front.shape == (50, 2)
    assert bool((front[1:, 1] >= front[:-1, 1] - 1e-12).all())  # ordered by L2
    theta = problem.sample_init(12, torch.Generator().manual_seed(0)).reshape(3, 4, -1)
    assert problem.losses(theta).shape == (3, 4, 2)
    if isinstance(problem, Circle):
        p, f = problem.p, front
        lhs = ((1 - f) ** p).sum(-1) if problem.convex else (f**p).sum(-1)
        torch.testing.assert_close(lhs, torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
@pytest.mark.parametrize("eps", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_epsilon_point_matches_brute_force_and_kkt(problem, eps):
    exact = problem.epsilon_point(eps)
    dense = _dense_set(problem)
    feasible = dense[dense[:, 1] <= eps]
    best = feasible[feasible[:, 0].argmin()]
    torch.testing.assert_close(exact.losses, best, atol=2e-4, rtol=0)
    # λ* = −dL1/dL2 along the front, by a finite difference of the brute-force front.
    if 0 < exact.multiplier:
        near = dense[(dense[:, 1] - eps).abs() < 5e-3]
        slope = torch.linalg.lstsq(
            torch.stack([near[:, 1], torch.ones_like(near[:, 1])], -1), near[:, :1]
        ).solution[0, 0]
        assert exact.multiplier == pytest.approx(-slope.item(), rel=5e-3)


@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.9, 0.1), (0.2, 0.8)])
def test_chebyshev_point_minimises_weighted_max(problem, weights):
    point = problem.chebyshev_point(list(weights))
    dense = _dense_set(problem)
    w = torch.tensor(weights, dtype=torch.float64)
    best = (dense * w).max(-1).values.min()
    value = (point * w).max().item()
    assert value <= best.item() + 1e-9  # no sampled point does better than the exact one
    assert value == pytest.approx(best.item(), abs=1e-5)
