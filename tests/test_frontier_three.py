"""Three objectives: ε and Chebyshev sweeps on the sphere octant (DTLZ2-like) front."""

import numpy as np
import pytest
import torch

from moopt.frontier import ProblemTraining, hypervolume, igd, simplex_lattice, trace
from moopt.problems import SphereOctant

REF = [1.1, 1.1, 1.1]
CORNERS = np.eye(3)


def _spread(points, reference):
    """Largest distance from a reference front point to the nearest found point."""
    return np.linalg.norm(reference[:, None, :] - points[None], axis=-1).min(axis=1).max()


def _exact_epsilon(problem, front):
    exact = []
    for bounds, found in zip(front.epsilon[:, 1:], front.losses):
        point = problem.epsilon_point(bounds).losses.numpy()
        # beyond the front (ε₂² + ε₃² > 1) every point of the arc L1 = 0 inside the box is
        # a minimiser; a found point that is one counts as exact
        is_minimiser = (
            found[0] < 1e-2
            and abs(np.linalg.norm(found) - 1) < 1e-2
            and np.all(found[1:] <= bounds + 1e-2)
        )
        exact.append(found if bounds @ bounds > 1 and is_minimiser else point)
    return np.array(exact)


@pytest.fixture(scope="module")
def sphere():
    problem = SphereOctant()
    weights = simplex_lattice(3, 7)
    weights = weights[(weights > 0).all(axis=1)]  # zero weights: no unique Chebyshev point
    front = trace(
        ProblemTraining(problem, steps=300),
        methods=["linear", "chebyshev", "epsilon"],
        n_points=5,
        weights=weights,
    )
    return problem, front


def test_problem_front_points_are_on_the_octant():
    problem = SphereOctant(n_distance=2)
    theta = problem.sample_init(64, torch.Generator().manual_seed(0))
    losses = problem.losses(theta)
    assert (losses >= 0).all() and (losses.norm(dim=-1) >= 1 - 1e-12).all()
    front = problem.pareto_front(5)
    assert front.shape == (15, 3)
    np.testing.assert_allclose(front.norm(dim=-1), 1.0)
    point = problem.epsilon_point([0.3, 0.4])
    np.testing.assert_allclose(point.losses.numpy(), [np.sqrt(0.75), 0.3, 0.4])
    np.testing.assert_allclose(point.multiplier, [0.3 / np.sqrt(0.75), 0.4 / np.sqrt(0.75)])
    cheb = problem.chebyshev_point([0.2, 0.3, 0.5], [0.0, 0.0, 0.0]).numpy()
    assert abs(np.linalg.norm(cheb) - 1) < 1e-12
    np.testing.assert_allclose(cheb * [0.2, 0.3, 0.5], (cheb * [0.2, 0.3, 0.5])[0])


@pytest.mark.slow
def test_epsilon_sweep_reaches_its_exact_points_over_the_octant(sphere):
    problem, front = sphere
    eps = front.select("epsilon")
    assert len(eps) == 25
    exact = _exact_epsilon(problem, eps)
    assert eps.hypervolume(REF) >= 0.99 * hypervolume(exact, REF)
    assert _spread(eps.losses, front.reference) < 0.4
    assert eps.igd() <= igd(exact, front.reference) + 0.01


@pytest.mark.slow
def test_chebyshev_sweep_reaches_its_exact_points_over_the_octant(sphere):
    problem, front = sphere
    cheb = front.select("chebyshev")
    exact = np.array(
        [problem.chebyshev_point(list(w), list(front.ideal)).numpy() for w in cheb.weights]
    )
    assert cheb.hypervolume(REF) >= 0.99 * hypervolume(exact, REF)
    # interior weights only: as spread over the octant as the exact points themselves
    assert _spread(cheb.losses, front.reference) <= _spread(exact, front.reference) + 0.05
    assert cheb.igd() <= igd(exact, front.reference) + 0.01


@pytest.mark.slow
def test_linear_weights_land_only_on_corners(sphere):
    _, front = sphere
    linear = front.select("linear").losses
    distance_to_corner = np.linalg.norm(linear[:, None, :] - CORNERS[None], axis=-1).min(axis=1)
    assert distance_to_corner.max() < 0.05


@pytest.mark.slow
def test_diagnosis_finds_the_concave_octant(sphere):
    _, front = sphere
    diagnosis = front.diagnose()
    assert diagnosis.is_concave
    # the interior points found by ε/Chebyshev are unsupported; the corners are supported
    interior = (front.losses > 0.1).all(axis=1) & diagnosis.nondominated
    assert interior.sum() >= 10
    assert diagnosis.unsupported[interior].all()
    assert "concavely" in str(diagnosis)
