"""Small per-step solvers of the gradient-level combiners, in torch, on the Gramian's device.

Every solver works on the K×K Gramian ``G = J Jᵀ`` (K = number of tasks) and follows one
pattern: iterations without autograd find the solution (or its active set) to a tight
tolerance, then one last closed-form step on the identified active set is taken *with*
autograd. At a solution that last step changes nothing numerically, but its graph gives the
exact implicit derivative of the solution for a locally constant active set, so weights
stay differentiable in ``G`` where the mathematics allows.

Problems solved:

* :func:`dual_cone_weights` — ``min_v vᵀ G v  s.t.  v ≥ u`` for many ``u`` at once (the
  projection of ``Jᵀu`` onto the dual cone ``{x : J x ≥ 0}`` is ``Jᵀv``; Quinton & Rey 2024,
  Prop. 1): projected accelerated gradient with restarts, polished by an exact solve on the
  free set.
* :func:`min_norm_simplex` — ``min_{w ∈ Δ} wᵀ G w`` (MGDA's min-norm point of the hull).
* :func:`cagrad_dual` — ``min_{w ∈ Δ} wᵀ G b + r·sqrt(wᵀ G w)`` (CAGrad's dual).
* :func:`power_root` — the positive root of ``G w = w^(-1/α)`` (Nash-MTL for α = 1,
  FairGrad for any α > 0) by Newton's method on a strictly convex function.

For two tasks every method has a closed form, in :mod:`moopt._two_tasks`; the solvers and
the combiners call those first. Branch decisions copy their few numbers to the host once
per decision (``tolist`` of a stacked tensor) rather than one ``.item()`` each.
"""

from __future__ import annotations

import math

import torch

from moopt import _two_tasks


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the solvers: ``eps^(2/3)`` of ``dtype``.

    About 4e-11 for float64 and 2e-5 for float32: a few orders of magnitude above the
    round-off floor of the KKT residuals, which grows with K and the condition of ``G``.
    """
    return float(torch.finfo(dtype).eps) ** (2.0 / 3.0)


def gramian_scale(gramian: torch.Tensor) -> torch.Tensor:
    """The largest diagonal entry of ``gramian`` (the squared norm of the longest gradient)."""
    return gramian.detach().diagonal().max()


def lipschitz_bound(gramian: torch.Tensor) -> torch.Tensor:
    """An upper bound on ``λ_max(G)``: the smaller of the trace and the largest row-abs-sum."""
    detached = gramian.detach()
    return torch.minimum(detached.diagonal().sum(), detached.abs().sum(dim=1).max())


def solve_symmetric(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve a symmetric (possibly indefinite or singular) system.

    LU when it succeeds with a backward error below ``10·n·eps``; otherwise the min-norm
    least-squares solution ``matrix⁺ rhs``.
    """
    solution, info = torch.linalg.solve_ex(matrix, rhs)
    a, x, b = matrix.detach(), solution.detach(), rhs.detach()
    residual = (a @ x - b).abs().max()
    size = a.abs().max() * x.abs().max() + b.abs().max()
    # One copy to the host; a non-finite solution makes ``size`` non-finite.
    failed, residual, size = torch.stack([info.to(a.dtype), residual, size]).tolist()
    bound = 10.0 * matrix.shape[0] * torch.finfo(matrix.dtype).eps * size
    if failed == 0 and math.isfinite(size) and residual <= bound:
        return solution
    return torch.linalg.pinv(matrix, hermitian=True) @ rhs


def project_simplex(y: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each column of ``y`` (K×B, or a K-vector) onto the simplex."""
    sorted_y = torch.sort(y, dim=0, descending=True).values
    cumulative = sorted_y.cumsum(dim=0) - 1.0
    index = torch.arange(1, y.shape[0] + 1, dtype=y.dtype, device=y.device)
    if y.dim() == 2:
        index = index.unsqueeze(1)
    support = (sorted_y - cumulative / index > 0).to(y.dtype)
    count = support.sum(dim=0, keepdim=True).clamp(min=1.0)
    theta = torch.gather(cumulative, 0, (count - 1).long()) / count
    return (y - theta.reshape(theta.shape[1:] if y.dim() == 1 else theta.shape)).clamp(min=0.0)


def dual_cone_weights(
    gramian: torch.Tensor, lower: torch.Tensor, tol: float | None = None, fista_iter: int = 300
) -> torch.Tensor:
    """Solve ``min_v vᵀ G v  s.t.  v ≥ u`` for every column ``u`` of ``lower`` (K×B).

    KKT conditions: ``v ≥ u``, ``G v ≥ 0`` and ``(v − u) ⊙ G v = 0``. For K ≤ 32, ``v = u``
    where ``G u ≥ 0``, and otherwise an exact
    solve on the free sets guessed from the constraints that ``u`` violates is tried first
    (it is exact whenever that guess is right, e.g. always for K = 2). Otherwise all
    columns run projected accelerated gradient together (FISTA with gradient restarts,
    step ``1/L`` from :func:`lipschitz_bound`, at most ``fista_iter`` iterations) until the
    KKT residual is below ``tol`` relative to the scale of ``G``; this is fast when ``G`` is well
    conditioned. For K ≤ 32 one batched exact solve on the free sets then removes the
    error that the residual leaves on an ill-conditioned ``G``. Columns still short of the
    tolerance are finished exactly by a Lawson–Hanson active-set method warm-started from
    the FISTA iterate (:func:`nonneg_qp_active_set`), which terminates in finitely many
    steps, also for a singular ``G``. The returned ``V`` carries the implicit derivative in
    ``G`` and ``u`` for a fixed active set.
    """
    tol = default_tolerance(gramian.dtype) if tol is None else tol
    scale = gramian_scale(gramian)
    if float(scale) == 0.0:
        return lower.clone()
    with torch.no_grad():
        g_hat = gramian.detach() / scale
        u = lower.detach()
        v = None
        if u.shape[0] <= POLISH_MAX_TASKS:
            violated = g_hat @ u < 0
            if not bool(violated.any()):  # G u ≥ 0: u itself meets the KKT conditions
                v = u.clone()
            else:  # First guess of the free sets: the constraints that u itself violates.
                guess = u + violated.to(u.dtype)
                guessed, guessed_residual, _ = _solve_on_free_sets(g_hat, u, guess)
                if float(guessed_residual.max()) <= tol:
                    v = guessed
        if v is None:
            v = _dual_cone_iterations(g_hat, u, tol, fista_iter)
    if not (gramian.requires_grad or lower.requires_grad):
        return v
    free = v > u
    return with_implicit_derivative(v, _differentiable_free_set_step(gramian, lower, v, free))


def _dual_cone_iterations(
    g_hat: torch.Tensor, u: torch.Tensor, tol: float, fista_iter: int
) -> torch.Tensor:
    """FISTA from ``v = u``, the batched polish and the active-set finish of
    :func:`dual_cone_weights` (run when the first guess of the free sets fails)."""
    v = u.clone()
    momentum_point = v
    t = 1.0
    residual = _dual_cone_kkt(g_hat, u, v)
    largest = float(residual.max())  # copied once for the polish test and the first check
    polish = v.shape[0] <= POLISH_MAX_TASKS and largest > tol
    step = None
    for _ in range(fista_iter):
        if largest <= tol:
            break
        if step is None:  # computed only when FISTA runs
            step = 1.0 / float(lipschitz_bound(g_hat))
        v_next = torch.maximum(u, momentum_point - step * (g_hat @ momentum_point))
        restart = ((momentum_point - v_next) * (v_next - v)).sum(dim=0) > 0
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        extrapolated = v_next + (t - 1.0) / t_next * (v_next - v)
        momentum_point = torch.where(restart, v_next, extrapolated)
        t = 1.0 if bool(restart.any()) else t_next
        v = v_next
        residual = _dual_cone_kkt(g_hat, u, v)
        largest = float(residual.max())
    if polish:
        v, residual = _polish_on_free_sets(g_hat, u, v, residual, tol)
    for column in (residual > tol).nonzero().flatten().tolist():
        u_col = u[:, column]
        slack = nonneg_qp_active_set(
            g_hat, g_hat @ u_col, (v[:, column] - u_col).clamp(min=0.0), tol
        )
        v[:, column] = u_col + slack
    return v


POLISH_MAX_TASKS = 32
"""Up to this K, :func:`dual_cone_weights` finishes FISTA with one batched exact solve."""


def _polish_on_free_sets(
    g_hat: torch.Tensor, u: torch.Tensor, v: torch.Tensor, residual: torch.Tensor, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One exact Newton step per column on its free set ``{v_j > u_j}`` (batched solve).

    FISTA's KKT residual bounds the error of ``v`` only up to the conditioning of ``G``;
    solving ``G_FF v_F = −G_FA u_A`` on the identified free set removes that error. A
    column keeps the polished value where its KKT residual stays within ``tol`` (or does
    not grow).
    """
    polished, polished_residual, info = _solve_on_free_sets(g_hat, u, v)
    better = (
        (info == 0)
        & torch.isfinite(polished_residual)
        & (polished_residual <= residual.clamp(min=tol))
    )
    return (
        torch.where(better, polished, v),
        torch.where(better, polished_residual, residual),
    )


def _solve_on_free_sets(
    g_hat: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column, the exact solution on the free set ``{v_j > u_j}`` (one batched solve of
    ``G_FF v_F = −G_FA u_A``, ``v_A = u_A``), its KKT residual and the solves' ``info``
    (non-zero for a singular ``G_FF``, whose solution is then not to be trusted)."""
    free = (v > u).T.to(g_hat.dtype)
    systems = free[:, :, None] * g_hat[None] * free[:, None, :] + torch.diag_embed(1.0 - free)
    fixed = (u * (1.0 - free.T)).T
    rhs = torch.where(free > 0, -(fixed @ g_hat), u.T)
    solution, info = torch.linalg.solve_ex(systems, rhs.unsqueeze(-1))
    solved = solution.squeeze(-1).T
    return solved, _dual_cone_kkt(g_hat, u, solved), info


def _dual_cone_kkt(g_hat: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per column, the largest violation of the dual-cone QP's KKT conditions."""
    natural = (v - torch.maximum(u, v - g_hat @ v)).abs().amax(dim=0)
    return torch.maximum(natural, (u - v).clamp(min=0.0).amax(dim=0))


def nonneg_qp_active_set(
    gramian: torch.Tensor, linear: torch.Tensor, start: torch.Tensor, tol: float
) -> torch.Tensor:
    """Exact ``argmin_{s ≥ 0} ½ sᵀ G s + qᵀ s`` by Lawson–Hanson's active-set method.

    ``G`` is positive semi-definite and ``q`` in its range (so the minimum exists).
    Warm-started from the feasible ``start``: its positive entries form the first passive
    set. Each step minimises over the passive set (least squares, min-norm where ``G_PP`` is
    singular), steps back to feasibility when an entry would turn negative, and otherwise
    frees the constrained entry with the most negative gradient, until every gradient entry
    of the constrained set is ``≥ −tol``.

    Raises:
        RuntimeError: when the method has not terminated after ``10·K + 10`` steps.
    """
    n = linear.shape[0]
    s = start.clone()
    passive = s > 0
    for _ in range(10 * n + 10):
        z = _passive_minimiser(gramian, linear, passive)
        while bool((z[passive] <= 0).any()):
            blocking = passive & (z <= 0)
            ratios = s[blocking] / (s[blocking] - z[blocking])
            s = s + ratios.min() * (z - s)
            passive = passive & (s > tol * tol)
            s = torch.where(passive, s, torch.zeros_like(s))
            z = _passive_minimiser(gramian, linear, passive)
        s = z
        gradient = gramian @ s + linear
        candidates = torch.where(passive, torch.zeros_like(gradient), gradient)
        if float(candidates.min()) >= -tol:
            return s
        passive[int(candidates.argmin())] = True
    raise RuntimeError("non-negative QP active-set method did not terminate")


def _passive_minimiser(
    gramian: torch.Tensor, linear: torch.Tensor, passive: torch.Tensor
) -> torch.Tensor:
    """Minimiser of ``½ sᵀ G s + qᵀ s`` with ``s`` zero off ``passive`` (min-norm)."""
    result = torch.zeros_like(linear)
    if bool(passive.any()):
        block = gramian[passive][:, passive]
        rhs = -linear[passive].unsqueeze(1)
        result[passive] = solve_symmetric(block, rhs).squeeze(1)
    return result


def _differentiable_free_set_step(
    gramian: torch.Tensor, lower: torch.Tensor, v: torch.Tensor, free: torch.Tensor
) -> torch.Tensor:
    """Recompute ``v`` on its free set with autograd: the implicit derivative of the QP."""
    columns = []
    for column in range(lower.shape[1]):
        mask = free[:, column]
        u = lower[:, column]
        if not bool(mask.any()):
            columns.append(u)
            continue
        fixed = torch.where(mask, torch.zeros_like(u), u)
        rhs = -(gramian[mask] @ fixed)
        block = gramian[mask][:, mask]
        solution = solve_symmetric(block, rhs)
        full = torch.zeros_like(u).masked_scatter(mask, solution)
        columns.append(torch.where(mask, full, u))
    return torch.stack(columns, dim=1)


def min_norm_simplex(gramian: torch.Tensor, tol: float | None = None, max_iter: int = 10000):
    """Weights ``w ∈ Δ`` of the min-norm point ``Jᵀw`` of the convex hull of the rows of J.

    KKT conditions: ``(G w)_j ≥ ν`` for every j with equality on the support of ``w``, where
    ``ν = wᵀ G w``. An exact solve of the bordered system ``[G_FF 1; 1ᵀ 0][w; −ν] = [0; 1]``
    on the candidate support F (all tasks first) is checked against the KKT conditions
    (K = 2 has a closed form, :func:`moopt._two_tasks.min_norm`);
    when it fails, projected accelerated gradient on the simplex refines the support and the
    exact solve is retried every 25 iterations.

    Raises:
        RuntimeError: when ``max_iter`` iterations do not reach the tolerance.
    """
    tol = default_tolerance(gramian.dtype) if tol is None else tol
    n_tasks = gramian.shape[0]
    if n_tasks == 2:
        return _two_tasks.min_norm(gramian)
    scale = gramian_scale(gramian)
    uniform = torch.full((n_tasks,), 1.0 / n_tasks, dtype=gramian.dtype, device=gramian.device)
    if float(scale) == 0.0:
        return uniform
    with torch.no_grad():
        g_hat = gramian.detach() / scale
        # Every task in the support, solved by LU without solve_symmetric's accuracy test:
        # the KKT check is the certificate (NaN fails it). Otherwise, the iterations.
        solution, support = _min_norm_on_support(g_hat, None, clamp=True, checked=False), None
        if not _min_norm_kkt(g_hat, solution) <= tol:
            solution, support = _min_norm_iterations(g_hat, uniform, tol, max_iter)
    if not gramian.requires_grad:
        return solution
    return with_implicit_derivative(solution, _min_norm_on_support(gramian / scale, support))


def _min_norm_iterations(
    g_hat: torch.Tensor, uniform: torch.Tensor, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`min_norm_simplex` when the solve on every task fails its KKT check: projected
    accelerated gradient on the simplex, with the exact (checked) solve on the current
    support every 25 iterations. Returns the solution and its support (None: every task)."""
    step = None
    w = uniform.clone()
    momentum_point = w
    t = 1.0
    support = None  # every task, until the iterations find a smaller support
    for iteration in range(max_iter):
        if iteration % 25 == 0:
            candidate = _min_norm_on_support(g_hat, support, clamp=True)
            if _min_norm_kkt(g_hat, candidate) <= tol:
                return candidate, support
        if step is None:  # computed only when the exact solve on all tasks failed
            step = 1.0 / float(lipschitz_bound(g_hat))
        w_next = project_simplex(momentum_point - step * (g_hat @ momentum_point))
        if _min_norm_kkt(g_hat, w_next) <= tol:
            return w_next, w_next > 0
        restart = float(((momentum_point - w_next) * (w_next - w)).sum()) > 0
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        momentum_point = w_next if restart else w_next + (t - 1.0) / t_next * (w_next - w)
        t = 1.0 if restart else t_next
        w = w_next
        support = w > 0
    raise RuntimeError(f"min-norm solver did not reach tolerance {tol:g} in {max_iter} iterations")


def with_implicit_derivative(solution: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``solution``'s value with the derivative of ``step``, a re-solve on its active set.

    The re-solve with autograd gives the implicit derivative for a fixed active set; its
    value may differ from the checked ``solution`` only in degenerate (rank-deficient)
    cases, where the derivative is then that of one particular solution.
    """
    return solution + (step - step.detach())


def _min_norm_on_support(
    gramian: torch.Tensor, support: torch.Tensor | None, clamp: bool = False, checked: bool = True
) -> torch.Tensor:
    """Min-norm weights restricted to ``support`` (bordered KKT system, least squares);
    ``support=None`` means every task. ``checked=False``: plain LU, no accuracy test (for a
    caller that checks the KKT conditions)."""
    block = _support_block(gramian, support)
    size = block.shape[0]
    rhs = torch.zeros(size + 1, dtype=gramian.dtype, device=gramian.device)
    rhs[-1] = 1.0
    solution = _solve_bordered(bordered_matrix(block, 1.0), rhs, checked)
    if support is None:
        weights = solution[:size]
    else:
        weights = torch.zeros(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)
        weights = weights.masked_scatter(support, solution[:size])
    if clamp:
        weights = weights.clamp(min=0.0)
        weights = weights / weights.sum()
    return weights


def _support_block(gramian: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    """``G_FF`` for the support F (``None``: every task, ``G`` itself)."""
    return gramian if support is None else gramian[support][:, support]


def _solve_bordered(bordered: torch.Tensor, rhs: torch.Tensor, checked: bool) -> torch.Tensor:
    """:func:`solve_symmetric`, or with ``checked=False`` plain LU (no accuracy test, for a
    caller whose KKT check certifies the result)."""
    if checked:
        return solve_symmetric(bordered, rhs)
    return torch.linalg.solve_ex(bordered, rhs).result


def bordered_matrix(block: torch.Tensor, border: float) -> torch.Tensor:
    """``[[block, border·1], [1ᵀ, 0]]``: the KKT matrix of a quadratic on the simplex."""
    bordered = torch.nn.functional.pad(block, (0, 1, 0, 1), value=1.0)
    if border != 1.0:
        bordered[:-1, -1] = border
    bordered[-1, -1] = 0.0
    return bordered


def _min_norm_kkt(g_hat: torch.Tensor, w: torch.Tensor) -> float:
    """Largest violation of the min-norm KKT conditions (negativity, sum, stationarity)."""
    gradient = g_hat @ w
    gap = gradient - w @ gradient
    # Per task: |gap| on the support (stationarity), max(−gap, 0) off it, max(−w, 0).
    per_task = torch.where(w > 0, gap.abs(), torch.maximum(-gap, -w).clamp(min=0.0))
    return max(float(per_task.max()), abs(float(w.sum()) - 1.0))


def cagrad_dual(
    gramian: torch.Tensor,
    anchor: torch.Tensor,
    radius: torch.Tensor,
    tol: float | None = None,
    max_iter: int = 20000,
) -> torch.Tensor:
    """CAGrad's combination weights ``b + λ w`` (Liu et al. 2021, Eq. 8-9).

    ``w`` minimises ``F(w) = wᵀ G b + r ‖Jᵀw‖`` over the simplex (``b`` = ``anchor`` weights
    of ``g0 = Jᵀb``, ``r`` = ``radius``) and ``λ = r / ‖Jᵀw‖``, so the update is
    ``d = g0 + r·g_w/‖g_w‖``. For a support F, the KKT conditions
    ``(G (b + λ w))_F = τ·1``, ``1ᵀw = 1``, ``‖Jᵀw‖ = r/λ`` have a closed form (a quadratic
    in 1/λ, see :func:`_cagrad_on_support`); the support is found by projected gradient with
    Armijo backtracking on F and checked against the full KKT conditions. When the
    optimum is ``g_w = 0`` (0 in the convex hull of the gradients: Pareto-stationary),
    ``λ`` is infinite and the formula for ``d`` is undefined; see
    :func:`_cagrad_stationary_weights` for what is returned then. For K = 2, CAGrad calls
    the closed forms of :func:`moopt._two_tasks.cagrad` first.

    Raises:
        RuntimeError: when ``max_iter`` iterations do not reach the tolerance.
    """
    tol = default_tolerance(gramian.dtype) if tol is None else tol
    n_tasks = gramian.shape[0]
    scale = gramian_scale(gramian)
    if float(scale) == 0.0 or float(radius.detach()) == 0.0:
        return anchor.clone()
    with torch.no_grad():
        g_hat = gramian.detach() / scale
        r_hat = float(radius.detach()) / float(scale) ** 0.5
        b = anchor.detach()
        linear = g_hat @ b
        w = torch.full_like(b, 1.0 / n_tasks)
        support = None  # every task, until the iterations find a smaller support
        step = 1.0

        # Every task in the support by plain LU, certified by its KKT violation; the checked
        # (least-squares) solve only when that fails.
        candidate, violation = _cagrad_on_support(g_hat, b, r_hat, support, checked=False)
        if not violation <= tol:
            candidate, violation = _cagrad_on_support(g_hat, b, r_hat, support)
        accepted = violation <= tol
        if not accepted:
            stationary = _cagrad_stationary_weights(g_hat, b, r_hat, tol)
            if stationary is not None:
                return stationary.to(anchor.dtype)

        def objective(x: torch.Tensor) -> float:
            return float(x @ linear + r_hat * (x @ g_hat @ x).clamp(min=0.0).sqrt())

        iteration = 0
        while not accepted:
            if iteration == max_iter:
                raise RuntimeError(
                    f"CAGrad dual solver did not reach tolerance {tol:g} in {max_iter} iterations"
                )
            norm = float((w @ g_hat @ w).clamp(min=0.0).sqrt())
            gradient = linear + (r_hat / max(norm, 1e-300)) * (g_hat @ w)
            current = objective(w)
            step = min(step * 2.0, 1e6)
            while True:
                w_next = project_simplex(w - step * gradient)
                decrease = gradient @ (w_next - w) + ((w_next - w) ** 2).sum() / (2.0 * step)
                if objective(w_next) <= current + float(decrease) or step < 1e-20:
                    break
                step /= 2.0
            w = w_next
            support = w > 0
            iteration += 1
            if iteration % 10 == 0:
                candidate, violation = _cagrad_on_support(g_hat, b, r_hat, support)
                accepted = violation <= tol
    w_star, lam_star, _ = candidate
    solution = anchor.detach() + lam_star * w_star
    if not (gramian.requires_grad or radius.requires_grad):
        return solution
    step_weights, _ = _cagrad_on_support(gramian / scale, anchor, radius / scale.sqrt(), support)
    if step_weights is None:
        return solution
    return with_implicit_derivative(solution, anchor + step_weights[1] * step_weights[0])


def _cagrad_stationary_weights(
    g_hat: torch.Tensor, b: torch.Tensor, r_hat: float, tol: float
) -> torch.Tensor | None:
    """CAGrad's weights when its dual optimum is ``g_w = 0``, or ``None`` when it is not.

    With 0 in the convex hull of the gradients (``Σ_k μ_k g_k = 0`` for some ``μ`` in the
    simplex), ``min_k g_k·d ≤ Σ_k μ_k g_k·d = 0`` for every ``d``, so the primal value is at
    most 0; it is exactly 0, with the dual optimum at ``g_w = 0``, when some ``d`` in the ball
    ``‖d − g0‖ ≤ r`` conflicts with no task (``J d ≥ 0``). Every such ``d`` is then optimal:

    * ``r ≥ ‖g0‖``: ``d = 0`` (zero weights), as TorchJD returns;
    * ``r < ‖g0‖``: the optimum closest to ``g0``, i.e. ``g0`` projected onto the cone
      ``{d : J d ≥ 0}`` (weights ``v ≥ b`` minimising ``vᵀ G v``, :func:`dual_cone_weights`),
      which lies in the ball exactly when the value is 0. When ``g0`` conflicts with no task
      (e.g. one task's gradient is zero and the others agree) this is ``g0`` itself, the
      mean gradient that the official code returns there (it divides ``g_w = 0`` by
      ``‖g_w‖ + 1e-8``).
    """
    closest = min_norm_simplex(g_hat, tol)
    if float(closest @ g_hat @ closest) > tol:
        return None
    if r_hat >= float((b @ g_hat @ b).clamp(min=0.0).sqrt()):
        return torch.zeros_like(b)
    projected = dual_cone_weights(g_hat, b.unsqueeze(1), tol).squeeze(1)
    shift = projected - b
    if float((shift @ g_hat @ shift).clamp(min=0.0).sqrt()) > r_hat * (1.0 + tol) + tol:
        return None
    return projected


def _cagrad_on_support(
    gramian: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor | float,
    support: torch.Tensor | None,
    checked: bool = True,
):
    """KKT point ``(w, λ, τ)`` of CAGrad's dual with ``w`` supported on ``support`` and its
    KKT violation (:func:`_cagrad_kkt`), or ``(None, inf)``.

    With ``μ = 1/λ`` and ``σ = μ τ``, the stationarity and simplex conditions
    ``G_FF w_F − σ 1 = −μ (G b)_F``, ``1ᵀ w_F = 1`` are linear: the bordered system gives
    ``(w_F, σ) = (y0, σ0) + μ (y1, σ1)``. Then ``‖Jᵀw‖ = r μ`` is the quadratic
    ``(y1ᵀGy1 − r²) μ² + 2 y0ᵀGy1 μ + y0ᵀGy0 = 0``; of its positive roots, the one with
    the smallest KKT violation is returned. Least squares (min-norm) solves keep this
    defined when the support's gradients are affinely dependent. ``support=None`` means
    every task. ``checked=False``: plain LU, no accuracy test (the returned violation is
    the certificate; NaN or a wrong solution fails it).
    """
    block = _support_block(gramian, support)
    size = block.shape[0]
    rhs = torch.zeros(size + 1, 2, dtype=gramian.dtype, device=gramian.device)
    rhs[-1, 0] = 1.0
    linear = gramian @ b
    rhs[:size, 1] = -(linear if support is None else linear[support])
    solution = _solve_bordered(bordered_matrix(block, -1.0), rhs, checked)
    directions = solution[:size]
    # [[y0ᵀGy0, y0ᵀGy1], [y1ᵀGy0, y1ᵀGy1]] and (σ0, σ1): floats (one copy to the host)
    # unless G requires grad.
    moments = directions.T @ block @ directions
    sigma = solution[size]
    if not (gramian.requires_grad or isinstance(r, torch.Tensor) and r.requires_grad):
        moments, sigma = moments.tolist(), sigma.tolist()
    quad = moments[1][1] - r * r
    half_linear = moments[0][1]
    constant = moments[0][0]
    roots = []
    if abs(_two_tasks.value(quad)) > 1e-14 * max(abs(_two_tasks.value(constant)), 1e-300):
        discriminant = half_linear * half_linear - quad * constant
        if _two_tasks.value(discriminant) >= 0:
            root = _two_tasks.sqrt(discriminant)
            roots = [(-half_linear + root) / quad, (-half_linear - root) / quad]
    elif _two_tasks.value(half_linear) != 0:
        roots = [-constant / (2.0 * half_linear)]
    best, best_violation = None, float("inf")
    radius = _two_tasks.value(r)
    for mu in roots:
        if not _two_tasks.value(mu) > 0:
            continue
        w = directions[:, 0] + mu * directions[:, 1]
        if support is not None:
            w = torch.zeros_like(b).masked_scatter(support, w)
        candidate = (w, 1.0 / mu, (sigma[0] + mu * sigma[1]) / mu)
        violation = _cagrad_kkt(gramian.detach(), b.detach(), radius, *_detached(candidate))
        if violation < best_violation:
            best, best_violation = candidate, violation
    return best, best_violation


def _detached(values: tuple) -> tuple:
    """Detach every tensor of a tuple."""
    return tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in values)


def _cagrad_kkt(g_hat: torch.Tensor, b: torch.Tensor, r: float, w: torch.Tensor, lam, tau) -> float:
    """Largest violation of CAGrad's dual KKT conditions at ``(w, λ, τ)``."""
    gap = g_hat @ (b + lam * w) - tau
    # Per task: |gap| on the support (stationarity), max(−gap, 0) off it, max(−w, 0).
    per_task = torch.where(w > 0, gap.abs(), torch.maximum(-gap, -w).clamp(min=0.0))
    worst, squared_norm, total = torch.stack([per_task.max(), w @ g_hat @ w, w.sum()]).tolist()
    radius_gap = abs(lam * math.sqrt(max(squared_norm, 0.0)) - r) / max(r, 1e-300)
    return max(worst, abs(total - 1.0), radius_gap)


def power_root(
    gramian: torch.Tensor, alpha: float, tol: float | None = None, max_iter: int = 200
) -> torch.Tensor:
    """The positive solution ``w`` of ``G w = w^(-1/α)`` (element-wise power), ``α > 0``.

    It is the unique minimiser of the strictly convex ``½ wᵀ G w − Σ_k φ(w_k)`` with
    ``φ' (w) = w^(-1/α)`` (``φ = log`` for α = 1), found by damped Newton steps (Armijo
    backtracking on the objective, or a decrease of the residual where round-off hides
    the objective's decrease; kept positive) from the solution for a diagonal Gramian.
    A final Newton step with autograd gives the implicit derivative in ``G``. For K = 2
    and α = 1 the root has a closed form (:func:`moopt._two_tasks.power_root`), used instead.

    Raises:
        ValueError: when some task's gradient is zero (no positive solution exists).
        RuntimeError: when Newton's method does not converge (no positive solution, e.g. a
            singular Gramian with a positive null vector).
    """
    tol = default_tolerance(gramian.dtype) if tol is None else tol
    if alpha == 1.0 and gramian.shape[0] == 2:
        return _two_tasks.power_root(gramian, tol)
    diagonal = gramian.detach().diagonal()
    if bool((diagonal <= 0).any()):
        zero = (diagonal <= 0).nonzero().flatten().tolist()
        raise ValueError(
            f"gradients of tasks {zero} are zero: G w = w^(-1/alpha) has no positive solution"
        )
    exponent = -1.0 / alpha

    def residual(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return g @ w - w.pow(exponent)

    def merit(g: torch.Tensor, w: torch.Tensor) -> float:
        potential = w.log() if alpha == 1.0 else w.pow(1.0 + exponent) / (1.0 + exponent)
        return float(0.5 * w @ g @ w - potential.sum())

    with torch.no_grad():
        g = gramian.detach()
        w = diagonal.pow(-alpha / (alpha + 1.0))
        power = w.pow(exponent)
        res = g @ w - power
        size = None  # ‖res‖ at w, when the line search that reached w computed it
        current = None  # the merit at w, likewise
        converged = False
        for _ in range(max_iter):
            relative = float((res.abs() / power).max())
            if relative <= tol:
                converged = True
                break
            if not math.isfinite(relative):  # w overflowed or underflowed
                break
            hessian = g + torch.diag(-exponent * w.pow(exponent - 1.0))
            step_solution, info = torch.linalg.solve_ex(hessian, res)
            direction = -step_solution
            boundary = torch.where(direction < 0, -w / direction, torch.inf).min()
            numbers = [info.to(g.dtype), boundary, res @ direction]
            if size is None:
                numbers.append(res.norm())
            # One copy to the host for the branch decisions of this step.
            failed, boundary, slope, *rest = torch.stack(numbers).tolist()
            if failed != 0:
                break
            size = rest[0] if rest else size
            step = min(1.0, 0.99 * boundary)
            while True:
                # Accept on a decrease of the residual (checked first: it is needed for the
                # next step anyway) or of the merit (Armijo); otherwise halve the step.
                trial = w + step * direction
                trial_power = trial.pow(exponent)
                trial_res = g @ trial - trial_power
                trial_size = float(trial_res.norm())
                trial_merit = None
                if trial_size < size:
                    break
                if current is None:
                    current = merit(g, w)
                trial_merit = merit(g, trial)
                if trial_merit <= current + 1e-4 * step * slope:
                    break
                step /= 2.0
                if step < 1e-30:
                    break
            w, power, res, size, current = trial, trial_power, trial_res, trial_size, trial_merit
        if not converged:
            raise RuntimeError(
                "G w = w^(-1/alpha) has no positive solution to tolerance "
                f"{tol:g} (is the Gramian singular, e.g. opposite or zero gradients?)"
            )
    if not gramian.requires_grad:
        return w
    hessian = gramian + torch.diag(-exponent * w.pow(exponent - 1.0))
    return w - torch.linalg.solve(hessian, residual(gramian, w))
