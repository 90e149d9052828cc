"""Closed forms of the Gramian methods for two tasks (K = 2).

With two tasks every method's K×K problem has a closed form in the four entries of
``G = [[a, b], [c, d]]`` (``a = ‖g1‖²``, ``d = ‖g2‖²``, ``b = c = g1·g2``). Each function
here equals the general solver of its method (``moopt._solvers`` or the K×K linear algebra
in ``moopt.gradsurgery``) up to round-off, and returns ``None`` where it does not apply
(degenerate cases that the general path handles: rank-deficient ``G`` for the
pseudo-inverse and eigenvalue methods), so that the caller falls back to it. The tests
in ``tests/test_two_tasks.py`` compare every closed form with the general path.

Why: the general paths launch 20–150 small torch ops (2–5 µs each) for a 2×2 problem.
Here the entries are copied to the host once (:func:`pair_entries`) and the branches and
arithmetic run on Python floats, then one tensor is built; when derivatives flow through
``G`` (reverse or forward mode) the same formulas run on 0-d tensors of ``G`` instead, so
the weights keep their derivative (branch decisions always use the floats). Python floats
are float64: for a float32 ``G`` the closed forms are computed more accurately than the
float32 general path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.autograd import forward_ad

Scalar = float | torch.Tensor
"""A Python float, or a 0-d tensor of the Gramian when the weights need a derivative."""

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def tracked(tensor: torch.Tensor) -> bool:
    """Whether derivatives flow through ``tensor``: it requires grad (reverse mode,
    ``torch.func.grad``) or carries a forward-mode tangent (``forward_ad``,
    ``torch.func.jvp``)."""
    return tensor.requires_grad or forward_ad.unpack_dual(tensor).tangent is not None


def pair_entries(gramian: torch.Tensor) -> tuple[tuple[float, ...], Sequence[Scalar]]:
    """The entries ``(a, b, c, d)`` of a 2×2 ``gramian`` as Python floats (one copy to the
    host, for the branches), and the values to compute with: the same floats, or 0-d float64
    tensors of ``gramian`` when derivatives flow through it (:func:`tracked`), so that both
    compute in float64 (``a·d`` of a float32 ``G`` with entries of 1e20 or 1e-30 would
    overflow or underflow in float32)."""
    (a, b), (c, d) = gramian.detach().tolist()
    floats = (a, b, c, d)
    if tracked(gramian):  # in float64 like the floats: products of float32 entries overflow
        return floats, gramian.to(torch.float64).reshape(4).unbind()
    return floats, floats


def pair_vector(first: Scalar, second: Scalar, like: torch.Tensor) -> torch.Tensor:
    """The vector ``(first, second)`` with ``like``'s dtype and device; in ``like``'s graph
    when derivatives flow through ``like`` (:func:`tracked`)."""
    if not tracked(like):
        return host_tensor((first, second), like)
    pair = (first, second)
    vector = torch.stack([torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in pair])
    # Constant weights (e.g. no projection active) stay in G's graph with a zero derivative,
    # as the general solvers' weights do.
    return vector if tracked(vector) else vector + 0.0 * like.sum()


def host_tensor(values: Sequence, like: torch.Tensor) -> torch.Tensor:
    """A tensor of the (nested) Python floats ``values`` with ``like``'s dtype and device."""
    if like.device.type == "cpu" and like.dtype in _NUMPY_DTYPES:
        # from_numpy is about 2 µs faster than torch.tensor for a few numbers.
        return torch.from_numpy(np.array(values, dtype=_NUMPY_DTYPES[like.dtype]))
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def sqrt(value: Scalar) -> Scalar:
    """``sqrt(max(value, 0))`` of a float or a tensor."""
    if isinstance(value, torch.Tensor):
        return value.clamp(min=0.0).sqrt()
    return math.sqrt(max(value, 0.0))


def value(scalar: Scalar) -> float:
    """The float value of a scalar (for a branch)."""
    return float(scalar.detach()) if isinstance(scalar, torch.Tensor) else scalar


def eigenvalues(floats: Sequence[float]) -> tuple[float, float]:
    """``(λ_min, λ_max)`` of the symmetric part of a 2×2 matrix, in float64.

    ``λ_max = t + sqrt(h² + o²)`` with ``t``, ``h`` half the trace and half the difference
    of the diagonal and ``o`` the mean off-diagonal entry; ``λ_min = det / λ_max`` (no
    cancellation for a nearly singular matrix).
    """
    a, b, c, d = floats
    off = 0.5 * (b + c)
    largest = 0.5 * (a + d) + math.hypot(0.5 * (a - d), off)
    if largest <= 0.0:
        return 0.5 * (a + d) - math.hypot(0.5 * (a - d), off), largest
    return (a * d - off * off) / largest, largest


def full_rank(floats: Sequence[float], dtype: torch.dtype, margin: float = 64.0) -> bool:
    """Whether ``λ_min > margin · 2 · eps · λ_max > 0``: ``G`` is clearly of rank 2 for the
    rank tests of ``torch.linalg.pinv`` / Aligned-MTL (which drop eigenvalues at or below
    ``2 · eps · λ_max``). The margin keeps the closed form away from the threshold, where
    round-off decides the rank; below it the general path runs."""
    smallest, largest = eigenvalues(floats)
    return largest > 0.0 and smallest > margin * 2.0 * torch.finfo(dtype).eps * largest


def min_norm(gramian: torch.Tensor) -> torch.Tensor:
    """MGDA's min-norm weights for K = 2: ``γ = clip((d − b) / (a + d − 2b), 0, 1)``,
    ``w = (γ, 1 − γ)``; ``(½, ½)`` when ``a + d − 2b ≤ 0`` (equal gradients)."""
    floats, (a, b, _, d) = pair_entries(gramian)
    curvature = floats[0] + floats[3] - 2.0 * floats[1]
    if not curvature > 0.0:
        return pair_vector(0.5, 0.5, gramian)
    gamma = (floats[3] - floats[1]) / curvature
    if gamma <= 0.0:
        return pair_vector(0.0, 1.0, gramian)
    if gamma >= 1.0:
        return pair_vector(1.0, 0.0, gramian)
    gamma = (d - b) / (a + d - 2.0 * b)
    return pair_vector(gamma, 1.0 - gamma, gramian)


def _dual_cone_column(
    floats: Sequence[float], values: Sequence[Scalar], u1: float, u2: float
) -> tuple[Scalar, Scalar]:
    """``v = argmin_{v ≥ u} vᵀ G v`` for K = 2 and ``u ≥ 0``.

    For ``u ≥ 0`` at most one constraint of ``G u ≥ 0`` fails (two failing would need
    ``det G < 0``). Where ``(G u)_1 < 0`` the first entry is freed: ``v = (−b u2 / a, u2)``
    (``(G v)_1 = 0``, ``(G v)_2 = u2 det G / a ≥ 0``, ``v1 > u1``: the KKT conditions);
    symmetrically for the second; otherwise ``v = u``. These are the free-set solves of
    :func:`moopt._solvers.dual_cone_weights`.
    """
    fa, fb, fc, fd = floats
    a, b, c, d = values
    if fa > 0.0 and fa * u1 + fb * u2 < 0.0:
        return -b * u2 / a, u2
    if fd > 0.0 and fc * u1 + fd * u2 < 0.0:
        return u1, -c * u1 / d
    return u1, u2


def upgrad(gramian: torch.Tensor, pref: Sequence[float]) -> torch.Tensor:
    """UPGrad's weights for K = 2: ``w = Σ_i v^{(i)}`` with ``u^{(i)} = p_i e_i``, i.e.
    ``w = (p1 + p2 max(0, −b)/a, p2 + p1 max(0, −c)/d)`` (a term is 0 when its gradient is).

    Also PCGrad's weights for K = 2 with ``p = (1, 1)`` (reduction "sum"): ``g2`` projected
    onto ``{x : g1·x ≥ 0}`` adds ``max(0, −b)/a`` of ``g1``.
    """
    floats, values = pair_entries(gramian)
    p1, p2 = pref
    first = _dual_cone_column(floats, values, p1, 0.0)
    second = _dual_cone_column(floats, values, 0.0, p2)
    return pair_vector(first[0] + second[0], first[1] + second[1], gramian)


def dual_proj(gramian: torch.Tensor, pref: Sequence[float]) -> torch.Tensor:
    """DualProj's weights for K = 2: ``w = argmin_{v ≥ p} vᵀ G v`` (:func:`_dual_cone_column`)."""
    floats, values = pair_entries(gramian)
    return pair_vector(*_dual_cone_column(floats, values, *pref), gramian)


def imtlg(gramian: torch.Tensor) -> torch.Tensor | None:
    """IMTL-G's weights for K = 2 and ``G`` of rank 2: ``w = (n2, n1) / (n1 + n2)``,
    ``n_k = ‖g_k‖``.

    ``G⁻¹ n ∝ adj(G) n = (d n1 − b n2, a n2 − c n1) = (n1 n2 − b) (n2, n1)`` (``a = n1²``,
    ``d = n2²``), and ``n1 n2 − b > 0`` for non-colinear gradients (Cauchy–Schwarz), so the
    normalised ``G⁺ n`` is ``(n2, n1)/(n1 + n2)``. ``None`` (use the pseudo-inverse) when
    ``G`` is not clearly of rank 2.
    """
    floats, (a, _, _, d) = pair_entries(gramian)
    if not full_rank(floats, gramian.dtype):
        return None
    n1, n2 = sqrt(a), sqrt(d)
    total = n1 + n2
    return pair_vector(n2 / total, n1 / total, gramian)


def aligned_mtl(
    gramian: torch.Tensor, pref: Sequence[float], scale_mode: str
) -> torch.Tensor | None:
    """Aligned-MTL's weights for K = 2 and ``G`` of rank 2: ``w = sqrt(s) G^{-1/2} p``.

    For a 2×2 positive definite ``G`` with ``δ = sqrt(det G)`` and ``t = sqrt(tr G + 2δ)``,
    ``G^{1/2} = (G + δ I)/t`` and (Cayley–Hamilton) ``G^{-1/2} = ((tr G + δ) I − G)/(δ t)``.
    The scale ``s`` is the smaller eigenvalue for ``"min"`` and ``"median"`` (torch's median
    of two values is the lower one), so ``sqrt(s)/δ = 1/sqrt(λ_max)``, and ``tr G / 2`` for
    ``"rmse"``. ``None`` (use ``eigh``) when ``G`` is not clearly of rank 2.
    """
    floats, (a, b, c, d) = pair_entries(gramian)
    if not full_rank(floats, gramian.dtype):
        return None
    p1, p2 = pref
    trace = a + d
    root_det = sqrt(a * d - b * c)
    root_trace = sqrt(trace + 2.0 * root_det)
    if scale_mode == "rmse":
        factor = sqrt(0.5 * trace) / (root_det * root_trace)
    else:
        largest = 0.5 * trace + sqrt(0.25 * (a - d) * (a - d) + b * c)
        factor = 1.0 / (sqrt(largest) * root_trace)
    shifted = trace + root_det
    first = factor * (shifted * p1 - (a * p1 + b * p2))
    second = factor * (shifted * p2 - (c * p1 + d * p2))
    return pair_vector(first, second, gramian)


def config(gramian: torch.Tensor, pref: Sequence[float]) -> torch.Tensor | None:
    """ConFIG's weights for K = 2 with non-zero, non-colinear gradients.

    The unit Gramian is ``Ĝ = [[1, ρ], [ρ, 1]]`` (``ρ = b/(n1 n2)``), so
    ``Ĝ⁻¹ p ∝ (p1 − ρ p2, p2 − ρ p1)`` and ``y ∝ ((p1 − ρ p2)/n1, (p2 − ρ p1)/n2)``; the
    positive factor ``1/(1 − ρ²)`` cancels in ``w = y (1ᵀ G y)/(yᵀ G y)``. ``None`` (use
    the pseudo-inverse) when a gradient is zero or ``Ĝ`` is not clearly of rank 2.
    """
    floats, (a, b, c, d) = pair_entries(gramian)
    fa, fb, _, fd = floats
    if not (fa > 0.0 and fd > 0.0):
        return None
    cosine = fb / math.sqrt(fa * fd)
    unit = (1.0, cosine, cosine, 1.0)
    if not full_rank(unit, gramian.dtype):
        return None
    p1, p2 = pref
    n1, n2 = sqrt(a), sqrt(d)
    rho = b / (n1 * n2)
    y1, y2 = (p1 - rho * p2) / n1, (p2 - rho * p1) / n2
    gy1, gy2 = a * y1 + b * y2, c * y1 + d * y2
    squared_length = y1 * gy1 + y2 * gy2  # > 0: Ĝ is positive definite and p ≠ 0
    factor = (gy1 + gy2) / squared_length
    return pair_vector(factor * y1, factor * y2, gramian)


def gradvac(
    gramian: torch.Tensor, targets: Sequence[float], beta: float, eps: float
) -> tuple[torch.Tensor, tuple[float, float]]:
    """GradVac's weights for K = 2 and the new EMA targets ``(φ̂_12, φ̂_21)``.

    Each task has one other task, so the random order plays no part and there is one
    round: with ``φ = b/(n1 n2 + ε)`` (``n_k = ‖g_k‖``) and ``targets = (φ̂_12, φ̂_21)``,
    task i adds ``n_i (φ̂_ij sqrt(1 − φ²) − φ sqrt(1 − φ̂_ij²))/(n_j sqrt(1 − φ̂_ij²) + ε)``
    of ``g_j`` when ``φ < φ̂_ij``; the targets become ``(1 − β) φ̂_ij + β φ``.
    """
    _, (a, b, c, d) = pair_entries(gramian)
    norms = (sqrt(a), sqrt(d))
    weights: list[Scalar] = [1.0, 1.0]
    new_targets = []
    for i, j, inner in ((0, 1, b), (1, 0, c)):
        goal = targets[i]
        cosine = inner / (norms[i] * norms[j] + eps)
        new_targets.append((1.0 - beta) * goal + beta * value(cosine))
        if not value(cosine) < goal:
            continue
        root_goal = math.sqrt(max(1.0 - goal * goal, 0.0))
        shift = norms[i] * (goal * sqrt(1.0 - cosine * cosine) - cosine * root_goal)
        weights[j] = weights[j] + shift / (norms[j] * root_goal + eps)
    return pair_vector(*weights, gramian), (new_targets[0], new_targets[1])


def power_root(gramian: torch.Tensor, tol: float) -> torch.Tensor:
    """The positive root of ``G w = 1/w`` for K = 2 (FairGrad with α = 1).

    Multiplying each equation by its ``w_k`` gives ``a w1² = d w2²``, so with
    ``r = sqrt(a/d)``: ``w2 = r w1`` and ``w1 = 1/sqrt(a + m r)``, with ``m = (b + c)/2``. A
    positive root exists iff ``sqrt(a d) + m > 0`` (the gradients are not opposite); within
    ``tol`` of zero (relative to ``sqrt(a d)``) it is refused, as Newton's method of
    :func:`moopt._solvers.power_root` would fail there. That method converges to this root.

    Raises:
        ValueError: when a gradient is zero (no positive root).
        RuntimeError: when the two gradients are opposite to within ``tol``.
    """
    floats, values = pair_entries(gramian)
    _refuse_zero_gradients(floats, "G w = w^(-1/alpha) has no positive solution")
    return pair_vector(*_root_of_two(floats, values, tol), gramian)


def nash_mtl(gramian: torch.Tensor, tol: float) -> torch.Tensor:
    """Nash-MTL's weights for K = 2: the root of ``Ĝ w = 1/w`` with ``Ĝ = G/‖G‖_F``.

    The root scales as ``w(G/s) = sqrt(s) w(G)``, so it is ``sqrt(‖G‖_F)`` times the root
    of :func:`power_root`.

    Raises:
        ValueError: when a gradient is zero.
        RuntimeError: when the two gradients are opposite to within ``tol``.
    """
    floats, (a, b, c, d) = pair_entries(gramian)
    _refuse_zero_gradients(floats, "Nash-MTL has no solution")
    first, second = _root_of_two(floats, (a, b, c, d), tol)
    scale = sqrt(sqrt(a * a + b * b + c * c + d * d))
    return pair_vector(scale * first, scale * second, gramian)


def _refuse_zero_gradients(floats: Sequence[float], consequence: str) -> None:
    """Raise ``ValueError`` naming the tasks whose gradient is zero (``G_kk ≤ 0``)."""
    zero = [k for k, diagonal in enumerate((floats[0], floats[3])) if not diagonal > 0.0]
    if zero:
        raise ValueError(f"gradients of tasks {zero} are zero: {consequence}")


def _root_of_two(
    floats: Sequence[float], values: Sequence[Scalar], tol: float
) -> tuple[Scalar, Scalar]:
    """``(w1, w2)`` of :func:`power_root`."""
    a, b, c, d = values
    geometric = math.sqrt(floats[0] * floats[3])
    if not geometric + 0.5 * (floats[1] + floats[2]) > tol * geometric:
        raise RuntimeError(
            "G w = w^(-1/alpha) has no positive solution to tolerance "
            f"{tol:g} (is the Gramian singular, e.g. opposite or zero gradients?)"
        )
    ratio = sqrt(a / d)
    weight = 1.0 / sqrt(a + 0.5 * (b + c) * ratio)
    return weight, ratio * weight


def cagrad(gramian: torch.Tensor, c: float, tol: float) -> torch.Tensor | None:
    """CAGrad's weights ``b + λ w`` for K = 2 (``b = (½, ½)``, ``r = c ‖g0‖``), before the
    rescaling, where the dual optimum ``w = (γ, 1 − γ)`` is a vertex or interior; ``None``
    otherwise (colinear gradients with an interior optimum, a Pareto-stationary pair with
    ``g_w = 0``: :func:`moopt._solvers.cagrad_dual` handles them). ``r = 0`` gives ``b``.

    Vertex ``e_k`` (``λ = r/‖g_k‖``): optimal when the dual objective
    ``F(w) = wᵀ G b + r ‖Jᵀw‖`` does not decrease towards the other vertex j,
    ``(G b)_j − (G b)_k + r (G_jk − G_kk)/‖g_k‖ ≥ 0`` (the KKT conditions at ``e_k``).
    Interior (with ``A = a + d − 2m``, ``B = m − d``, ``Δ = a d − m²``, ``m = (b + c)/2``):
    ``‖Jᵀw‖² = ((Aγ + B)² + Δ)/A`` and ``F' = 0`` where
    ``(Aγ + B)/sqrt((Aγ + B)² + Δ) = τ = ((G b)_2 − (G b)_1)/(r sqrt(A))``, so
    ``γ = (τ sqrt(Δ/(1 − τ²)) − B)/A`` and ``λ = r sqrt(A (1 − τ²)/Δ)``; used when ``A``,
    ``Δ`` and ``1 − τ²`` are clearly positive (relative ``tol``) and ``γ`` lies inside
    ``(tol, 1 − tol)``. Both are the closed-form KKT points that the general solver accepts.
    """
    _, (a, b, cc, d) = pair_entries(gramian)
    linear = (0.5 * (a + b), 0.5 * (cc + d))  # G b
    radius = c * sqrt(0.5 * (linear[0] + linear[1]))  # c sqrt(bᵀ G b)
    if value(radius) == 0.0:
        return pair_vector(0.5, 0.5, gramian)
    for k, j, cross_jk, diagonal_k in ((0, 1, cc, a), (1, 0, b, d)):
        if not value(diagonal_k) > 0.0:
            continue
        norm_k = sqrt(diagonal_k)
        if value(linear[j] - linear[k] + radius * (cross_jk - diagonal_k) / norm_k) >= 0.0:
            weights: list[Scalar] = [0.5, 0.5]
            weights[k] = 0.5 + radius / norm_k
            return pair_vector(*weights, gramian)
    cross = 0.5 * (b + cc)
    curvature = a + d - 2.0 * cross
    determinant = a * d - cross * cross
    if not (value(curvature) > tol * value(a + d) and value(determinant) > tol * value(a * d)):
        return None
    tau = (linear[1] - linear[0]) / (radius * sqrt(curvature))
    room = 1.0 - tau * tau
    if not value(room) > tol:
        return None
    gamma = (tau * sqrt(determinant / room) - (cross - d)) / curvature
    if not tol < value(gamma) < 1.0 - tol:
        return None
    scale = radius * sqrt(curvature * room / determinant)
    return pair_vector(0.5 + scale * gamma, 0.5 + scale * (1.0 - gamma), gramian)
