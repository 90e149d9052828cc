"""Noisy quadratic model: exact moments vs Monte Carlo, greedy optimality, short-horizon bias."""

import pytest
import torch

from moopt.hypergrad import Schedule, SignStep, forward_unroll, tune
from moopt.hypergrad.noisy_quadratic import NoisyQuadratic, greedy_schedule, greedy_step


def small_problem() -> NoisyQuadratic:
    return NoisyQuadratic(
        curvatures=[2.0, 1.0, 0.3, 0.05],
        noise=[0.5, 2.0, 1.0, 4.0],
        init_mean=[1.0, -2.0, 0.5, 3.0],
        init_var=[0.5, 0.1, 2.0, 1.0],
    )


def test_moment_recursion_matches_monte_carlo():
    problem = small_problem()
    steps = 30
    lrs = torch.linspace(0.6, 0.1, steps, dtype=torch.float64)
    momenta = torch.linspace(0.0, 0.8, steps, dtype=torch.float64)
    state, per_step = problem.run(lrs, momenta)
    n_runs = 200_000
    theta = problem.simulate(lrs, momenta, n_runs, torch.Generator().manual_seed(0))
    mean, second = theta.mean(0), (theta**2).mean(0)
    se_mean = theta.std(0) / n_runs**0.5
    se_second = (theta**2).std(0) / n_runs**0.5
    assert torch.all((mean - state["mean_theta"]).abs() < 5 * se_mean)
    assert torch.all((second - state["theta_sq"]).abs() < 5 * se_second)
    assert torch.allclose(per_step[-1], problem.loss_per_direction(state))
    assert torch.allclose(
        problem.expected_loss(state), 0.5 * (problem.curvatures * second).sum(), rtol=0.02
    )


def test_moment_recursion_velocity_moments_match_monte_carlo():
    problem = small_problem()
    lrs = torch.full((12,), 0.4, dtype=torch.float64)
    state, _ = problem.run(lrs, 0.7)
    # velocity after the last step: rerun the simulation one step shorter and difference it
    n_runs = 200_000
    theta = problem.simulate(lrs, 0.7, n_runs, torch.Generator().manual_seed(1))
    theta_prev = problem.simulate(lrs[:-1], 0.7, n_runs, torch.Generator().manual_seed(1))
    velocity = theta - theta_prev
    for name, sample in (
        ("mean_velocity", velocity),
        ("velocity_sq", velocity**2),
        ("theta_velocity", theta * velocity),
    ):
        se = sample.std(0) / n_runs**0.5
        assert torch.all((sample.mean(0) - state[name]).abs() < 5 * se + 1e-12), name


def test_step_is_differentiable_and_matches_finite_differences():
    problem = NoisyQuadratic.wu2018(dim=50)
    steps = 20
    lr = Schedule([0.5, 0.3], steps=steps, windows=2, dtype=torch.float64)
    momentum = Schedule(0.6, steps=steps, dtype=torch.float64)
    schedules = {"lr": lr, "momentum": momentum}
    result = forward_unroll(
        problem.step, problem.expected_loss, problem.initial_state(), schedules, [None] * steps
    )

    def loss_at(lrs: torch.Tensor, mu: float) -> float:
        state, _ = problem.run(lrs.repeat_interleave(steps // 2), mu)
        return float(problem.expected_loss(state))

    eps = 1e-6
    base = lr.values()
    for w in range(2):
        delta = torch.zeros(2, dtype=torch.float64)
        delta[w] = eps
        fd = (loss_at(base + delta, 0.6) - loss_at(base - delta, 0.6)) / (2 * eps)
        assert result.hypergrads["lr"][w].item() == pytest.approx(fd, rel=1e-6)
    fd_mu = (loss_at(base, 0.6 + eps) - loss_at(base, 0.6 - eps)) / (2 * eps)
    assert result.hypergrads["momentum"][0].item() == pytest.approx(fd_mu, rel=1e-6)


def next_loss(problem, state, lr, mu):
    t = torch.tensor
    new = problem.step(
        state, {"lr": t(lr, dtype=torch.float64), "momentum": t(mu, dtype=torch.float64)}, None
    )
    return float(problem.expected_loss(new))


def test_greedy_step_is_one_step_optimal():
    from scipy.optimize import minimize, minimize_scalar

    problem = NoisyQuadratic.wu2018(dim=200)
    state, _ = problem.run(torch.full((5,), 0.8, dtype=torch.float64), 0.5)
    lr, mu = greedy_step(problem, state)
    reference = minimize(
        lambda x: next_loss(problem, state, x[0], x[1]),
        x0=[0.5, 0.5],
        bounds=[(0.0, None), (0.0, 0.999)],
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    assert next_loss(problem, state, lr, mu) <= reference.fun + 1e-9
    assert lr == pytest.approx(reference.x[0], rel=1e-4)
    assert mu == pytest.approx(reference.x[1], rel=1e-4, abs=1e-6)

    lr_fixed, mu_fixed = greedy_step(problem, state, momentum=0.9)
    scalar = minimize_scalar(
        lambda a: next_loss(problem, state, a, 0.9),
        bounds=(0, 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert mu_fixed == 0.9
    assert lr_fixed == pytest.approx(scalar.x, rel=1e-5)


def test_greedy_schedule_shapes_and_errors():
    problem = small_problem()
    lrs, momenta = greedy_schedule(problem, 7)
    assert lrs.shape == momenta.shape == (7,)
    assert bool((lrs >= 0).all()) and bool(((momenta >= 0) & (momenta <= 0.999)).all())
    with pytest.raises(ValueError, match="steps"):
        greedy_schedule(problem, 0)
    with pytest.raises(ValueError, match="momentum"):
        greedy_schedule(problem, 5, momentum=1.5)


def test_bad_problem_input():
    with pytest.raises(ValueError, match="curvatures must be positive"):
        NoisyQuadratic([1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="noise must have one entry per direction"):
        NoisyQuadratic([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="init_var must be non-negative"):
        NoisyQuadratic([1.0], [1.0], init_var=[-1.0])
    with pytest.raises(TypeError, match="curvatures"):
        NoisyQuadratic("abc", [1.0])
    with pytest.raises(ValueError, match="dim"):
        NoisyQuadratic.wu2018(dim=0)
    with pytest.raises(ValueError, match="momenta"):
        small_problem().run([0.1, 0.2], [0.1, 0.2, 0.3])


@pytest.mark.slow
def test_long_horizon_fds_beats_greedy_five_fold():
    """Wu et al.'s short-horizon bias on the NQM (n = 1000, T = 250, SGD with momentum)."""
    problem = NoisyQuadratic.wu2018()
    steps = 250
    greedy_lrs, greedy_momenta = greedy_schedule(problem, steps)
    greedy_state, _ = problem.run(greedy_lrs, greedy_momenta)
    greedy_loss = float(problem.expected_loss(greedy_state))

    lr = Schedule(0.0, steps=steps, windows=5, bounds=(0.0, 2.0), dtype=torch.float64)
    momentum = Schedule(0.0, steps=steps, windows=5, bounds=(0.0, 0.99), dtype=torch.float64)
    schedules = {"lr": lr, "momentum": momentum}

    def objective(k: int):
        return forward_unroll(
            problem.step, problem.expected_loss, problem.initial_state(), schedules, [None] * steps
        )

    tune(objective, schedules, 10, outer=SignStep(fraction=0.25), progress=False)
    state, _ = problem.run(lr.per_step(), momentum.per_step())
    fds_loss = float(problem.expected_loss(state))
    assert fds_loss * 5 <= greedy_loss, (fds_loss, greedy_loss)
