"""The two-task closed forms (``moopt._two_tasks``) against the general solvers.

The general path of a method is run on the same two gradients with a zero third gradient
appended (K = 3 takes the general code): a zero gradient changes no other task's weight
in any of these methods (its inner products are zero; for the pseudo-inverse and
eigenvalue methods its row and column of ``G`` are zero), and its own weight is known.
UPGrad/DualProj are also compared with :func:`moopt._solvers.dual_cone_weights` at K = 2,
and MGDA (whose general solver has had a K = 2 branch from the start) with cvxpy. The
cases cover random gradients of several scales and angles and the degenerate ones:
colinear, opposite, orthogonal, nearly colinear, one or both gradients zero.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moopt import _solvers, _two_tasks
from moopt import gradsurgery as gs

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")

DIM = 7


def random_pair(seed: int, scale: float, shared: float) -> torch.Tensor:
    """Two random gradients plus a common component ``c``: ``1.5 c`` in the first and
    ``shared · c`` in the second (``shared < 0``: conflicting, ``> 0``: aligned)."""
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(2, DIM, generator=generator, dtype=torch.float64)
    common = torch.randn(1, DIM, generator=generator, dtype=torch.float64)
    jacobian = jacobian + torch.tensor([[1.5], [shared]], dtype=torch.float64) * common
    return scale * jacobian / jacobian.norm()


def degenerate_pairs() -> dict[str, torch.Tensor]:
    g = random_pair(1, 1.0, 0.0)[0]
    h = random_pair(2, 1.0, 0.0)[0]
    orthogonal = h - (h @ g) / (g @ g) * g
    zero = torch.zeros(DIM, dtype=torch.float64)
    return {
        "colinear": torch.stack([g, 3.0 * g]),
        "opposite": torch.stack([g, -2.0 * g]),
        "orthogonal": torch.stack([g, 5.0 * orthogonal]),
        "nearly colinear": torch.stack([g, g + 1e-4 * h]),
        "nearly opposite": torch.stack([g, -g + 1e-4 * h]),
        "first zero": torch.stack([zero, g]),
        "second zero": torch.stack([g, zero]),
        "both zero": torch.stack([zero, zero]),
    }


CASES = {
    **{
        f"random {seed} scale {scale:g} shared {shared:g}": random_pair(seed, scale, shared)
        for seed in range(3)
        for scale in (1e-3, 1.0, 1e3)
        for shared in (-1.5, 0.0, 1.5)
    },
    **degenerate_pairs(),
}
ILL_CONDITIONED = {"nearly colinear", "nearly opposite"}


def with_zero_task(jacobian: torch.Tensor) -> torch.Tensor:
    return torch.cat([jacobian, torch.zeros(1, jacobian.shape[1], dtype=jacobian.dtype)])


def tolerance(name: str) -> float:
    # The general pseudo-inverse/eigh paths lose eps·cond(G) ≈ 1e-16 · 1e8 there.
    return 1e-6 if name in ILL_CONDITIONED else 1e-10


# Each entry: the K = 2 combiner, the K = 3 combiner, the weight of the zero third task.
EMBEDDED = {
    "UPGrad": (
        lambda: gs.UPGrad(pref=[0.3, 0.7]),
        lambda: gs.UPGrad(pref=[0.3, 0.7, 0.5]),
        0.5,
    ),
    "DualProj": (
        lambda: gs.DualProj(pref=[0.3, 0.7]),
        lambda: gs.DualProj(pref=[0.3, 0.7, 0.5]),
        0.5,
    ),
    "PCGrad": (
        lambda: gs.PCGrad(generator=torch.Generator().manual_seed(0)),
        lambda: gs.PCGrad(generator=torch.Generator().manual_seed(0)),
        1.0,
    ),
    "IMTLG": (gs.IMTLG, gs.IMTLG, 0.0),
    "ConFIG": (
        lambda: gs.ConFIG(pref=[1.0, 2.0]),
        lambda: gs.ConFIG(pref=[1.0, 2.0, 3.0]),
        0.0,
    ),
    **{
        f"AlignedMTL {mode}": (
            lambda mode=mode: gs.AlignedMTL(pref=[1.0, 0.5], scale_mode=mode),
            lambda mode=mode: gs.AlignedMTL(pref=[1.0, 0.5, 2.0], scale_mode=mode),
            0.0,
        )
        for mode in ("min", "median", "rmse")
    },
}


@pytest.mark.parametrize("method", sorted(EMBEDDED))
@pytest.mark.parametrize("case", sorted(CASES))
def test_closed_form_equals_the_general_path(method: str, case: str) -> None:
    jacobian = CASES[case]
    two, three, third = EMBEDDED[method]
    closed = two().weights(jacobian @ jacobian.T)
    pair = two()._solve_pair(jacobian @ jacobian.T)
    if pair is not None:  # where the closed form applies, weights() must have taken it
        assert torch.equal(closed, pair)
    embedded = with_zero_task(jacobian)
    general = three().weights(embedded @ embedded.T)
    torch.testing.assert_close(closed, general[:2], rtol=tolerance(case), atol=tolerance(case))
    if method.startswith("AlignedMTL") and case == "both zero":
        third = 2.0  # Aligned-MTL returns w = p for a zero Gramian
    assert abs(float(general[2]) - third) <= 1e-12


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("pref", [(0.5, 0.5), (0.3, 0.7), (1.0, 0.0)])
def test_dual_cone_closed_forms_equal_the_dual_cone_solver(case: str, pref: tuple) -> None:
    gramian = CASES[case] @ CASES[case].T
    p = torch.tensor(pref, dtype=torch.float64)
    upgrad = _solvers.dual_cone_weights(gramian, torch.diag(p)).sum(1)
    dual_proj = _solvers.dual_cone_weights(gramian, p.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(_two_tasks.upgrad(gramian, pref), upgrad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        _two_tasks.dual_proj(gramian, pref), dual_proj, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_pcgrad_two_tasks_projects_each_gradient_once(reduction: str, case: str) -> None:
    g1, g2 = CASES[case]
    projected = []
    for mine, other in ((g1, g2), (g2, g1)):
        inner = float(mine @ other)
        if inner < 0:
            mine = mine - inner / float(other @ other) * other
        projected.append(mine)
    expected = projected[0] + projected[1]
    if reduction == "mean":
        expected = expected / 2
    update = gs.PCGrad(reduction=reduction).aggregate(CASES[case])
    torch.testing.assert_close(update, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradvac_closed_form_follows_the_general_path_over_steps(case: str) -> None:
    two, three = gs.GradVac(beta=0.3), gs.GradVac(beta=0.3)
    generator = torch.Generator().manual_seed(4)
    for step in range(4):
        jacobian = CASES[case] if step == 0 else random_pair(10 + step, 1.0, -1.0)
        jacobian = jacobian + 0.1 * step * torch.randn(2, DIM, generator=generator).double()
        embedded = with_zero_task(jacobian)
        closed = two.weights(jacobian @ jacobian.T)
        general = three.weights(embedded @ embedded.T)
        torch.testing.assert_close(closed, general[:2], rtol=1e-10, atol=1e-10)
        assert float(general[2]) == 1.0
        torch.testing.assert_close(two.target, three.target[:2, :2], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9, 2.0])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cagrad_closed_forms_meet_the_kkt_conditions_and_equal_the_solver(
    c: float, case: str
) -> None:
    gramian = CASES[case] @ CASES[case].T
    anchor = torch.full((2,), 0.5, dtype=torch.float64)
    radius = c * (anchor @ gramian @ anchor).sqrt()
    closed = _two_tasks.cagrad(gramian, c, _solvers.default_tolerance(gramian.dtype))
    if closed is None:  # the general solver's cases: colinear with an interior optimum, g_w = 0
        assert case in {"colinear", "opposite", "first zero", "second zero", "nearly colinear"}
        return
    if float(radius) == 0.0:  # g0 = 0: the mean gradient
        torch.testing.assert_close(closed, anchor)
        torch.testing.assert_close(_solvers.cagrad_dual(gramian, anchor, radius), anchor)
        return
    scale = float(gramian.diagonal().max())
    g_hat, r_hat = gramian / scale, float(radius) / scale**0.5
    lam = float((closed - anchor).sum())  # weights are b + λ w with w on the simplex
    w = (closed - anchor) / lam
    tau = float((g_hat @ closed)[int(w.argmax())])
    # Nearly opposite gradients: r ≈ 1e-5 ‖g‖ and the KKT residual carries eps·cond(G).
    kkt_tolerance = 1e-6 if case in ILL_CONDITIONED else 1e-10
    assert _solvers._cagrad_kkt(g_hat, anchor, r_hat, w, lam, tau) <= kkt_tolerance
    try:
        general = _solvers.cagrad_dual(gramian, anchor, radius, max_iter=2000)
    except RuntimeError:
        # Nearly opposite gradients with a small c: the projected-gradient search of the
        # general solver does not reach its tolerance (as before the closed forms).
        assert case == "nearly opposite"
        return
    torch.testing.assert_close(closed, general, rtol=1e-8, atol=1e-10)


FULL_RANK_CASES = sorted(
    set(CASES) - {"colinear", "opposite", "first zero", "second zero", "both zero"}
)


@pytest.mark.parametrize("case", FULL_RANK_CASES)
def test_nash_and_fairgrad_roots_equal_newtons_method(case: str) -> None:
    # Newton's method (the general path) runs for α ≠ 1; at α = 1 + 1e-12 its root is the
    # α = 1 root to ~1e-12 relative.
    gramian = CASES[case] @ CASES[case].T
    if case == "nearly opposite":
        # Newton's method does not converge on this cond(G) ≈ 1e8 pair; the closed form
        # solves the equations (to the conditioning of G).
        weights = gs.FairGrad(alpha=1.0).weights(gramian)
        torch.testing.assert_close(gramian @ weights, 1.0 / weights, rtol=1e-6, atol=0.0)
        return
    newton = _solvers.power_root(gramian, alpha=1.0 + 1e-12)
    fairgrad = gs.FairGrad(alpha=1.0).weights(gramian)
    torch.testing.assert_close(fairgrad, newton, rtol=1e-9, atol=0.0)
    normalized = gramian / torch.linalg.matrix_norm(gramian)
    newton = _solvers.power_root(normalized, alpha=1.0 + 1e-12)
    nash = gs.NashMTL(max_norm=0.0).weights(gramian)
    torch.testing.assert_close(nash, newton, rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("combiner", [gs.NashMTL, gs.FairGrad])
def test_nash_and_fairgrad_two_tasks_with_a_zero_gradient_raise(combiner) -> None:
    gramian = CASES["second zero"] @ CASES["second zero"].T
    with pytest.raises(ValueError, match=r"tasks \[1\] are zero"):
        combiner().weights(gramian)
    with pytest.raises(RuntimeError, match="no positive solution"):
        combiner().weights(CASES["opposite"] @ CASES["opposite"].T)


def cvxpy_min_norm_weights(gramian: np.ndarray) -> np.ndarray:
    cp = pytest.importorskip("cvxpy")
    w = cp.Variable(2)
    objective = cp.Minimize(cp.quad_form(w, cp.psd_wrap(gramian)))
    problem = cp.Problem(objective, [w >= 0, cp.sum(w) == 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14)
    return w.value


@pytest.mark.parametrize("case", sorted(set(CASES) - {"colinear", "both zero"}))
def test_mgda_two_tasks_is_the_min_norm_point(case: str) -> None:
    gramian = CASES[case] @ CASES[case].T
    scale = float(gramian.diagonal().max())
    weights = gs.MGDA().weights(gramian)
    expected = cvxpy_min_norm_weights((gramian / scale).numpy())
    norm = float(weights @ gramian @ weights)
    best = float(torch.from_numpy(expected) @ gramian @ torch.from_numpy(expected))
    assert norm <= best + 1e-9 * scale
    assert abs(float(weights.sum()) - 1.0) <= 1e-15 and bool((weights >= 0).all())


def test_mgda_two_equal_gradients_take_the_middle() -> None:
    jacobian = CASES["colinear"][[0, 0]]
    weights = gs.MGDA().weights(jacobian @ jacobian.T)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


GRADIENT_METHODS = {
    "MGDA": gs.MGDA,
    "UPGrad": lambda: gs.UPGrad(pref=[0.3, 0.7]),
    "DualProj": lambda: gs.DualProj(pref=[0.3, 0.7]),
    "PCGrad": gs.PCGrad,
    "IMTLG": gs.IMTLG,
    "ConFIG": lambda: gs.ConFIG(pref=[1.0, 2.0]),
    "AlignedMTL min": lambda: gs.AlignedMTL(pref=[1.0, 0.5]),
    "AlignedMTL rmse": lambda: gs.AlignedMTL(pref=[1.0, 0.5], scale_mode="rmse"),
    "GradVac": lambda: gs.GradVac(beta=0.3),
    "NashMTL": lambda: gs.NashMTL(max_norm=0.0),
    "FairGrad": gs.FairGrad,
    "CAGrad interior": lambda: gs.CAGrad(c=0.5),
    "CAGrad vertex": lambda: gs.CAGrad(c=2.0),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
@pytest.mark.parametrize("shared", [-1.5, 1.5])
def test_closed_forms_are_differentiable(name: str, shared: float) -> None:
    # A conflicting pair (shared < 0) makes the projections and GradVac's shift active.
    root = random_pair(5, 1.0, shared).requires_grad_(True)
    combiner = GRADIENT_METHODS[name]()

    def weights(a: torch.Tensor) -> torch.Tensor:
        if name == "GradVac":
            combiner.target = torch.tensor([[0.0, 0.4], [0.4, 0.0]], dtype=torch.float64)
        return combiner.weights(a @ a.T)

    assert torch.autograd.gradcheck(weights, (root,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_closed_form_derivative_equals_the_general_path(name: str) -> None:
    two, three, _ = EMBEDDED[name]
    root = random_pair(6, 1.0, -1.5).requires_grad_(True)  # conflicting: projections active
    direction = torch.tensor([0.6, -1.1], dtype=torch.float64)
    (closed,) = torch.autograd.grad(two().weights(root @ root.T) @ direction, root)
    embedded = with_zero_task(root)
    general = three().weights(embedded @ embedded.T)[:2] @ direction
    (expected,) = torch.autograd.grad(general, root)
    torch.testing.assert_close(closed, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", sorted(EMBEDDED))
def test_float32_closed_forms_agree_with_the_float32_general_path(method: str) -> None:
    jacobian = random_pair(7, 1.0, -1.0).float()
    two, three, _ = EMBEDDED[method]
    closed = two().weights(jacobian @ jacobian.T)
    embedded = with_zero_task(jacobian)
    general = three().weights(embedded @ embedded.T)
    assert closed.dtype == torch.float32
    torch.testing.assert_close(closed, general[:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-8, 1e4, 1e8])
def test_imtlg_weights_do_not_depend_on_the_gradients_scale(scale: float) -> None:
    # w(s² G) = w(G): the K = 3 pseudo-inverse path used to return zero weights (no update)
    # once ‖g‖ exceeded about 1e6, where the K = 2 closed form did not.
    jacobian = random_pair(4, 1.0, -1.0)
    embedded = with_zero_task(jacobian)
    three = torch.cat([embedded[:2], random_pair(5, 1.0, 0.5)[:1]])
    for rows in (embedded, three):
        unit = gs.IMTLG().weights(rows @ rows.T)
        scaled = gs.IMTLG().weights((scale * rows) @ (scale * rows).T)
        torch.testing.assert_close(scaled, unit, rtol=1e-8, atol=1e-12)
    closed = gs.IMTLG().weights((scale * jacobian) @ (scale * jacobian).T)
    torch.testing.assert_close(closed, gs.IMTLG().weights(embedded @ embedded.T)[:2])


def test_full_rank_test_needs_a_clear_margin() -> None:
    assert _two_tasks.full_rank((1.0, 0.0, 0.0, 1.0), torch.float32)
    assert not _two_tasks.full_rank((1.0, 1.0, 1.0, 1.0), torch.float64)
    assert not _two_tasks.full_rank((0.0, 0.0, 0.0, 0.0), torch.float64)
    eps = torch.finfo(torch.float32).eps
    assert not _two_tasks.full_rank((1.0, 0.0, 0.0, 100 * eps), torch.float32)
    assert _two_tasks.full_rank((1.0, 0.0, 0.0, 100 * eps), torch.float64)
    smallest, largest = _two_tasks.eigenvalues((2.0, 1.0, 1.0, 2.0))
    assert (smallest, largest) == pytest.approx((1.0, 3.0), rel=1e-15)


@pytest.mark.parametrize("n_tasks", [2, 8, 9])  # the host check up to K = 8, torch above
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gramian_is_refused_on_both_check_paths(n_tasks: int, bad: float) -> None:
    jacobian = torch.randn(n_tasks, DIM, generator=torch.Generator().manual_seed(0)).double()
    jacobian[1, 3] = bad
    with pytest.raises(ValueError, match=r"tasks \[1\].*non-finite"):
        gs.UPGrad().aggregate(jacobian)
    gramian = torch.eye(n_tasks, dtype=torch.float64)
    gramian[0, 1] = bad  # an off-diagonal entry alone: the rows with one are named
    with pytest.raises(ValueError, match=r"tasks \[0\]"):
        gs.MGDA().weights(gramian)


@pytest.mark.parametrize("name", ["UPGrad", "PCGrad", "IMTLG", "ConFIG", "CAGrad interior"])
def test_two_task_weights_have_the_gramians_dtype_and_device(name: str) -> None:
    for dtype in (torch.float32, torch.float64):
        jacobian = random_pair(3, 1.0, -1.0).to(dtype)
        weights = GRADIENT_METHODS[name]().weights(jacobian @ jacobian.T)
        assert weights.dtype == dtype and weights.shape == (2,)
        assert weights.device == jacobian.device and not weights.requires_grad


FORWARD_METHODS = {
    **GRADIENT_METHODS,
    "NashMTL": lambda: gs.NashMTL(max_norm=0.0),
    "FairGrad": gs.FairGrad,
}


@pytest.mark.parametrize("name", sorted(FORWARD_METHODS))
def test_closed_forms_carry_forward_mode_tangents(name: str) -> None:
    # torch.func.jvp (forward mode, as FDS uses) must give the reverse-mode derivative, which
    # test_closed_form_derivative_equals_the_general_path compares with the general path.
    root = random_pair(8, 1.0, -1.5)
    tangent = torch.randn(2, DIM, generator=torch.Generator().manual_seed(9)).double()

    def weights(a: torch.Tensor) -> torch.Tensor:
        combiner = FORWARD_METHODS[name]()
        if name == "GradVac":
            combiner.target = torch.tensor([[0.0, 0.4], [0.4, 0.0]], dtype=torch.float64)
        return combiner.weights(a @ a.T)

    _, forward = torch.func.jvp(weights, (root,), (tangent,))
    reverse = (torch.func.jacrev(weights)(root) * tangent).sum(dim=(1, 2))
    torch.testing.assert_close(forward, reverse, rtol=1e-10, atol=1e-12)
    assert float(forward.abs().sum()) > 0


@pytest.mark.parametrize("name", sorted(FORWARD_METHODS))
@pytest.mark.parametrize("scale", [1e-30, 1e20])
def test_float32_weights_with_derivatives_equal_those_without_at_extreme_scales(
    name: str, scale: float
) -> None:
    # Products of float32 entries (a·d, a²) overflow at 1e20 and underflow at 1e-30; the
    # closed forms compute in float64 with or without derivatives flowing through G.
    jacobian = random_pair(7, 1.0, -1.0)
    gramian = (scale * (jacobian @ jacobian.T)).float()

    def weights(matrix: torch.Tensor) -> torch.Tensor:
        combiner = FORWARD_METHODS[name]()
        if name == "GradVac":
            combiner.target = torch.tensor([[0.0, 0.4], [0.4, 0.0]], dtype=torch.float64)
        return combiner.weights(matrix)

    plain = weights(gramian)
    reverse = weights(gramian.clone().requires_grad_(True))
    _, tangent = torch.func.jvp(weights, (gramian,), (gramian,))
    assert reverse.dtype == torch.float32 and torch.isfinite(tangent).all()
    torch.testing.assert_close(reverse.detach(), plain, rtol=1e-6, atol=0.0)
