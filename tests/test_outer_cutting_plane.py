"""CuttingPlaneStep: sign steps until bracketed, then the tangents' intersection."""

import math

import pytest
import torch

from moopt.hypergrad import (
    CuttingPlaneStep,
    HypergradResult,
    Schedule,
    SignStep,
    tune,
)


def _v(x, vertex=0.37, left=-2.0, right=0.5):
    """A V with straight arms: slope ``left`` below the vertex, ``right`` above."""
    return (left * (x - vertex), left) if x < vertex else (right * (x - vertex), right)


def _drive(outer, f, steps, init=0.5, bounds=(0.0, 1.0)):
    schedule = Schedule(init, steps=10, bounds=bounds, dtype=torch.float64)
    visited = []
    for _ in range(steps):
        x = float(schedule.raw)
        value, slope = f(x)
        visited.append(x)
        grads = {"a": torch.full((1,), slope, dtype=torch.float64)}
        outer.step({"a": schedule}, grads, val_loss=value)
    return visited, float(schedule.raw)


def test_a_v_is_solved_once_bracketed():
    visited, nxt = _drive(CuttingPlaneStep(fraction=0.1), _v, 3)
    # 0.5 (rising) -> 0.4 (still rising, the best) -> 0.3 (falling): bracket [0.3, 0.4]
    assert visited == pytest.approx([0.5, 0.4, 0.3], abs=1e-12)
    assert nxt == pytest.approx(0.37, abs=1e-12)


def test_sign_steps_need_more_runs_on_the_same_v():
    visited, _ = _drive(SignStep(fraction=0.1), _v, 4)
    # 0.5 -> 0.4 -> 0.3 (rising twice, then falling: the step halves) -> 0.35
    assert visited == pytest.approx([0.5, 0.4, 0.3, 0.35], abs=1e-12)
    assert min(abs(x - 0.37) for x in visited) > 0.01


def test_smooth_convex_function_converges_and_stays_in_the_bracket():
    centre = 0.6283

    def f(x):
        return (x - centre) ** 2 + 0.3 * (x - centre) ** 4, 2 * (x - centre) + 1.2 * (
            x - centre
        ) ** 3

    visited, nxt = _drive(CuttingPlaneStep(fraction=0.2), f, 12)
    assert abs(nxt - centre) < 1e-4
    assert all(0.0 <= x <= 1.0 for x in visited)


def test_nonconvex_points_fall_back_to_bisection():
    outer = CuttingPlaneStep(fraction=0.1)
    # tangents that meet outside the bracket [0.2, 0.4]
    outer.points = [(0.2, 1.0, -0.1), (0.4, 0.0, 10.0)]
    assert outer._next(0.1) == pytest.approx(0.3)


def test_bounds_clamp_and_zero_gradient_stays():
    _, nxt = _drive(CuttingPlaneStep(fraction=0.5), lambda x: (x, 1.0), 1, init=0.2)
    assert nxt == 0.0
    _, nxt = _drive(CuttingPlaneStep(fraction=0.5), lambda x: (x, 0.0), 1, init=0.2)
    assert nxt == pytest.approx(0.2)


def test_bad_input():
    with pytest.raises(ValueError, match="fraction"):
        CuttingPlaneStep(fraction=0)
    with pytest.raises(TypeError, match="step_size"):
        CuttingPlaneStep(step_size="big")
    outer = CuttingPlaneStep()
    windows = Schedule(0.5, steps=10, windows=2, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="exactly one scalar hyperparameter"):
        outer.validate({"a": windows})
    one = Schedule(0.5, steps=10, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="exactly one scalar hyperparameter"):
        outer.validate({"a": one, "b": Schedule(0.5, steps=10, bounds=(0.0, 1.0))})
    with pytest.raises(ValueError, match="needs the finite validation loss"):
        outer.step({"a": one}, {"a": torch.ones(1)})
    with pytest.raises(ValueError, match="no finite search range"):
        outer.validate({"a": Schedule(0.5, steps=10)})


def test_tune_passes_the_validation_loss_and_resumes(tmp_path):
    def run(checkpoint, stop):
        schedule = Schedule(0.5, steps=4, bounds=(0.0, 1.0), dtype=torch.float64)

        def objective(k):
            value, slope = _v(float(schedule.raw))
            return HypergradResult(
                val_loss=torch.tensor(value, dtype=torch.float64),
                hypergrads={"a": torch.full((1,), slope, dtype=torch.float64)},
                value_hypergrads={},
                state=None,
            )

        history = tune(
            objective,
            {"a": schedule},
            stop,
            outer=CuttingPlaneStep(fraction=0.1),
            checkpoint=checkpoint,
            progress=False,
        )
        return history, float(schedule.raw)

    whole, end = run(None, 4)
    run(tmp_path / "ck.pt", 2)
    resumed, end_resumed = run(tmp_path / "ck.pt", 4)
    assert whole.val_losses == resumed.val_losses
    assert end == end_resumed == pytest.approx(0.37, abs=1e-12)
    assert math.isclose(whole.val_losses[-1], 0.0, abs_tol=1e-12)
