"""Front, indicators and input checks (no training)."""

import numpy as np
import pytest
import torch

from moopt.frontier import (
    Front,
    PointConfig,
    PointRecord,
    PointStore,
    ProblemTraining,
    Run,
    hypervolume,
    igd,
    igd_plus,
    nondominated_mask,
    simplex_lattice,
)
from moopt.frontier.run import build_combiner
from moopt.problems import Circle


@pytest.mark.parametrize("k", [2, 3])
def test_indicators_match_pymoo(k):
    from pymoo.indicators.hv import HV
    from pymoo.indicators.igd import IGD
    from pymoo.indicators.igd_plus import IGDPlus

    rng = np.random.default_rng(k)
    points, reference = rng.random((15, k)), rng.random((40, k))
    ref_point = np.full(k, 1.1)
    assert hypervolume(points, ref_point) == pytest.approx(HV(ref_point=ref_point)(points))
    assert igd(points, reference) == pytest.approx(IGD(reference)(points))
    assert igd_plus(points, reference) == pytest.approx(IGDPlus(reference)(points))


def test_indicator_normalisation_uses_the_reference_range():
    reference = np.array([[0.0, 10.0], [1.0, 0.0]])
    points = np.array([[0.5, 5.0]])
    # normalised: reference (0, 1), (1, 0); point (0.5, 0.5)
    assert igd(points, reference, normalize=True) == pytest.approx(np.sqrt(0.5))
    assert igd_plus(points, reference, normalize=True) == pytest.approx(0.5)


def test_nondominated_mask_by_brute_force():
    rng = np.random.default_rng(1)
    points = rng.random((30, 3))
    dominated = [any(np.all(q <= p) and np.any(q < p) for q in points) for p in points]
    np.testing.assert_array_equal(nondominated_mask(points), ~np.array(dominated))


def test_hypervolume_ignores_points_outside_the_reference_box():
    assert hypervolume([[2.0, 0.0], [0.5, 0.5]], [1.0, 1.0]) == pytest.approx(0.25)
    assert hypervolume([[2.0, 0.0]], [1.0, 1.0]) == 0.0


def test_indicators_reject_bad_input():
    with pytest.raises(ValueError, match="points"):
        hypervolume(np.zeros((0, 2)), [1, 1])
    with pytest.raises(ValueError, match="ref_point"):
        hypervolume(np.zeros((2, 2)), [1, 1, 1])
    with pytest.raises(ValueError, match="reference"):
        igd(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        igd([[np.nan, 0.0]], np.zeros((3, 2)))


def _records():
    configs = [
        PointConfig("linear", 0, weights=(1.0, 0.0)),
        PointConfig("linear", 1, weights=(0.0, 1.0)),
        PointConfig("epsilon", 0, epsilon=(None, 0.5), objective=0, chain=0, step=0),
    ]
    losses = [(0.0, 1.0), (1.0, 0.0), (1.0, 0.5)]
    multipliers = [None, None, (0.6,)]
    return [PointRecord(c, l, m, 0.1, key=c.key()) for c, l, m in zip(configs, losses, multipliers)]


def test_front_arrays_select_and_table():
    front = Front(_records(), loss_names=["ce", "kl"])
    assert front.method_names() == ["linear", "epsilon"]
    np.testing.assert_array_equal(front.epsilon[2], [np.nan, 0.5])
    np.testing.assert_array_equal(front.multipliers[2], [np.nan, 0.6])
    np.testing.assert_array_equal(front.weights[0], [1.0, 0.0])
    assert np.isnan(front.weights[2]).all()
    assert len(front.select("linear")) == 2 and len(front.select(seed=1)) == 1
    assert len(front.select(mask=[True, False, True])) == 2
    table = front.table()
    assert "ce" in table and "lambda=(0.6)" in table and "(dominated)" in table
    assert front.nondominated().tolist() == [True, True, False]
    assert "linear: 2" in repr(front)


def test_front_from_losses_and_bad_input(tmp_path):
    other = Front.from_losses([[0.0, 1.0], [1.0, 0.0]], method="nsga2")
    assert other.method_names() == ["nsga2"] and other.hypervolume([1.1, 1.1]) > 0
    with pytest.raises(ValueError, match="reference"):
        other.igd()
    with pytest.raises(ValueError, match="mask"):
        other.select(mask=[True])
    with pytest.raises(ValueError, match="loss_names"):
        Front(_records(), loss_names=["a"])
    with pytest.raises(ValueError, match="losses"):
        Front.from_losses([1.0, 2.0])
    path = tmp_path / "bad.json"
    path.write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a saved Front"):
        Front.load(path)


def test_simplex_lattice_is_the_das_dennis_lattice():
    lattice = simplex_lattice(3, 4)
    assert lattice.shape == (10, 3)
    np.testing.assert_allclose(lattice.sum(axis=1), 1.0)
    assert len({tuple(row) for row in np.round(lattice * 3).astype(int)}) == 10
    np.testing.assert_allclose(simplex_lattice(2, 3), [[1, 0], [0.5, 0.5], [0, 1]])
    with pytest.raises(ValueError, match="n_points"):
        simplex_lattice(2, 1)


def test_run_builds_each_combiner_and_checks_its_input():
    from moopt.mdmm import MDMM
    from moopt.scalarize import Chebyshev, Linear

    losses = torch.tensor([0.3, 0.7], requires_grad=True)
    linear = PointConfig("linear", 0, weights=(0.25, 0.75))
    run = Run(linear, build_combiner(linear, 1.0, None), 2)
    assert isinstance(run.combiner, Linear)
    assert run.loss(losses).item() == pytest.approx(0.25 * 0.3 + 0.75 * 0.7)
    assert run.multipliers() is None
    cheb = PointConfig("smooth_chebyshev", 0, weights=(0.5, 0.5), ideal=(0.0, 0.0), mu=0.1)
    assert isinstance(build_combiner(cheb, 1.0, None), Chebyshev)
    eps = PointConfig("epsilon", 0, epsilon=(None, 0.5), objective=0)
    run = Run(eps, build_combiner(eps, 10.0, [1.0, 2.0]), 2)
    assert isinstance(run.combiner, MDMM) and run.multipliers() == [0.0]
    # L1 + ψ(h, 0) with h = 2·(0.7 − 0.5), c = 10: ψ = c·h²/2
    assert run.loss(losses).item() == pytest.approx(0.3 + 10 * 0.4**2 / 2)
    with pytest.raises(ValueError, match="3 task losses"):
        run.loss(torch.ones(3))
    with pytest.raises(TypeError, match="nn.Module"):
        run.warm_start(torch.ones(2))
    assert run.warm_start(torch.nn.Linear(1, 1)) is False


def test_problem_training_and_store_reject_bad_input(tmp_path):
    with pytest.raises(TypeError, match="problem"):
        ProblemTraining(object())
    with pytest.raises(ValueError, match="steps"):
        ProblemTraining(Circle(), steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        ProblemTraining(Circle(), optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr"):
        ProblemTraining(Circle(), lr=-1.0)
    with pytest.raises(TypeError, match="store"):
        PointStore(3)
