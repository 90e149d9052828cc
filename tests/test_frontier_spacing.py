"""ε bounds evenly in arc length of the front (``trace(epsilon_spacing="arc")``)."""

import math

import numpy as np
import pytest

from moopt.frontier import ProblemTraining, hypervolume, trace
from moopt.frontier._spacing import arc_length_epsilons, pilot_epsilons, pilot_size
from moopt.problems import Circle, SphereOctant

REF = (1.1, 1.1)
ARC = math.pi / 2  # length of both circles' fronts, ideal (0, 0) and nadir (1, 1)


def _exact(problem, bounds):
    return np.array([problem.epsilon_point(max(b, 1e-12)).losses.numpy() for b in bounds])


def _gaps(points):
    return np.hypot(*np.diff(points[np.argsort(points[:, 1])], axis=0).T)


@pytest.mark.parametrize("convex", [False, True])
@pytest.mark.parametrize("n_points", [11, 100])
def test_bounds_read_off_exact_pilot_points_are_even_in_arc_length(convex, n_points):
    problem = Circle(convex=convex)
    pilot = _exact(problem, np.r_[0.0, pilot_epsilons(0.0, 1.0, n_points), 1.0])
    bounds = arc_length_epsilons(pilot[:, 0], pilot[:, 1], (0.0, 0.0), (1.0, 1.0), n_points)
    assert bounds[0] == 0.0 and bounds[-1] == 1.0 and (np.diff(bounds) > 0).all()
    points = _exact(problem, bounds)
    step = ARC / (n_points - 1)
    # Interior steps within 8 % of the chord of an exact arc step (the 3-point pilot of
    # an 11-point sweep is off by 7 % on its first); the end steps take up the rest of the
    # curve's arc, which differs from the circle's, and are shorter where the spline
    # overshoots the end it is tangent to (see MONOTONE_TOLERANCE).
    chord = 2 * math.sin(step / 2)
    gaps = _gaps(points)
    np.testing.assert_allclose(gaps[1:-1], chord, rtol=0.08)
    assert gaps[[0, -1]].max() <= 1.08 * chord
    arc_even = problem.pareto_front(n_points).numpy()
    assert hypervolume(points, REF) >= 0.999 * hypervolume(arc_even, REF)
    even = _exact(problem, np.linspace(0.0, 1.0, n_points))
    assert _gaps(even).max() > 1.5 * step  # what the arc spacing repairs


def test_dominated_and_repeated_points_are_dropped_and_too_few_fall_back_to_even():
    objective = np.array([1.0, 0.6, 0.6, 0.9, 0.0])
    constrained = np.array([0.0, 0.8, 0.8, 0.9, 1.0])  # (0.9, 0.9) is dominated
    bounds = arc_length_epsilons(objective, constrained, (0.0, 0.0), (1.0, 1.0), 5)
    assert (np.diff(bounds) >= 0).all() and bounds[0] == 0.0 and bounds[-1] == 1.0
    front_only = arc_length_epsilons(
        np.array([1.0, 0.6, 0.0]), np.array([0.0, 0.8, 1.0]), (0.0, 0.0), (1.0, 1.0), 5
    )
    np.testing.assert_array_equal(bounds, front_only)  # as if the two were never given
    single = arc_length_epsilons(np.ones(3), np.zeros(3), (0.0, 0.0), (1.0, 1.0), 4)
    np.testing.assert_allclose(single, np.linspace(0.0, 1.0, 4))


def test_pilot_size_grows_like_the_square_root():
    assert [pilot_size(n) for n in (2, 11, 100, 400)] == [3, 3, 10, 20]
    np.testing.assert_allclose(pilot_epsilons(0.0, 1.0, 11), [0.25, 0.5, 0.75])


@pytest.fixture(scope="module")
def arc_sweep():
    problem = Circle()
    training = ProblemTraining(problem, steps=300)
    # Arc spacing puts the 10th of 11 bounds at ε ≈ 0.988, where the front's curvature,
    # -(1 − ε²)^-1.5 ≈ -260, calls for a damping above 260 (see trace's ``damping``).
    front = trace(training, methods="epsilon", n_points=11, epsilon_spacing="arc", damping=1e3)
    return problem, front


def test_arc_sweep_on_the_concave_circle_is_even_and_exact(arc_sweep):
    problem, front = arc_sweep
    eps = front.select("epsilon")
    assert len(eps) == 11  # the pilot runs are not points of the front
    exact = _exact(problem, eps.epsilon[:, 1])
    assert np.abs(eps.losses - exact).max() < 1e-2
    assert eps.hypervolume(REF) >= 0.99 * hypervolume(exact, REF)
    # Steps in the anchors' normalised units: the 8 % of an exact 3-point pilot (above),
    # plus 2 % for run errors below 1e-2 on steps of 0.16 (measured: 4 %; even ε: 177 %).
    low, high = front.ideal, front.nadir
    gaps = _gaps((eps.losses - low) / (high - low))
    np.testing.assert_allclose(gaps, gaps.mean(), rtol=0.1)


def test_arc_sweep_resumes_from_its_store_without_running_anything(tmp_path):
    calls = []
    training = ProblemTraining(Circle(), steps=60)

    def train(run):
        calls.append(run.method)
        return training(run)

    kwargs = dict(
        methods="epsilon",
        n_points=4,
        epsilon_spacing="arc",
        n_objectives=2,
        seeds=2,
        store=tmp_path,
    )
    first = trace(train, **kwargs)
    assert calls.count("epsilon") == 2 * (pilot_size(4) + 4) and calls.count("anchor") == 4
    assert len(first.select("epsilon")) == 8
    calls.clear()
    again = trace(train, **kwargs)
    assert calls == []
    np.testing.assert_array_equal(again.losses, first.losses)
    assert again.configs == first.configs


def test_warm_lr_is_the_learning_rate_of_warm_started_runs():
    frozen = ProblemTraining(Circle(), steps=200, warm_lr=1e-12)
    front = trace(frozen, methods="epsilon", n_points=3)
    anchor = front.select("anchor").losses[1]  # the anchor of the constrained loss
    np.testing.assert_allclose(front.select("epsilon").losses, [anchor] * 3, atol=1e-9)
    assert "warm_lr=1e-12" in repr(frozen)
    assert "warm_lr" not in repr(ProblemTraining(Circle()))  # store keys of old sweeps hold


@pytest.mark.parametrize(
    ("target", "kwargs", "match"),
    [
        (Circle(), dict(epsilon_spacing="uniform"), "epsilon_spacing must be one of"),
        (Circle(), dict(epsilon_spacing=None), "epsilon_spacing must be one of"),
        (SphereOctant(), dict(epsilon_spacing="arc"), "two losses"),
        (Circle(), dict(epsilon_spacing="arc", epsilons=[0.2, 0.5]), "explicit epsilons"),
    ],
)
def test_bad_spacing_is_rejected(target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        trace(ProblemTraining(target, steps=1), methods="epsilon", **kwargs)


def test_bad_warm_lr_is_rejected():
    with pytest.raises(ValueError, match="warm_lr"):
        ProblemTraining(Circle(), warm_lr=0.0)
