"""Properties of the gradient-level combiners against independent references.

References: cvxpy (min-norm point, dual-cone projections, CAGrad's primal), scipy
(the Nash / FairGrad equations), a direct J-space implementation of PCGrad's Algorithm 1,
finite differences (gradcheck of the weights), and the defining identities of each method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moopt import _solvers, _two_tasks
from moopt import gradsurgery as gs

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")

DETERMINISTIC = {
    "MGDA": gs.MGDA,
    "CAGrad": gs.CAGrad,
    "NashMTL": lambda: gs.NashMTL(max_norm=0.0),
    "IMTLG": gs.IMTLG,
    "AlignedMTL": gs.AlignedMTL,
    "UPGrad": gs.UPGrad,
    "DualProj": gs.DualProj,
    "ConFIG": gs.ConFIG,
    "FairGrad": lambda: gs.FairGrad(alpha=2.0),
}
RANDOM = {
    "PCGrad": lambda: gs.PCGrad(generator=torch.Generator().manual_seed(0)),
    "GradVac": lambda: gs.GradVac(generator=torch.Generator().manual_seed(0)),
    "GradDrop": lambda: gs.GradDrop(generator=torch.Generator().manual_seed(0)),
}
ALL = {**DETERMINISTIC, **RANDOM}
NEEDS_FULL_RANK = {"NashMTL", "FairGrad"}


def make_jacobian(
    n_tasks: int, dim: int, rank: int, scale: float, seed: int, shared: float = 0.0
) -> torch.Tensor:
    """A K×D float64 matrix of the given rank and scale, optionally with a common component."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(n_tasks, rank, generator=generator, dtype=torch.float64)
    right = torch.randn(rank, dim, generator=generator, dtype=torch.float64)
    jacobian = left @ right
    if shared:
        common = torch.randn(1, rank, generator=generator, dtype=torch.float64) @ right
        jacobian = jacobian + shared * common
    return scale * jacobian / jacobian.norm()


jacobian_cases = st.builds(
    lambda k, rank_gap, scale, seed, shared: make_jacobian(
        k, 12, max(1, k - rank_gap), scale, seed, shared
    ),
    st.integers(1, 6),
    st.integers(0, 3),
    st.sampled_from([1e-3, 1.0, 1e3]),
    st.integers(0, 10_000),
    st.sampled_from([0.0, 1.0, -1.0]),
)


@pytest.mark.parametrize("name", sorted(ALL))
@settings(max_examples=8, deadline=None)
@given(jacobian=jacobian_cases)
def test_finite_update_of_the_right_shape(name: str, jacobian: torch.Tensor) -> None:
    full_rank = int(torch.linalg.matrix_rank(jacobian)) == jacobian.shape[0]
    if name in NEEDS_FULL_RANK and not full_rank:
        return
    update = ALL[name]().aggregate(jacobian)
    assert update.shape == (jacobian.shape[1],)
    assert update.dtype == jacobian.dtype
    assert bool(torch.isfinite(update).all())


@pytest.mark.parametrize("name", ["MGDA", "UPGrad", "DualProj"])
@settings(max_examples=10, deadline=None)
@given(jacobian=jacobian_cases)
def test_non_conflicting(name: str, jacobian: torch.Tensor) -> None:
    update = DETERMINISTIC[name]().aggregate(jacobian)
    tolerance = 1e-8 * float(jacobian.norm()) ** 2
    assert float((jacobian @ update).min()) >= -tolerance


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
@pytest.mark.parametrize("seed", [0, 1])
def test_permutation_equivariance(name: str, seed: int) -> None:
    jacobian = make_jacobian(5, 12, 5, 1.0, seed, shared=-0.5)
    permutation = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    gramian = jacobian @ jacobian.T
    weights = DETERMINISTIC[name]().weights(gramian)
    permuted = DETERMINISTIC[name]().weights(gramian[permutation][:, permutation])
    torch.testing.assert_close(permuted, weights[permutation], rtol=1e-7, atol=1e-9)


def cvxpy_min_norm(jacobian: np.ndarray) -> np.ndarray:
    cp = pytest.importorskip("cvxpy")
    w = cp.Variable(jacobian.shape[0])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(jacobian.T @ w)), [w >= 0, cp.sum(w) == 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return jacobian.T @ w.value


@pytest.mark.parametrize(
    ("n_tasks", "rank", "shared"), [(2, 2, 0.0), (4, 4, 1.0), (6, 3, -1.0), (5, 5, -0.3)]
)
def test_mgda_is_the_min_norm_point_of_the_hull(n_tasks: int, rank: int, shared: float) -> None:
    jacobian = make_jacobian(n_tasks, 12, rank, 3.0, n_tasks, shared)
    expected = cvxpy_min_norm(jacobian.numpy())
    update = gs.MGDA().aggregate(jacobian).numpy()
    assert np.linalg.norm(update - expected) <= 1e-6 * float(jacobian.norm())


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalisations_solve_on_scaled_gradients(normalization: str) -> None:
    jacobian = make_jacobian(4, 12, 4, 1.0, 3, shared=0.5) * torch.tensor(
        [[1.0], [10.0], [0.1], [3.0]], dtype=torch.float64
    )
    losses = torch.tensor([0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    norms = jacobian.norm(dim=1)
    divisor = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    scaled = (jacobian / divisor[:, None]).numpy()
    cp = pytest.importorskip("cvxpy")
    w = cp.Variable(4)
    cp.Problem(cp.Minimize(cp.sum_squares(scaled.T @ w)), [w >= 0, cp.sum(w) == 1]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    weights = gs.MGDA(normalization).weights(jacobian @ jacobian.T, losses=losses)
    np.testing.assert_allclose(weights.numpy(), w.value, atol=1e-6)
    update = gs.MGDA(normalization).aggregate(jacobian, losses=losses)
    torch.testing.assert_close(update, weights @ jacobian)


def test_mgda_loss_normalisation_needs_positive_losses() -> None:
    gramian = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs the loss values"):
        gs.MGDA("loss").weights(gramian)
    with pytest.raises(ValueError, match="positive losses"):
        gs.MGDA("loss").weights(gramian, losses=torch.tensor([1.0, -1.0]))


def test_mgda_backward_records_losses_for_the_normalisers() -> None:
    params = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    losses = torch.stack([(params**2).sum(), (params - 1.0).abs().sum() * 3.0])
    jacobian = torch.stack(
        [torch.autograd.grad(loss, params, retain_graph=True)[0] for loss in losses]
    )
    expected = gs.MGDA("loss+").aggregate(jacobian, losses=losses.detach())
    gs.MGDA("loss+").backward(losses, [params])
    torch.testing.assert_close(params.grad, expected)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_tasks", [2, 4])  # K = 2 has a closed form for interior optima
def test_cagrad_is_the_exact_conflict_averse_direction(c: float, seed: int, n_tasks: int) -> None:
    cp = pytest.importorskip("cvxpy")
    jacobian = make_jacobian(n_tasks, 12, n_tasks, 2.0, seed, shared=-0.3 * seed)
    numpy_jacobian = jacobian.numpy()
    mean = numpy_jacobian.mean(axis=0)
    radius = c * np.linalg.norm(mean)
    d, t = cp.Variable(12), cp.Variable()
    cp.Problem(cp.Maximize(t), [numpy_jacobian @ d >= t, cp.norm(d - mean) <= radius]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    update = gs.CAGrad(c=c, rescale=0).aggregate(jacobian).numpy()
    # Clarabel stops near 1e-7 here (it warns "may be inaccurate"); moopt's worst-task
    # improvement is at least as good as its answer, and the directions agree to 1e-5.
    assert (numpy_jacobian @ update).min() >= t.value - 1e-10
    assert np.linalg.norm(update - d.value) <= 1e-5 * np.linalg.norm(d.value)
    # The guarantee: within the ball, and no worse than the mean gradient for any task.
    assert np.linalg.norm(update - mean) <= radius * (1 + 1e-9)
    assert (numpy_jacobian @ update).min() >= (numpy_jacobian @ mean).min() - 1e-9
    for rescale, divisor in [(1, 1 + c**2), (2, 1 + c)]:
        rescaled = gs.CAGrad(c=c, rescale=rescale).aggregate(jacobian).numpy()
        np.testing.assert_allclose(rescaled * divisor, update, rtol=1e-9, atol=1e-12)


def test_cagrad_two_task_closed_form_is_taken_and_meets_the_kkt_conditions() -> None:
    jacobian = make_jacobian(2, 12, 2, 2.0, 2, shared=-0.6)  # an interior optimum for c = 0.9
    gramian = jacobian @ jacobian.T
    scale = gramian.diagonal().max()
    anchor = torch.full((2,), 0.5, dtype=torch.float64)
    radius = 0.9 * (anchor @ gramian @ anchor).sqrt()
    g_hat, r_hat = gramian / scale, radius / scale.sqrt()
    closed = _two_tasks.cagrad(g_hat, 0.9, 1e-10)
    assert closed is not None
    lam = float((closed - anchor).sum())  # weights are b + λ w with w on the simplex
    w = (closed - anchor) / lam
    tau = float((g_hat @ closed)[0])
    assert _solvers._cagrad_kkt(g_hat, anchor, float(r_hat), w, lam, tau) <= 1e-12
    torch.testing.assert_close(gs.CAGrad(c=0.9, rescale=0).weights(gramian), closed)


def _pareto_stationary_jacobians() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    g, h = torch.randn(2, 12, generator=generator, dtype=torch.float64)
    zero = torch.zeros(12, dtype=torch.float64)
    return {
        "K=2, second zero": torch.stack([g, zero]),
        "K=2, first zero": torch.stack([zero, g]),
        "K=3, one zero, others agree": torch.stack([g, zero, g + 0.1 * h]),
        "K=3, opposite pair and a third": torch.stack([g, -g, h]),
    }


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("case", sorted(_pareto_stationary_jacobians()))
def test_cagrad_at_a_pareto_stationary_point_with_c_below_one(c: float, case: str) -> None:
    # 0 is in the hull of the gradients, so the dual optimum is g_w = 0 and the formula
    # d = g0 + r g_w/‖g_w‖ is undefined; CAGrad returns the primal optimum closest to g0
    # (cvxpy gives the primal value), which is g0 itself when g0 conflicts with no task.
    cp = pytest.importorskip("cvxpy")
    jacobian = _pareto_stationary_jacobians()[case]
    numpy_jacobian = jacobian.numpy()
    mean = numpy_jacobian.mean(axis=0)
    radius = c * np.linalg.norm(mean)
    d, t = cp.Variable(12), cp.Variable()
    cp.Problem(cp.Maximize(t), [numpy_jacobian @ d >= t, cp.norm(d - mean) <= radius]).solve(
        solver=cp.CLARABEL
    )
    update = gs.CAGrad(c=c, rescale=0).aggregate(jacobian).numpy()
    assert np.isfinite(update).all()
    assert (numpy_jacobian @ update).min() >= t.value - 1e-7
    assert np.linalg.norm(update - mean) <= radius * (1 + 1e-9)
    if (numpy_jacobian @ mean).min() >= 0:  # g0 conflicts with no task: g0 itself
        np.testing.assert_allclose(update, mean, rtol=1e-12, atol=1e-12)
    else:  # the projection of g0 onto {d : J d ≥ 0}: a non-conflicting d nearest to g0
        projected = cp.Variable(12)
        cp.Problem(
            cp.Minimize(cp.sum_squares(projected - mean)), [numpy_jacobian @ projected >= 0]
        ).solve(solver=cp.CLARABEL)
        np.testing.assert_allclose(update, projected.value, atol=1e-6)


def test_cagrad_with_zero_radius_is_the_mean() -> None:
    jacobian = make_jacobian(3, 12, 3, 1.0, 4)
    torch.testing.assert_close(gs.CAGrad(c=0.0).aggregate(jacobian), jacobian.mean(dim=0))


@settings(max_examples=10, deadline=None)
@given(jacobian=jacobian_cases)
def test_imtlg_projections_on_unit_gradients_are_equal(jacobian: torch.Tensor) -> None:
    if int(torch.linalg.matrix_rank(jacobian)) < jacobian.shape[0]:
        return
    weights = gs.IMTLG().weights(jacobian @ jacobian.T)
    update = weights @ jacobian
    projections = (jacobian @ update) / jacobian.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand_as(projections))
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_with_two_tasks_equals_upgrad(seed: int) -> None:
    jacobian = make_jacobian(2, 12, 2, 1.0, seed, shared=-1.0 + 0.4 * seed)
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(
        gs.PCGrad("sum").aggregate(jacobian), gs.UPGrad(pref=ones).aggregate(jacobian)
    )
    torch.testing.assert_close(
        gs.PCGrad("mean").aggregate(jacobian), gs.UPGrad().aggregate(jacobian)
    )


def pcgrad_reference(jacobian: torch.Tensor, seed: int) -> torch.Tensor:
    """Algorithm 1 of Yu et al. (2020) in J-space, drawing orders as PCGrad does."""
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(jacobian.shape[0], generator=generator) for _ in jacobian]
    projected = []
    for i, order in enumerate(orders):
        g = jacobian[i].clone()
        for j in order.tolist():
            if j != i and float(g @ jacobian[j]) < 0:
                g = g - (g @ jacobian[j]) / (jacobian[j] @ jacobian[j]) * jacobian[j]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


@pytest.mark.parametrize("seed", range(4))
def test_pcgrad_follows_algorithm_1(seed: int) -> None:
    jacobian = make_jacobian(5, 12, 5, 1.0, seed, shared=-0.8)
    generator = torch.Generator().manual_seed(seed)
    torch.testing.assert_close(
        gs.PCGrad(generator=generator).aggregate(jacobian), pcgrad_reference(jacobian, seed)
    )


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("n_tasks", [2, 4])  # K = 2 with alpha = 1 has a closed form
def test_fairgrad_and_nash_solve_their_equations(alpha: float, n_tasks: int) -> None:
    scipy_optimize = pytest.importorskip("scipy.optimize")
    jacobian = make_jacobian(n_tasks, 12, n_tasks, 5.0, 1, shared=0.5)
    gramian = jacobian @ jacobian.T
    weights = gs.FairGrad(alpha=alpha).weights(gramian)
    torch.testing.assert_close(gramian @ weights, weights.pow(-1.0 / alpha))
    numpy_gramian = gramian.numpy()
    reference = scipy_optimize.least_squares(
        lambda x: numpy_gramian @ x - np.power(x, -1.0 / alpha),
        np.ones(n_tasks) / n_tasks,
        bounds=(0, np.inf),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    ).x
    np.testing.assert_allclose(weights.numpy(), reference, rtol=1e-7)
    nash = gs.NashMTL(max_norm=0.0).weights(gramian)
    normalized = gramian / torch.linalg.matrix_norm(gramian)
    torch.testing.assert_close(normalized @ nash, 1.0 / nash)


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_nash_float32_weights_do_not_depend_on_the_gradients_scale(scale: float) -> None:
    # Ĝ = G/‖G‖_F does not depend on the scale; ‖G‖_F of a float32 G used to overflow
    # (entries 1e24: "gradients are zero") or underflow (1e-24: no solution).
    jacobian = make_jacobian(3, 12, 3, 1.0, 3, shared=-0.5)
    gramian = (jacobian @ jacobian.T).float()
    unit = gs.NashMTL(max_norm=0.0).weights(gramian)
    scaled = gs.NashMTL(max_norm=0.0).weights(gramian * scale**2)
    torch.testing.assert_close(scaled, unit, rtol=1e-4, atol=0.0)


def test_nash_max_norm_bounds_the_update() -> None:
    jacobian = make_jacobian(3, 12, 3, 100.0, 2)
    update = gs.NashMTL(max_norm=0.5).aggregate(jacobian)
    assert float(update.norm()) == pytest.approx(0.5)


def test_gradvac_state_reset_and_task_count() -> None:
    jacobian = make_jacobian(3, 12, 3, 1.0, 5, shared=-0.5)
    combiner = gs.GradVac(beta=0.5, generator=torch.Generator().manual_seed(0))
    first = combiner.aggregate(jacobian)
    assert combiner.target is not None and float(combiner.target.abs().sum()) > 0
    torch.testing.assert_close(first, jacobian.sum(dim=0) + (first - jacobian.sum(dim=0)))
    with pytest.raises(ValueError, match="reset"):
        combiner.aggregate(jacobian[:2])
    combiner.reset()
    assert combiner.target is None
    combiner.generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(combiner.aggregate(jacobian), first)


def test_gradvac_first_step_targets_zero_cosine() -> None:
    # With φ̂ = 0, a conflicting pair (φ < 0) is corrected to exactly orthogonal, like PCGrad.
    jacobian = make_jacobian(2, 12, 2, 1.0, 0, shared=-2.0)
    assert float(jacobian[0] @ jacobian[1]) < 0
    update = gs.GradVac(eps=0.0).aggregate(jacobian)
    torch.testing.assert_close(update, gs.PCGrad().aggregate(jacobian))


def test_random_methods_are_reproducible_with_a_generator() -> None:
    jacobian = make_jacobian(5, 12, 5, 1.0, 9, shared=-0.7)
    for name in RANDOM:
        torch.testing.assert_close(ALL[name]().aggregate(jacobian), ALL[name]().aggregate(jacobian))


def test_graddrop_keeps_coordinates_where_signs_agree() -> None:
    jacobian = torch.tensor([[1.0, -2.0, 3.0], [2.0, -1.0, -3.0]], dtype=torch.float64)
    update = gs.GradDrop(generator=torch.Generator().manual_seed(0)).aggregate(jacobian)
    assert update[0] == 3.0 and update[1] == -3.0
    assert float(update[2]) in (3.0, -3.0)
    leaky = gs.GradDrop(leak=[1.0, 1.0]).aggregate(jacobian)
    torch.testing.assert_close(leaky, jacobian.sum(dim=0))


@pytest.mark.parametrize("name", ["MGDA", "UPGrad", "DualProj", "CAGrad", "NashMTL", "IMTLG"])
def test_weights_are_differentiable_in_the_gramian(name: str) -> None:
    root = make_jacobian(3, 3, 3, 1.0, 2, shared=-0.6).requires_grad_(True)

    def weights(a: torch.Tensor) -> torch.Tensor:
        return DETERMINISTIC[name]().weights(a @ a.T)

    assert torch.autograd.gradcheck(weights, (root,), eps=1e-6, atol=1e-5)


# Bad input and edge cases.


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_jacobian_shapes_and_types(name: str) -> None:
    combiner = ALL[name]()
    with pytest.raises(ValueError, match="2-D"):
        combiner.aggregate(torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="2-D"):
        combiner.aggregate(torch.ones(2, 3, 4))
    with pytest.raises(TypeError, match="floating"):
        combiner.aggregate(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        combiner.aggregate([[1.0, 2.0]])


def test_n_tasks_and_gramian_checks() -> None:
    with pytest.raises(ValueError, match="expects 3"):
        gs.UPGrad(n_tasks=3).aggregate(torch.ones(2, 4))
    with pytest.raises(ValueError, match="square"):
        gs.UPGrad().weights(torch.ones(2, 3))
    with pytest.raises(ValueError, match="pref has 2 entries"):
        gs.UPGrad(pref=[1.0, 1.0]).aggregate(torch.ones(3, 4))
    with pytest.raises(ValueError, match="reduction"):
        gs.PCGrad(reduction="max")
    with pytest.raises(ValueError, match="rescale"):
        gs.CAGrad(rescale=3)
    with pytest.raises(ValueError, match="c must be non-negative"):
        gs.CAGrad(c=-1.0)
    with pytest.raises(ValueError, match="normalization"):
        gs.MGDA("l1")
    with pytest.raises(ValueError, match="non-negative"):
        gs.UPGrad(pref=[1.0, -1.0])


@pytest.mark.parametrize("name", sorted(ALL))
def test_nan_gradients_raise(name: str) -> None:
    jacobian = make_jacobian(3, 12, 3, 1.0, 0)
    jacobian[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"tasks \[1\].*NaN"):
        ALL[name]().aggregate(jacobian)


@pytest.mark.parametrize("name", sorted(ALL))
def test_all_zero_gradients(name: str) -> None:
    jacobian = torch.zeros(3, 12, dtype=torch.float64)
    if name in NEEDS_FULL_RANK:
        with pytest.raises(ValueError, match="zero"):
            ALL[name]().aggregate(jacobian)
        return
    torch.testing.assert_close(
        ALL[name]().aggregate(jacobian), torch.zeros(12, dtype=torch.float64)
    )


@pytest.mark.parametrize("name", sorted(ALL))
def test_single_task_gives_a_non_negative_multiple_of_its_gradient(name: str) -> None:
    jacobian = make_jacobian(1, 12, 1, 2.0, 0)
    update = ALL[name]().aggregate(jacobian)
    factor = float(update @ jacobian[0]) / float(jacobian[0] @ jacobian[0])
    assert factor > 0
    torch.testing.assert_close(update, factor * jacobian[0])


@pytest.mark.parametrize("name", sorted(ALL))
def test_colinear_gradients(name: str) -> None:
    base = make_jacobian(1, 12, 1, 1.0, 3)
    same_direction = torch.cat([base, 3.0 * base])
    opposite = torch.cat([base, -2.0 * base])
    update = ALL[name]().aggregate(same_direction)
    assert bool(torch.isfinite(update).all()) and float(update @ base[0]) > 0
    if name in NEEDS_FULL_RANK:
        with pytest.raises(RuntimeError, match="no positive solution"):
            ALL[name]().aggregate(opposite)
        return
    update = ALL[name]().aggregate(opposite)
    assert bool(torch.isfinite(update).all())
    if name in ("MGDA", "UPGrad", "DualProj"):
        torch.testing.assert_close(update, torch.zeros(12, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(ALL))
def test_backward_accumulates_the_aggregate(name: str) -> None:
    layer = torch.nn.Linear(4, 3).double()
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outputs = layer(inputs)
    losses = torch.stack([outputs[:, k].pow(2).mean() + 0.1 for k in range(3)])
    params = list(layer.parameters())
    rows = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
    jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
    torch.manual_seed(0)
    expected = ALL[name]().aggregate(jacobian)
    torch.manual_seed(0)
    ALL[name]().backward(losses, params)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params]), expected)


@pytest.mark.parametrize(("n_tasks", "rank"), [(20, 6), (24, 24)])
def test_dual_cone_projection_on_hard_problems(n_tasks: int, rank: int) -> None:
    # Low rank or strongly correlated gradients: FISTA alone stalls and the active-set
    # finish must deliver the exact projection (checked by its KKT conditions and cvxpy).
    cp = pytest.importorskip("cvxpy")
    jacobian = make_jacobian(n_tasks, 40, rank, 1.0, n_tasks, shared=-2.0)
    jacobian[::3] *= 100.0
    gramian = jacobian @ jacobian.T
    weights = gs.UPGrad().weights(gramian)
    update = weights @ jacobian
    scale = float(gramian.diagonal().max())
    assert float((jacobian @ update).min()) >= -1e-9 * scale
    numpy_jacobian = jacobian.numpy()
    for task in (0, 1):
        v = cp.Variable(n_tasks)
        lower = np.eye(n_tasks)[task] / n_tasks
        cp.Problem(cp.Minimize(cp.sum_squares(numpy_jacobian.T @ v)), [v >= lower]).solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
        )
        ours = gs.UPGrad(pref=np.eye(n_tasks)[task].tolist()).aggregate(jacobian).numpy()
        expected = n_tasks * (numpy_jacobian.T @ v.value)
        assert np.linalg.norm(ours - expected) <= 1e-5 * np.linalg.norm(numpy_jacobian[task])


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_float32_matches_float64(name: str) -> None:
    jacobian = make_jacobian(4, 12, 4, 1.0, 6, shared=-0.5)
    expected = DETERMINISTIC[name]().aggregate(jacobian)
    update = DETERMINISTIC[name]().aggregate(jacobian.float())
    assert update.dtype == torch.float32
    assert float((update.double() - expected).norm()) <= 1e-4 * float(expected.norm())


def test_gradvac_state_dict_loads_into_a_fresh_instance():
    jacobian = torch.randn(3, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    trained = gs.GradVac(generator=torch.Generator().manual_seed(1))
    trained.aggregate(jacobian)
    fresh = gs.GradVac(generator=torch.Generator().manual_seed(1))
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.target, trained.target)


@pytest.mark.parametrize("normalization", ["none", "loss+"])
def test_mgda_backward_in_features_mode_is_mgda_ub(normalization):
    # MGDA-UB: min-norm weights of the feature gradients, one backward through the trunk.
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh()).double()
    heads = [torch.nn.Linear(6, 1).double() for _ in range(3)]
    x, ys = torch.randn(16, 5).double(), torch.randn(3, 16).double()

    def losses_of(h):
        return [((head(h).squeeze(-1) - y) ** 2).mean() for head, y in zip(heads, ys)]

    features = trunk(x)
    losses = losses_of(features)
    gs.MGDA(normalization).backward(losses, params=list(trunk.parameters()), features=features)
    got = [p.grad.clone() for p in trunk.parameters()]

    h = trunk(x)
    task_losses = losses_of(h)
    rows = torch.stack(
        [torch.autograd.grad(l, h, retain_graph=True)[0].flatten() for l in task_losses]
    )
    values = torch.stack(task_losses).detach()
    weights = gs.MGDA(normalization).weights(rows @ rows.T, losses=values)
    expected = torch.autograd.grad(h, list(trunk.parameters()), (weights @ rows).view_as(h))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
