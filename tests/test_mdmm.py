"""MDMM against analytic answers and cvxpy."""

import math

import numpy as np
import pytest
import torch

import moopt
from moopt.problems import Circle, FonsecaFleming


def train(theta, mdmm, closure, steps, lr):
    """Descent on theta, ascent on the multipliers, one plain SGD optimizer."""
    optimizer = torch.optim.SGD([theta, *mdmm.parameters()], lr=lr)
    for _ in range(steps):
        objective, values = closure(theta)
        out = mdmm(objective, values)
        optimizer.zero_grad()
        out.lagrangian.backward()
        optimizer.step()
    return out


@pytest.mark.parametrize(
    "problem, damping, init",
    [
        (Circle(), 20.0, lambda n: torch.tensor([0.0, 0.5], dtype=torch.float64).repeat(n, 1)),
        (FonsecaFleming(2), 5.0, lambda n: FonsecaFleming(2).sample_init(n, torch.Generator())),
    ],
    ids=["circle", "fonseca-fleming"],
)
def test_epsilon_constraint_reaches_analytic_point_and_multiplier(problem, damping, init):
    eps = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    theta = torch.nn.Parameter(init(3))
    mdmm = moopt.MDMM([moopt.Constraint("<=", eps, damping=damping, shape=(3,))])

    def closure(t):
        losses = problem.losses(t)
        return losses[:, 0].sum(), [losses[:, 1]]

    out = train(theta, mdmm, closure, steps=3000, lr=0.05)
    final = problem.losses(theta).detach()
    for i, e in enumerate(eps.tolist()):
        exact = problem.epsilon_point(e)
        assert (final[i] - exact.losses).abs().max() < 1e-2, (e, final[i], exact.losses)
        assert out.multipliers[0][i].item() == pytest.approx(exact.multiplier, rel=0.05)
        assert out.infeasibility[0][i].item() < 1e-2


def test_equality_and_greater_equal_constraints_projection():
    # min ||x − a||² s.t. Σx = b  (and s.t. Σx ≥ b with Σa < b): x* = a + (b − Σa)/n.
    a = torch.tensor([0.3, -1.2, 0.5, 2.0], dtype=torch.float64)
    n, b = a.numel(), 3.0
    x_star = a + (b - a.sum()) / n
    for relation, sign in (("==", -1.0), (">=", 1.0)):
        x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
        mdmm = moopt.MDMM([moopt.Constraint(relation, bound=b)])
        out = train(x, mdmm, lambda t: (((t - a) ** 2).sum(), [t.sum()]), steps=1500, lr=0.1)
        torch.testing.assert_close(x.detach(), x_star, atol=1e-6, rtol=0)
        # Stationarity 2(x − a) + λ·∂h/∂x = 0 with h = Σx − b ("==") or b − Σx (">=").
        expected = sign * 2 * (b - a.sum().item()) / n
        assert out.multipliers[0].item() == pytest.approx(expected, rel=1e-5)


def test_inactive_inequality_has_zero_multiplier():
    x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    mdmm = moopt.MDMM([moopt.Constraint("<=", bound=10.0)])
    target = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = train(x, mdmm, lambda t: (((t - target) ** 2).sum(), [t.sum()]), steps=500, lr=0.1)
    torch.testing.assert_close(x.detach(), target)
    assert out.multipliers[0].item() == pytest.approx(0.0, abs=1e-8)


cp = pytest.importorskip("cvxpy")

RNG = np.random.default_rng(0)
N, DIM = 40, 6
A = RNG.normal(size=(N, DIM))
Y = RNG.normal(size=N) + A @ RNG.normal(size=DIM)
C = RNG.normal(size=(2, DIM))
D = RNG.normal(size=2)
FREE = np.linalg.lstsq(A, Y, rcond=None)[0]
RADIUS = 0.25 * float(FREE @ FREE)
LOGIT_X = RNG.normal(size=(60, 3))
LOGIT_Y = (LOGIT_X @ np.array([1.5, -2.0, 0.5]) + 0.7 * RNG.normal(size=60) > 0).astype(float)
CLASS1 = LOGIT_Y == 1


def _solve(problem):
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == "optimal"


def reference_equality_ls():
    x = cp.Variable(DIM)
    _solve(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - Y) / N), [C @ x == D]))
    return x.value


def reference_ball_ls():
    x = cp.Variable(DIM)
    _solve(cp.Problem(cp.Minimize(cp.sum_squares(A @ x - Y) / N), [cp.sum_squares(x) <= RADIUS]))
    return x.value


def _logistic_losses_np(w, b):
    z = LOGIT_X @ w + b
    signed = np.where(LOGIT_Y == 1, -z, z)
    return signed


def logistic_bound():
    # Bound the class-1 loss at 70 % of its unconstrained value, so the constraint binds.
    w, b = cp.Variable(3), cp.Variable()
    signed = cp.multiply(np.where(LOGIT_Y == 1, -1.0, 1.0), LOGIT_X @ w + b)
    _solve(cp.Problem(cp.Minimize(cp.sum(cp.logistic(signed)) / len(LOGIT_Y))))
    class1 = np.logaddexp(0, _logistic_losses_np(w.value, b.value)[CLASS1]).mean()
    return 0.7 * class1


TAU = logistic_bound()


def reference_logistic():
    w, b = cp.Variable(3), cp.Variable()
    signed = cp.multiply(np.where(LOGIT_Y == 1, -1.0, 1.0), LOGIT_X @ w + b)
    losses = cp.logistic(signed)
    constraint = cp.sum(losses[np.flatnonzero(CLASS1)]) / CLASS1.sum() <= TAU
    _solve(cp.Problem(cp.Minimize(cp.sum(losses) / len(LOGIT_Y)), [constraint]))
    return np.concatenate([w.value, [b.value]])


def closure_equality_ls(x):
    a, y, c = (torch.tensor(v) for v in (A, Y, C))
    return ((a @ x - y) ** 2).mean(), [c @ x]


def closure_ball_ls(x):
    a, y = torch.tensor(A), torch.tensor(Y)
    return ((a @ x - y) ** 2).mean(), [(x**2).sum()]


def closure_logistic(params):
    features, labels = torch.tensor(LOGIT_X), torch.tensor(LOGIT_Y)
    z = features @ params[:3] + params[3]
    losses = torch.nn.functional.softplus(torch.where(labels == 1, -z, z))
    return losses.mean(), [losses[torch.tensor(CLASS1)].mean()]


CASES = {
    "equality-ls": (
        reference_equality_ls,
        lambda **kw: moopt.Constraint("==", torch.tensor(D), shape=(2,), **kw),
        closure_equality_ls,
        DIM,
        0.05,
        2000,
    ),
    "ball-ls": (
        reference_ball_ls,
        lambda **kw: moopt.Constraint("<=", RADIUS, **kw),
        closure_ball_ls,
        DIM,
        0.05,
        2000,
    ),
    "logistic-class-bound": (
        reference_logistic,
        lambda **kw: moopt.Constraint("<=", TAU, **kw),
        closure_logistic,
        4,
        0.5,
        4000,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("damping", [None, 0.1, 3.0])
def test_convex_problems_match_cvxpy(case, damping):
    reference, make_constraint, closure, dim, lr, steps = CASES[case]
    expected = reference()
    constraint = make_constraint() if damping is None else make_constraint(damping=damping)
    x = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
    mdmm = moopt.MDMM([constraint])
    train(x, mdmm, closure, steps=steps, lr=lr)
    error = np.linalg.norm(x.detach().numpy() - expected) / np.linalg.norm(expected)
    assert error < 1e-4, error


def test_multiplier_gradient_is_negated_so_sgd_ascends():
    x = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    constraint = moopt.Constraint("<=", bound=1.0, damping=1.0)
    mdmm = moopt.MDMM([constraint])
    out = mdmm((x**2).sum(), [x.sum()])
    out.lagrangian.backward()
    # dL/dλ = h = 1 (violated by 1): the stored gradient is −1, so SGD increases λ.
    assert constraint.multiplier.grad.item() == pytest.approx(-1.0)
    torch.optim.SGD(mdmm.parameters(), lr=0.5).step()
    assert constraint.multiplier.item() == pytest.approx(0.5)


def test_state_dict_round_trip_and_scale_reporting():
    mdmm = moopt.MDMM(
        [moopt.Constraint("<=", 0.5, scale=10.0), moopt.Constraint("==", 0.0, shape=(3,))]
    )
    with torch.no_grad():
        mdmm.constraints[0].multiplier.fill_(0.25)
        mdmm.constraints[1].multiplier.copy_(torch.tensor([1.0, -2.0, 3.0]))
    copy = moopt.MDMM([moopt.Constraint("<=", 0.5, scale=10.0), moopt.Constraint("==", shape=(3,))])
    copy.load_state_dict(mdmm.state_dict())
    for original, loaded in zip(mdmm.parameters(), copy.parameters()):
        torch.testing.assert_close(original, loaded)
    out = copy(torch.tensor(1.0), [torch.tensor(0.7), torch.zeros(3)])
    assert out.multipliers[0].item() == pytest.approx(2.5)  # scale·λ, units of g
    assert out.infeasibility[0].item() == pytest.approx(0.2)


def test_combiner_backward_matches_lagrangian():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    mdmm = moopt.MDMM([moopt.Constraint("<=", 1.0, damping=2.0)])
    losses = torch.stack([(x**2).sum(), x.sum()])
    mdmm.backward(losses, params=[x])
    # L = Σx² + (c/2)(Σx − 1)² with λ = 0: ∂L/∂x = 2x + c(Σx − 1).
    torch.testing.assert_close(x.grad, 2 * x.detach() + 2.0 * (3.0 - 1.0))


def test_slack_inequality_decays_multiplier_to_zero():
    constraint = moopt.Constraint("<=", bound=5.0, damping=2.0)
    mdmm = moopt.MDMM([constraint])
    with torch.no_grad():
        constraint.multiplier.fill_(1.0)
    optimizer = torch.optim.SGD(mdmm.parameters(), lr=0.5)
    for _ in range(200):
        out = mdmm(torch.tensor(0.0), [torch.tensor(0.0)])
        optimizer.zero_grad()
        out.lagrangian.backward()
        optimizer.step()
    assert 0 <= constraint.multiplier.item() < 1e-10
    assert math.isfinite(out.lagrangian.item())


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam])
def test_multipliers_ascend_under_other_optimizers(optimizer_class):
    a = torch.tensor([0.3, -1.2, 0.5, 2.0], dtype=torch.float64)
    x_star = a + (3.0 - a.sum()) / 4
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    mdmm = moopt.MDMM([moopt.Constraint(">=", bound=3.0)])
    optimizer = optimizer_class([x, *mdmm.parameters()], lr=0.01)
    for _ in range(3000):
        out = mdmm(((x - a) ** 2).sum(), [x.sum()])
        optimizer.zero_grad()
        out.lagrangian.backward()
        optimizer.step()
    torch.testing.assert_close(x.detach(), x_star, atol=1e-3, rtol=0)
    assert out.multipliers[0].item() == pytest.approx(2 * (3.0 - a.sum().item()) / 4, rel=1e-2)
