"""Acceptance of moopt.frontier.trace on the two-objective toy problems (issue 5)."""

import numpy as np
import pytest
import torch

from moopt.frontier import Front, ProblemTraining, hypervolume, trace
from moopt.problems import Circle, FonsecaFleming

REF = [1.1, 1.1]


@pytest.fixture(scope="module", params=["circle", "fonseca_fleming"])
def concave_sweep(request):
    problem = Circle() if request.param == "circle" else FonsecaFleming()
    front = trace(ProblemTraining(problem, steps=300), methods=["linear", "epsilon"], n_points=11)
    return problem, front


def _exact_epsilon(problem, front):
    return np.array([problem.epsilon_point(e[1]).losses.numpy() for e in front.epsilon])


def test_epsilon_sweep_matches_analytic_points(concave_sweep):
    problem, front = concave_sweep
    eps = front.select("epsilon")
    assert len(eps) == 11
    exact = _exact_epsilon(problem, eps)
    assert np.abs(eps.losses - exact).max() < 1e-2
    assert eps.hypervolume(REF) >= 0.99 * hypervolume(exact, REF)


def test_epsilon_multipliers_are_the_front_slope(concave_sweep):
    problem, front = concave_sweep
    eps = front.select("epsilon")
    inner = slice(1, -1)  # the ends have infinite or zero slope
    exact = [problem.epsilon_point(e).multiplier for e in eps.epsilon[inner, 1]]
    np.testing.assert_allclose(eps.multipliers[inner, 1], exact, rtol=0.1, atol=0.02)


def test_linear_sweep_finds_only_the_ends(concave_sweep):
    problem, front = concave_sweep
    exact = _exact_epsilon(problem, front.select("epsilon"))
    linear = front.select("linear")
    assert len(linear) == 11
    assert linear.hypervolume(REF) <= 0.6 * hypervolume(exact, REF)


@pytest.fixture(scope="module")
def convex_sweep():
    problem = Circle(convex=True)
    front = trace(ProblemTraining(problem, steps=300), methods=["linear", "epsilon"], n_points=11)
    return problem, front


def test_convex_circle_both_sweeps_reach_their_exact_points(convex_sweep):
    problem, front = convex_sweep
    eps = front.select("epsilon")
    exact_eps = _exact_epsilon(problem, eps)
    assert eps.hypervolume(REF) >= 0.99 * hypervolume(exact_eps, REF)
    linear = front.select("linear")
    # exact minimiser of w1 L1 + w2 L2 on the front (1-L1)^2 + (1-L2)^2 = 1
    w = linear.weights
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    exact_linear = 1.0 - unit
    assert linear.hypervolume(REF) >= 0.99 * hypervolume(exact_linear, REF)


def test_batched_path_follows_the_same_iterates_as_runs_one_by_one():
    training = ProblemTraining(FonsecaFleming(), steps=60)
    kwargs = dict(methods=["linear", "chebyshev", "smooth_chebyshev", "epsilon"], n_points=3)
    batched = trace(training, batched=True, **kwargs)
    single = trace(training, batched=False, **kwargs)
    # the same runs, up to float rounding (a batched sum reorders additions)
    assert batched.methods.tolist() == single.methods.tolist()
    np.testing.assert_allclose(batched.epsilon, single.epsilon, rtol=1e-7)
    np.testing.assert_allclose(batched.losses, single.losses, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(batched.multipliers, single.multipliers, rtol=1e-6, atol=1e-9)


def test_user_training_function_with_seeds_and_warm_start():
    problem = Circle()
    calls = []

    def train(run):
        theta = torch.nn.Linear(2, 1, bias=False).double()
        warm = run.warm_start(theta)
        calls.append((run.method, warm))
        opt = torch.optim.Adam(run.parameters(theta), lr=0.05)
        for _ in range(100):
            opt.zero_grad()
            run.loss(problem.losses(theta.weight[0])).backward()
            opt.step()
        return problem.losses(theta.weight[0]).detach()

    front = trace(train, methods=["epsilon"], n_points=3, seeds=[3, 4], n_objectives=2)
    assert len(front.select("anchor")) == 4 and len(front.select("epsilon")) == 6
    assert set(front.seeds.tolist()) == {3, 4}
    assert all(warm for method, warm in calls if method == "epsilon")
    assert not any(warm for method, warm in calls if method == "anchor")


def test_front_save_load_roundtrip(tmp_path, concave_sweep):
    _, front = concave_sweep
    path = tmp_path / "front.json"
    front.save(path)
    loaded = Front.load(path)
    np.testing.assert_array_equal(loaded.losses, front.losses)
    np.testing.assert_array_equal(loaded.multipliers, front.multipliers)
    assert loaded.configs == front.configs
    np.testing.assert_array_equal(loaded.reference, front.reference)
    assert loaded.hypervolume(REF) == front.hypervolume(REF)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(methods="nope"), ValueError, "methods"),
        (dict(n_points=1), ValueError, "n_points"),
        (dict(seeds=0), ValueError, "seeds"),
        (dict(objective=2), ValueError, "objective"),
        (dict(weights=[[1.0, -1.0]]), ValueError, "weights"),
        (dict(epsilons=[[0.1, 0.2]]), ValueError, "epsilons"),
        (dict(executor=object()), TypeError, "executor"),
        (dict(loss_names=["a"]), ValueError, "loss_names"),
        (dict(ideal=[0.0]), ValueError, "ideal"),
    ],
)
def test_trace_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        trace(ProblemTraining(Circle(), steps=1), **kwargs)


def test_progress_bar_and_explicit_epsilons(capsys):
    front = trace(
        ProblemTraining(FonsecaFleming(), steps=20),
        methods="epsilon",
        epsilons=[[0.2], [0.5]],
        progress=True,
    )
    assert front.epsilon[front.methods == "epsilon", 1].tolist() == [0.2, 0.5]
    assert "trace" in capsys.readouterr().err


def test_trace_needs_n_objectives_for_a_function():
    with pytest.raises(ValueError, match="n_objectives"):
        trace(lambda run: [0.0, 0.0])
    with pytest.raises(TypeError, match="target"):
        trace(42)


def test_training_function_returning_wrong_losses_is_named():
    with pytest.raises(RuntimeError, match="expected 2"):
        trace(lambda run: [0.0, 0.0, 0.0], methods="linear", n_points=2, n_objectives=2)


def test_diagnosis_marks_the_linear_gap_as_unsupported(concave_sweep):
    _, front = concave_sweep
    diagnosis = front.diagnose()
    eps = front.methods == "epsilon"
    interior = eps & (front.losses > 0.05).all(axis=1)
    assert interior.sum() >= 7
    assert diagnosis.unsupported[interior].all()
    assert not diagnosis.unsupported[front.methods == "linear"].any()
    assert diagnosis.gaps and sum(g.unsupported_inside for g in diagnosis.gaps) >= interior.sum()
    report = str(diagnosis)
    assert "concavely" in report and "use epsilon" in report.lower()


def test_convex_circle_diagnosis_reports_nothing_unsupported(convex_sweep):
    _, front = convex_sweep
    diagnosis = front.diagnose()
    assert not diagnosis.unsupported.any()
    assert not diagnosis.failed and not diagnosis.gaps
    assert "linear weights suffice" in str(diagnosis)
