"""Gradient-level combiners: pure functions of the K×D matrix J of per-task gradients.

Every class is a :class:`~moopt._base.GradientCombiner` (``aggregate(J) -> d``) and works
with ``combiner.backward(losses, params)``. Where the update is a combination
``d = Σ_k w_k g_k`` the class is a :class:`~moopt._base.GramianWeighting`: it only sees the
K×K Gramian ``G = J Jᵀ`` through ``weights(G)``, and ``aggregate(J) = weights(J Jᵀ) @ J``.

Small per-step problems (min-norm point, dual-cone projections, the CAGrad dual, the Nash
bargaining equations) are solved in torch on the Gramian's device (``moopt._solvers``),
never with cvxpy. Weights are differentiable in ``G`` wherever the method allows; each
docstring says where it does not.

Shared conventions, tested in ``tests/test_gradsurgery.py``:

* ``J`` must be a 2-D floating tensor (``G`` square); NaN or infinite gradients raise a
  ``ValueError`` naming the tasks (detected on the diagonal of ``G``: a NaN or infinity in
  row k of J makes ``G_kk`` non-finite).
* K = 1 is allowed: every method returns a non-negative multiple of the single gradient.
* All-zero gradients give a zero update (Nash-MTL and FairGrad raise instead: their
  equations have no solution).
* Colinear (rank-deficient) gradients are handled by each method's rank-deficient rule.

Agreement with TorchJD 0.18 (``tests/test_gradsurgery_torchjd.py``, to 1e-5 relative):
PCGrad and GradVac (same random orders), GradDrop (same random draws), UPGrad and DualProj
(TorchJD with an exact projector: its default quadprog projector adds ``1e-4·I`` to the
trace-normalised Gramian, a different problem), IMTL-G, Aligned-MTL (``pref = 1/K``),
ConFIG and FairGrad coincide. Not to 1e-5:

* CAGrad (``rescale=0``): same definition, but TorchJD solves the dual with Clarabel at its
  default tolerances and is off by up to ~1e-4 relative; compared at 1e-3, and moopt is
  checked against a tight cvxpy primal instead.
* MGDA: TorchJD runs Frank–Wolfe stopped at a step of 1e-3, not the exact min-norm point;
  moopt's update is checked to be no longer than TorchJD's, and equal to cvxpy's.
* Nash-MTL: TorchJD stops its cvxpy/ECOS sequential convex programme at a residual of 1e-3
  (and keeps warm-start state); moopt solves ``Ĝ w = 1/w`` exactly, checked against
  these equations (and FairGrad, the same equations on G, against scipy).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from moopt import _solvers, _two_tasks
from moopt._base import GradientCombiner, GramianWeighting
from moopt._validation import as_weight_vector, check_choice, check_positive

__all__ = [
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "UPGrad",
]


SMALL_GRAMIAN = 8
"""Up to this K, :func:`check_gramian` tests the entries on the host (one copy) rather than
with three torch ops, which cost more for a small Gramian."""


def check_jacobian(jacobian: object, n_tasks: int | None = None) -> torch.Tensor:
    """Check that ``jacobian`` is a K×D floating tensor (K matching ``n_tasks`` if given)."""
    if not isinstance(jacobian, torch.Tensor):
        raise TypeError(f"jacobian must be a torch.Tensor; got {type(jacobian).__name__}")
    if jacobian.dim() != 2 or jacobian.shape[0] == 0:
        raise ValueError(
            "jacobian must be a 2-D tensor of shape (K, D) with one row per task; "
            f"got shape {tuple(jacobian.shape)}"
        )
    if not torch.is_floating_point(jacobian):
        raise TypeError(f"jacobian must be floating point; got dtype {jacobian.dtype}")
    if n_tasks is not None and jacobian.shape[0] != n_tasks:
        raise ValueError(
            f"jacobian has {jacobian.shape[0]} rows (tasks); this combiner expects {n_tasks}"
        )
    return jacobian


def check_gramian(gramian: object, n_tasks: int | None = None) -> torch.Tensor:
    """Check that ``gramian`` is a finite K×K floating tensor (non-finite: bad gradients)."""
    if not isinstance(gramian, torch.Tensor):
        raise TypeError(f"gramian must be a torch.Tensor; got {type(gramian).__name__}")
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] == 0:
        raise ValueError(
            f"gramian must be a square K×K tensor G = J Jᵀ; got shape {tuple(gramian.shape)}"
        )
    if not torch.is_floating_point(gramian):
        raise TypeError(f"gramian must be floating point; got dtype {gramian.dtype}")
    if n_tasks is not None and gramian.shape[0] != n_tasks:
        raise ValueError(f"gramian is {gramian.shape[0]}×{gramian.shape[0]}; expected K={n_tasks}")
    if gramian.shape[0] <= SMALL_GRAMIAN:
        entries = itertools.chain.from_iterable(gramian.detach().tolist())
        all_finite = all(map(math.isfinite, entries))
    else:
        all_finite = bool(torch.isfinite(gramian.detach()).all())
    if not all_finite:
        finite = torch.isfinite(gramian.detach())
        diagonal = torch.isfinite(gramian.detach().diagonal())
        bad = (~diagonal).nonzero().flatten().tolist() or (
            ~finite.all(dim=1)
        ).nonzero().flatten().tolist()
        raise ValueError(
            f"the gradients of tasks {bad} contain NaN or infinite values (non-finite Gramian)"
        )
    return gramian


def _preference(pref: object, name: str = "pref") -> torch.Tensor | None:
    """Validate an optional non-negative preference vector."""
    return None if pref is None else as_weight_vector(pref, name=name).detach()


def _resolve_preference(
    pref: torch.Tensor | None, n_tasks: int, like: torch.Tensor, default: float
) -> torch.Tensor:
    """The preference vector on ``like``'s device and dtype (``default`` everywhere if None)."""
    if pref is None:
        return torch.full((n_tasks,), default, dtype=like.dtype, device=like.device)
    _check_preference_length(pref, n_tasks)
    return pref.to(dtype=like.dtype, device=like.device)


def _preference_floats(pref: torch.Tensor | None, n_tasks: int, default: float) -> list[float]:
    """The preference vector as Python floats (for the two-task closed forms)."""
    if pref is None:
        return [default] * n_tasks
    _check_preference_length(pref, n_tasks)
    return pref.tolist()


def _check_preference_length(pref: torch.Tensor, n_tasks: int) -> None:
    if pref.numel() != n_tasks:
        raise ValueError(f"pref has {pref.numel()} entries but there are {n_tasks} tasks")


class _Gramian(GramianWeighting):
    """Shared input checks and the K = 2 dispatch: subclasses implement
    :meth:`_solve_general` on a validated Gramian, and :meth:`_solve_pair` where they have a
    two-task closed form."""

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """Task weights ``w`` (K entries) of the update ``d = Σ_k w_k g_k``."""
        return self.solve(check_gramian(gramian, self.n_tasks))

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """``weights(J Jᵀ) @ J``."""
        check_jacobian(jacobian, self.n_tasks)
        return self.weights(jacobian @ jacobian.T) @ jacobian

    def solve(self, gramian: torch.Tensor) -> torch.Tensor:
        """Weights from a checked Gramian: for K = 2 the method's closed form
        (:meth:`_solve_pair`) where it applies, else its general solver."""
        if gramian.shape[0] == 2:
            closed = self._solve_pair(gramian)
            if closed is not None:
                return closed
        return self._solve_general(gramian)

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor | None:
        """The K = 2 closed form (:mod:`moopt._two_tasks`), or ``None`` where it does not
        apply (then :meth:`_solve_general` runs)."""
        return None

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        """Weights from a checked Gramian of any K (implemented by each method)."""
        raise NotImplementedError


class PCGrad(_Gramian):
    r"""PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020).

    Algorithm 1: for every task i, start from ``g_i^PC = g_i`` and visit the other tasks j
    in a random order (drawn independently for each i); whenever ``g_i^PC · g_j < 0``,
    project: ``g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j``. The update is
    ``Σ_i g_i^PC`` (``reduction="sum"``, the paper) or its mean (``"mean"``).

    Computed on the Gramian: ``g_i^PC = Σ_k C_ik g_k`` and ``g_i^PC · g_j = (C G)_ij``, so
    the weights are ``w = Σ_i C_i``; all tasks i advance through their orders together.

    With K = 2 there is no randomness and PCGrad equals :class:`UPGrad` with preference
    ``pref=[1, 1]`` (reduction "sum") or the default mean preference (reduction "mean"):
    projecting ``g_1`` onto the half-space ``{x : g_2·x ≥ 0}`` lands in the dual cone
    ``{x : g_1·x ≥ 0, g_2·x ≥ 0}`` (Cauchy–Schwarz), so it is the projection onto that cone.
    For K = 2 the weights are computed in that closed form,
    ``w = (1 + max(0, −G12)/G11, 1 + max(0, −G21)/G22)`` (halved for "mean";
    :func:`moopt._two_tasks.upgrad`), equal to the rounds of the general code up to
    round-off; no order is drawn, since each task has only one other.

    Deviations: the official TensorFlow code (tianheyu927/PCGrad) never shuffles — it
    visits the tasks in their given order — while the paper (and this class) draws a
    random order per task. A task with a zero gradient is never projected onto (its inner
    products are zero). Weights are differentiable in ``G`` for the drawn order (almost
    everywhere: the projection test ``< 0`` is a discontinuity); the order is random.

    Args:
        reduction: ``"sum"`` or ``"mean"`` of the projected gradients.
        generator: a ``torch.Generator`` for the orders (``None``: the global RNG).
        n_tasks: expected K, or ``None``.
    """

    def __init__(
        self,
        reduction: str = "sum",
        generator: torch.Generator | None = None,
        n_tasks: int | None = None,
    ) -> None:
        super().__init__(n_tasks)
        self.reduction = check_choice(reduction, "reduction", ("sum", "mean"))
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        self.generator = generator

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor:
        share = 0.5 if self.reduction == "mean" else 1.0
        return _two_tasks.upgrad(gramian, (share, share))

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        orders = torch.stack([torch.randperm(n, generator=self.generator) for _ in range(n)])
        orders = orders.to(gramian.device)
        rows = torch.arange(n, device=gramian.device)
        coefficients = torch.eye(n, dtype=gramian.dtype, device=gramian.device)
        squared_norms = gramian.diagonal()
        # Gathered once, one entry per round: −‖g_j‖² for j = orders[i, p], infinite where
        # task i would visit itself, so that its shift is zero.
        denominators = -torch.where(squared_norms > 0, squared_norms, 1.0)[orders]
        denominators = torch.where(orders != rows[:, None], denominators, -torch.inf).unbind(1)
        for others, denominator in zip(orders.unbind(1), denominators):
            inner = torch.linalg.vecdot(coefficients, gramian.index_select(0, others))
            # −inner / ‖g_j‖² where the projected gradient conflicts with g_j, else 0.
            shift = inner.clamp(max=0.0) / denominator
            coefficients = coefficients.index_put((rows, others), shift, accumulate=True)
        weights = coefficients.sum(dim=0)
        return weights / n if self.reduction == "mean" else weights


class MGDA(_Gramian):
    r"""MGDA: the min-norm point of the convex hull of the task gradients.

    Désidéri (2012), "Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization"; Sener & Koltun (NeurIPS 2018), "Multi-Task Learning as Multi-Objective
    Optimization" (official code: isl-org/MultiObjectiveOptimization). With ``N`` the
    diagonal of gradient normalisers,

    .. math:: w = \arg\min_{w ∈ Δ} \|Σ_k w_k g_k / N_k\|^2, \qquad d = Σ_k w_k g_k,

    solved *exactly* (to the tolerance of :func:`moopt._solvers.min_norm_simplex`), not by
    the official Frank–Wolfe loop that stops after 250 iterations or a step of 1e-5.
    ``normalization`` picks ``N_k`` as in the official ``gradient_normalizers``: ``"none"``
    (1), ``"l2"`` (``‖g_k‖``), ``"loss"`` (``L_k``), ``"loss+"`` (``L_k ‖g_k‖``). As in the
    official code the normalisers are used only to solve for the weights, which then
    multiply the raw gradients. A normaliser of zero (a zero gradient, for "l2"/"loss+")
    leaves that gradient as it is (zero), where the official code would divide by zero.

    The "loss" variants need the loss values: in :meth:`backward` they are the
    combiner's ``loss_values`` (averaged across ranks under ``torch.distributed``), and
    :meth:`weights`/:meth:`aggregate` take them as ``losses=``; they must be positive.
    ``backward(losses, features=h)`` is MGDA-UB (Sener & Koltun, Sec. 3.3).
    Non-conflicting: ``g_k · d ≥ ‖d‖² ≥ 0`` for every k (normalisation "none"). Weights are
    differentiable in ``G`` for a fixed support of ``w`` (implicit derivative).

    Args:
        normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
        n_tasks: expected K, or ``None``.
    """

    def __init__(self, normalization: str = "none", n_tasks: int | None = None) -> None:
        super().__init__(n_tasks)
        self.normalization = check_choice(
            normalization, "normalization", ("none", "l2", "loss", "loss+")
        )

    def weights(self, gramian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        """Min-norm weights; ``losses`` are required for the "loss" normalisations."""
        gramian = check_gramian(gramian, self.n_tasks)
        if self.normalization == "none":
            return _solvers.min_norm_simplex(gramian)
        normalizers = self._normalizers(gramian, losses)
        inverse = torch.where(normalizers > 0, 1.0 / normalizers.clamp(min=1e-300), 1.0)
        return _solvers.min_norm_simplex(gramian * inverse[:, None] * inverse[None, :])

    def aggregate(self, jacobian: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        """``weights(J Jᵀ, losses) @ J``."""
        check_jacobian(jacobian, self.n_tasks)
        return self.weights(jacobian @ jacobian.T, losses) @ jacobian

    def _normalizers(self, gramian: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
        norms = gramian.diagonal().clamp(min=0.0).sqrt()
        if self.normalization == "none":
            return torch.ones_like(norms)
        if self.normalization == "l2":
            return norms
        losses = self.loss_values if losses is None else losses
        if losses is None:
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) needs the loss values: call "
                "backward(losses, ...) or pass losses= to weights()/aggregate()"
            )
        losses = losses.detach().to(dtype=gramian.dtype, device=gramian.device).reshape(-1)
        if losses.numel() != gramian.shape[0]:
            raise ValueError(f"losses has {losses.numel()} entries; expected {gramian.shape[0]}")
        if not bool((losses > 0).all()) or not bool(torch.isfinite(losses).all()):
            raise ValueError(
                f"MGDA(normalization={self.normalization!r}) needs finite positive losses; "
                f"got {losses.tolist()}"
            )
        return losses if self.normalization == "loss" else losses * norms


class CAGrad(_Gramian):
    r"""CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., 2021).

    With ``g0 = Σ_k g_k / K`` and ``r = c ‖g0‖``, CAGrad maximises the worst task
    improvement near the mean gradient, ``max_d min_k g_k·d  s.t.  ‖d − g0‖ ≤ r``, through
    its dual ``min_{w ∈ Δ} g_w·g0 + r ‖g_w‖`` (``g_w = Σ w_k g_k``):
    ``d = g0 + (r / ‖g_w‖) g_w``. The official code (Cranial-XIX/CAGrad) then divides by
    ``1 + c²`` (``rescale=1``, its default), by ``1 + c`` (``rescale=2``) or not at all
    (``rescale=0``).

    Deviations: the dual is solved exactly in torch (:func:`moopt._solvers.cagrad_dual`:
    closed form on the support found by projected gradient; for two tasks directly, where
    the optimum is a vertex or interior, :func:`moopt._two_tasks.cagrad`, equal to the
    general solver up to round-off) instead of scipy's SLSQP; the
    official ``1e-8`` guards inside the square roots are left out. ``g0 = 0`` gives
    ``d = 0``. At a Pareto-stationary J (0 in the hull of the gradients, e.g. one task's
    gradient is zero) the dual optimum can be ``g_w = 0``, where the formula is undefined
    and every non-conflicting ``d`` in the ball is optimal: with ``c ≥ 1`` this returns
    ``d = 0`` (as TorchJD), with ``c < 1`` the optimum nearest ``g0`` (``g0`` projected
    onto ``{d : J d ≥ 0}``; ``g0`` itself when it conflicts with no task, which is what
    the official code's division by ``‖g_w‖ + 1e-8`` yields). Guarantee (tested): for
    ``rescale=0``, ``‖d − g0‖ ≤ r`` and ``min_k g_k·d ≥ min_k g_k·g0``. Weights are
    differentiable in ``G`` for a fixed support of ``w``.

    Args:
        c: radius factor ``c ≥ 0`` (``alpha`` in the official code; 0 is the mean gradient).
        rescale: 0, 1 or 2, as in the official code.
        n_tasks: expected K, or ``None``.
    """

    def __init__(self, c: float = 0.5, rescale: int = 1, n_tasks: int | None = None) -> None:
        super().__init__(n_tasks)
        self.c = check_positive(c, "c", allow_zero=True)
        if rescale not in (0, 1, 2) or isinstance(rescale, bool):
            raise ValueError(f"rescale must be 0, 1 or 2; got {rescale!r}")
        self.rescale = rescale

    def solve(self, gramian: torch.Tensor) -> torch.Tensor:
        weights = super().solve(gramian)
        if self.rescale == 1:
            return weights / (1.0 + self.c**2)
        if self.rescale == 2:
            return weights / (1.0 + self.c)
        return weights

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor | None:
        return _two_tasks.cagrad(gramian, self.c, _solvers.default_tolerance(gramian.dtype))

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        anchor = torch.full((n,), 1.0 / n, dtype=gramian.dtype, device=gramian.device)
        radius = self.c * (anchor @ gramian @ anchor).clamp(min=0.0).sqrt()
        return _solvers.cagrad_dual(gramian, anchor, radius)


class NashMTL(_Gramian):
    r"""Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022).

    The Nash bargaining solution: weights ``w > 0`` with ``Ĝ w = 1/w`` (element-wise),
    where ``Ĝ = G / ‖G‖_F`` is normalised as in the official code (AvivNavon/nash-mtl);
    then, when ``max_norm > 0`` and ``‖Σ_k w_k g_k‖ > max_norm``, ``w`` is scaled down so
    that the update has norm ``max_norm``.

    Deviations from the official code: the equations are solved exactly by Newton's method
    on the strictly convex ``½ wᵀĜw − Σ log w_k`` (:func:`moopt._solvers.power_root`; in
    closed form for two tasks) instead of 20 rounds of a linearised cvxpy/ECOS problem that
    stop at a residual of 1e-3; so there is no warm-start state and no
    ``update_weights_every``. The official code clips the *parameters'* gradient norm with
    ``clip_grad_norm_``; here the same bound is applied to the update vector itself, as
    TorchJD does. A zero gradient or a singular Gramian with a positive null vector (e.g.
    two opposite gradients) leaves the equations without a positive solution: ``ValueError``
    / ``RuntimeError``. Weights are differentiable in ``G`` (implicit derivative; the
    clipping is differentiable too).

    Args:
        max_norm: bound on the update norm, ``0`` to disable (the official default is 1).
        n_tasks: expected K, or ``None``.
    """

    def __init__(self, max_norm: float = 1.0, n_tasks: int | None = None) -> None:
        super().__init__(n_tasks)
        self.max_norm = check_positive(max_norm, "max_norm", allow_zero=True)

    def solve(self, gramian: torch.Tensor) -> torch.Tensor:
        weights = super().solve(gramian)
        if self.max_norm > 0:
            norm = (weights @ gramian @ weights).clamp(min=0.0).sqrt()
            if float(norm.detach()) > self.max_norm:
                weights = weights * (self.max_norm / norm)
        return weights

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor:
        return _two_tasks.nash_mtl(gramian, _solvers.default_tolerance(gramian.dtype))

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        norms = gramian.detach().diagonal()
        if bool((norms <= 0).any()):
            zero = (norms <= 0).nonzero().flatten().tolist()
            raise ValueError(f"gradients of tasks {zero} are zero: Nash-MTL has no solution")
        # Divided by its largest entry first: ‖G‖_F of a float32 G overflows for
        # entries near 1e19 and underflows near 1e-23; Ĝ (and its derivative) is unchanged.
        scaled = gramian / gramian.detach().abs().amax()
        normalized = scaled / torch.linalg.matrix_norm(scaled)
        return _solvers.power_root(normalized, alpha=1.0)


class IMTLG(_Gramian):
    r"""IMTL-G, "Towards Impartial Multi-task Learning" (Liu et al., ICLR 2021), gradient part.

    The update ``d = Σ_k w_k g_k`` with ``Σ_k w_k = 1`` whose projections on the unit
    gradients are all equal: ``d · g_k/‖g_k‖ = const``. On the Gramian:
    ``w ∝ G⁺ n`` with ``n_k = ‖g_k‖``, normalised to sum to one. This is the paper's closed
    form ``α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹`` for full-rank gradients, generalised (as in Quinton &
    Rey 2024) by the pseudo-inverse when G is rank-deficient. When ``Σ_k (G⁺n)_k = 0``
    (e.g. all gradients zero) the weights are zero. The paper has no public official code.
    For K = 2 and G of rank 2 the weights are ``(‖g2‖, ‖g1‖)/(‖g1‖ + ‖g2‖)``
    (:func:`moopt._two_tasks.imtlg`, equal to the pseudo-inverse form up to round-off).
    Weights are differentiable in ``G`` while its rank is constant.

    Args:
        n_tasks: expected K, or ``None``.
    """

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor | None:
        return _two_tasks.imtlg(gramian)

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        norms = gramian.diagonal().clamp(min=0.0).sqrt()
        direction = torch.linalg.pinv(gramian, hermitian=True) @ norms
        total = direction.sum()
        # Relative to Σ_k |(G⁺n)_k|: G⁺n scales as ‖g‖⁻¹, so the test does not depend on
        # the gradients' scale (nor is any K = 3 update dropped where K = 2 keeps it).
        if float(total.detach().abs()) <= 1e-12 * float(direction.detach().abs().sum()):
            return torch.zeros_like(direction)
        return direction / total


class AlignedMTL(_Gramian):
    r"""Aligned-MTL, "Independent Component Alignment for Multi-Task Learning"
    (Senushkin et al., CVPR 2023).

    Aligns the gradients to an orthogonal system with equal magnitudes: with the
    eigen-decomposition ``G = V Λ Vᵀ`` restricted to the R eigenvalues above
    ``λ_max·K·eps`` (``torch.linalg.eigh``; the official SamsungLabs/MTL code used the
    removed ``torch.symeig``), the balance matrix is ``B = sqrt(s) V_R Λ_R^{-1/2} V_Rᵀ``
    and the weights are ``w = B p``. The scale ``s`` is the smallest kept eigenvalue
    (``"min"``, the paper and official default), the median (``"median"``) or the mean
    (``"rmse"``).

    ``pref`` defaults to all ones: the official code sums the aligned gradients (TorchJD
    averages them, i.e. ``pref = 1/K``). Deviation: the rank threshold uses the machine
    epsilon of G's dtype (the official code always used float32's). A zero Gramian gives
    ``w = p`` (and ``d = 0``). Weights are differentiable in ``G`` for distinct eigenvalues.
    For K = 2 and G of rank 2, ``G^{-1/2} = ((tr G + δ) I − G)/(δ sqrt(tr G + 2δ))`` with
    ``δ = sqrt(det G)`` replaces ``eigh`` (:func:`moopt._two_tasks.aligned_mtl`, equal up to
    round-off, and differentiable also for equal eigenvalues).

    Args:
        pref: non-negative preference vector ``p`` (default all ones).
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
        n_tasks: expected K, or ``None``.
    """

    def __init__(
        self, pref: object = None, scale_mode: str = "min", n_tasks: int | None = None
    ) -> None:
        super().__init__(n_tasks)
        self.pref = _preference(pref)
        self.scale_mode = check_choice(scale_mode, "scale_mode", ("min", "median", "rmse"))

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor | None:
        pair = _preference_floats(self.pref, 2, 1.0)
        return _two_tasks.aligned_mtl(gramian, pair, self.scale_mode)

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        pref = _resolve_preference(self.pref, n, gramian, 1.0)
        eigenvalues, vectors = torch.linalg.eigh(gramian)
        tolerance = eigenvalues.detach().max() * n * torch.finfo(gramian.dtype).eps
        kept = eigenvalues.detach() > tolerance
        if not bool(kept.any()):
            return pref
        eigenvalues, vectors = eigenvalues[kept], vectors[:, kept]
        if self.scale_mode == "min":
            scale = eigenvalues.min()
        elif self.scale_mode == "median":
            scale = eigenvalues.median()
        else:
            scale = eigenvalues.mean()
        balance = scale.sqrt() * (vectors / eigenvalues.sqrt()) @ vectors.T
        return balance @ pref


class _DualCone(_Gramian):
    """A weighting built on dual-cone projections with a preference vector ``pref``
    (default ``1/K``): the shared constructor of :class:`UPGrad` and :class:`DualProj`."""

    def __init__(self, pref: object = None, n_tasks: int | None = None) -> None:
        super().__init__(n_tasks)
        self.pref = _preference(pref)

    def _pref_for(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        return _resolve_preference(self.pref, n, gramian, 1.0 / n)

    def _pair_pref(self) -> list[float]:
        return _preference_floats(self.pref, 2, 0.5)


class UPGrad(_DualCone):
    r"""UPGrad, "Jacobian Descent for Multi-Objective Optimization" (Quinton & Rey, 2024).

    Each gradient is projected onto the dual cone ``C = {x : J x ≥ 0}`` and the projections
    are combined with the preference ``p`` (default ``1/K``):
    ``d = Σ_i p_i π_C(g_i)``. By their Proposition 1, ``π_C(Jᵀu) = Jᵀv`` with
    ``v = argmin_{v ≥ u} vᵀ G v``, so ``w = Σ_i v^{(i)}`` with ``u^{(i)} = p_i e_i``
    (:func:`moopt._solvers.dual_cone_weights`: FISTA, finished exactly by an active-set
    method). Non-conflicting: ``J d ≥ 0``. For K = 2 the projections have a closed form,
    equal to the solver's answer up to round-off (:func:`moopt._two_tasks.upgrad`):
    ``w = (p1 + p2 max(0, −G12)/G11, p2 + p1 max(0, −G21)/G22)``.

    Deviations from TorchJD (the authors' library): the dual-cone QPs are solved in torch
    on G's device, without TorchJD's trace normalisation and ``1e-4`` ridge on G, so the
    projection is exact rather than that of a regularised problem; weights are
    differentiable in ``G`` for a fixed active set (implicit derivative).

    Args:
        pref: non-negative preference vector (default ``1/K`` for each task).
        n_tasks: expected K, or ``None``.
    """

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor:
        return _two_tasks.upgrad(gramian, self._pair_pref())

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        return _solvers.dual_cone_weights(gramian, torch.diag(self._pref_for(gramian))).sum(1)


class DualProj(_DualCone):
    r"""DualProj: the preference-weighted gradient projected onto the dual cone.

    Quinton & Rey (2024) after Gradient Episodic Memory (Lopez-Paz & Ranzato, 2017,
    Eq. 11): ``d = π_C(Jᵀp)`` with ``C = {x : J x ≥ 0}`` and ``p`` defaulting to ``1/K``;
    ``w = argmin_{v ≥ p} vᵀ G v`` (:func:`moopt._solvers.dual_cone_weights`).
    Non-conflicting: ``J d ≥ 0``. Same deviations from TorchJD as :class:`UPGrad`. For K = 2
    in closed form (:func:`moopt._two_tasks.dual_proj`, equal to the solver up to
    round-off): ``w_i = max(p_i, −G_ij p_j / G_ii)`` for the one task i (if any) with
    ``(G p)_i < 0``, ``w = p`` otherwise.

    Args:
        pref: non-negative preference vector (default ``1/K`` for each task).
        n_tasks: expected K, or ``None``.
    """

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor:
        return _two_tasks.dual_proj(gramian, self._pair_pref())

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        pref = self._pref_for(gramian).unsqueeze(1)
        return _solvers.dual_cone_weights(gramian, pref).squeeze(1)


class GradVac(_Gramian):
    r"""GradVac, "Gradient Vaccine" (Wang et al., ICLR 2021), whole-model variant.

    Keeps an EMA target ``φ̂_ij`` (initially 0) of the cosine similarity between tasks.
    For every task i, the other tasks j are visited in a random order; with
    ``φ_ij = cos(g_i^PC, g_j)``, when ``φ_ij < φ̂_ij``:

    .. math:: g_i^{PC} ← g_i^{PC} + \frac{‖g_i^{PC}‖ (φ̂_{ij}\sqrt{1-φ_{ij}^2}
              − φ_{ij}\sqrt{1-φ̂_{ij}^2})}{‖g_j‖ \sqrt{1-φ̂_{ij}^2}} g_j,

    and always ``φ̂_ij ← (1 − β) φ̂_ij + β φ_ij``. The update is ``Σ_i g_i^PC``. Computed
    on the Gramian as in :class:`PCGrad` (coefficients ``C`` with ``g_i^PC = Σ_k C_ik
    g_k``). ``eps`` is added to the two denominators, as in LibMTL/TorchJD. The paper has
    no public official code; this follows its Algorithm 1 with a single φ̂ per task pair
    (the paper also groups by layer). The EMA state is a buffer; :meth:`reset` clears it,
    and a different K raises until it is reset. Not differentiable through the state; the
    weights of one call are differentiable a.e. in ``G`` for the drawn orders. For K = 2 each
    task has one other, so no order is drawn and the single round is computed in closed form
    (:func:`moopt._two_tasks.gradvac`, equal to the general rounds up to round-off).

    Args:
        beta: EMA rate in [0, 1].
        eps: non-negative constant added to denominators.
        generator: a ``torch.Generator`` for the orders (``None``: the global RNG).
        n_tasks: expected K, or ``None``.
    """

    def __init__(
        self,
        beta: float = 0.5,
        eps: float = 1e-8,
        generator: torch.Generator | None = None,
        n_tasks: int | None = None,
    ) -> None:
        super().__init__(n_tasks)
        beta = check_positive(beta, "beta", allow_zero=True)
        if beta > 1:
            raise ValueError(f"beta must be in [0, 1]; got {beta}")
        self.beta = beta
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.generator = generator
        self.register_buffer("target", None)

    def reset(self) -> None:
        """Forget the EMA targets φ̂ (the next call starts from zero)."""
        self.target = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A fresh GradVac has no targets yet: make room for the saved ones before loading.
        saved = state_dict.get(prefix + "target")
        if saved is not None and self.target is None:
            self.target = torch.empty_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def solve(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        if self.target is None:
            self.target = torch.zeros(n, n, dtype=gramian.dtype, device=gramian.device)
        elif self.target.shape[0] != n:
            raise ValueError(
                f"GradVac holds EMA state for {self.target.shape[0]} tasks but got {n}; "
                "call reset() before changing the number of tasks"
            )
        return super().solve(gramian)

    def _target_like(self, gramian: torch.Tensor) -> torch.Tensor:
        return self.target.to(dtype=gramian.dtype, device=gramian.device)

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        target = self._target_like(gramian)
        rows = torch.arange(n, device=gramian.device)
        shuffled = torch.stack([torch.randperm(n - 1, generator=self.generator) for _ in range(n)])
        # Task i visits the others: a permutation of 0..n-2 with the entries ≥ i shifted up.
        orders = (shuffled + (shuffled >= torch.arange(n)[:, None])).to(gramian.device)
        coefficients = torch.eye(n, dtype=gramian.dtype, device=gramian.device)
        norms = gramian.diagonal().clamp(min=0.0).sqrt()
        # Gathered once, one column per round: ‖g_j‖, φ̂_ij and the terms made of them,
        # for j = orders[i, p].
        norms_of_other = norms[orders]
        goals = target.gather(1, orders)
        root_goals = (1.0 - goals * goals).clamp(min=0.0).sqrt()
        denominators = norms_of_other * root_goals + self.eps
        kept_goals = (1.0 - self.beta) * goals
        rounds = zip(
            orders.unbind(1),
            norms_of_other.unbind(1),
            goals.unbind(1),
            root_goals.unbind(1),
            denominators.unbind(1),
            kept_goals.unbind(1),
        )
        cosines = []
        for others, norm_j, goal, root_goal, denominator, kept_goal in rounds:
            projected = coefficients @ gramian
            inner = projected[rows, others]
            norm_i = torch.linalg.vecdot(projected, coefficients).clamp(min=0.0).sqrt()
            cosine = inner / (norm_i * norm_j + self.eps)
            root_cos = (1.0 - cosine * cosine).clamp(min=0.0).sqrt()
            shift = norm_i * (goal * root_cos - cosine * root_goal) / denominator
            shift = torch.where(cosine < goal, shift, 0.0)
            coefficients = coefficients.index_put((rows, others), shift, accumulate=True)
            cosines.append(kept_goal + self.beta * cosine)
        new_target = target.detach().clone()
        if cosines:
            new_target.scatter_(1, orders, torch.stack(cosines, dim=1).detach())
        self.target = new_target
        return coefficients.sum(dim=0)

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor:
        target = self._target_like(gramian)
        (keep_1, goal_12), (goal_21, keep_2) = target.detach().tolist()
        weights, (new_12, new_21) = _two_tasks.gradvac(
            gramian, (goal_12, goal_21), self.beta, self.eps
        )
        self.target = _two_tasks.host_tensor([[keep_1, new_12], [new_21, keep_2]], target)
        return weights


class GradDrop(GradientCombiner):
    r"""GradDrop, "Just Pick a Sign" (Chen et al., NeurIPS 2020), Algorithm 1, lines 10–15.

    Per coordinate, the gradient positive sign purity
    ``P = ½ (1 + Σ_k g_k / Σ_k |g_k|)`` (``½`` where every gradient is zero) is compared
    with ``U ~ Uniform(0, 1)``: task k keeps its coordinate when
    ``f(P) > U and g_k > 0`` or ``f(P) < U and g_k < 0``, and
    ``d = Σ_k (ℓ_k + (1 − ℓ_k) M_k) ⊙ g_k`` with leak ``ℓ``.

    Not a Gramian method: it needs J. Deviations: the paper applies GradDrop to the
    gradients of a shared activation layer and batch-separates the sign purity; here (as in
    TorchJD) it acts on the per-task parameter gradients (use ``features=`` for the
    activation form). Not differentiable in the masks (random sign choice); the update is
    linear in J for fixed masks.

    Args:
        f: monotonically increasing function applied to ``P`` (identity by default).
        leak: optional K leak values in [0, 1] (default 0).
        generator: a ``torch.Generator`` for ``U`` (``None``: the global RNG).
        n_tasks: expected K, or ``None``.
    """

    def __init__(
        self,
        f: Callable[[torch.Tensor], torch.Tensor] | None = None,
        leak: object = None,
        generator: torch.Generator | None = None,
        n_tasks: int | None = None,
    ) -> None:
        super().__init__(n_tasks)
        if f is not None and not callable(f):
            raise TypeError(f"f must be callable; got {type(f).__name__}")
        self.f = f
        self.leak = None if leak is None else as_weight_vector(leak, "leak", allow_zero_sum=True)
        if self.leak is not None and bool((self.leak > 1).any()):
            raise ValueError(f"leak values must be in [0, 1]; got {self.leak.tolist()}")
        self.generator = generator

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """The GradDrop update of the K×D per-task gradients."""
        check_jacobian(jacobian, self.n_tasks)
        n = jacobian.shape[0]
        if self.leak is not None and self.leak.numel() != n:
            raise ValueError(f"leak has {self.leak.numel()} entries but there are {n} tasks")
        # With g⁺ = (g + |g|)/2 and g⁻ = (g − |g|)/2, every sum needs only J and |J|.
        absolute = jacobian.abs()
        total, magnitude = jacobian.sum(dim=0), absolute.sum(dim=0)
        if not bool(torch.isfinite(magnitude.detach()).all()):
            bad = (~torch.isfinite(jacobian.detach()).all(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"the gradients of tasks {bad} contain NaN or infinite values")
        ratio = total.detach() / torch.where(magnitude > 0, magnitude, 1.0).detach()
        purity = 0.5 * (1.0 + ratio)
        if self.f is not None:
            purity = self.f(purity)
        uniform = torch.rand(jacobian.shape[1], generator=self.generator, dtype=jacobian.dtype).to(
            jacobian.device
        )
        keep_positive = (purity > uniform).to(jacobian.dtype)
        keep_negative = (purity < uniform).to(jacobian.dtype)
        # Σ_k (ℓ_k + (1 − ℓ_k) M_k) g_k, with M_k g_k = keep⁺ g_k⁺ + keep⁻ g_k⁻.
        if self.leak is not None:
            leak = self.leak.to(dtype=jacobian.dtype, device=jacobian.device)
            masked = 1.0 - leak
            total, magnitude = masked @ jacobian, masked @ absolute
        update = 0.5 * (keep_positive * (total + magnitude) + keep_negative * (total - magnitude))
        return update if self.leak is None else update + leak @ jacobian


class ConFIG(_Gramian):
    r"""ConFIG, "Towards Conflict-free Training of Physics Informed Neural Networks"
    (Liu et al., 2024), Eq. 2.

    With unit gradients ``u_k = g_k/‖g_k‖`` (zero for zero gradients) and preference ``p``
    (default all ones, the official ``EqualWeight``), the direction ``x = U⁺ p`` (min-norm
    solution of ``U x = p``) is rescaled to length ``Σ_k g_k · x/‖x‖`` (the official
    ``ProjectionLength``): ``d = (Σ_k g_k·x̂) x̂``. On the Gramian, with ``N = diag(‖g_k‖)``
    and ``Ĝ = N⁻¹ G N⁻¹``: ``x = Jᵀ y`` with ``y = N⁻¹ Ĝ⁺ p``, so
    ``w = y · (1ᵀ G y) / (yᵀ G y)``; ``x = 0`` gives ``w = 0``.

    Deviation: the official code (tum-pbs/ConFIG) solves with ``torch.linalg.lstsq`` on the
    K×D unit matrix; the Gramian form gives the same min-norm solution (pseudo-inverse
    thresholds differ only for numerically rank-deficient gradients) at O(K²) memory.
    Weights are differentiable in ``G`` while its rank is constant. For K = 2 with non-zero,
    non-colinear gradients, ``y ∝ ((p1 − ρ p2)/‖g1‖, (p2 − ρ p1)/‖g2‖)`` with ``ρ`` their
    cosine (:func:`moopt._two_tasks.config`, equal to the pseudo-inverse form up to round-off).

    Args:
        pref: non-negative preference vector (default all ones).
        n_tasks: expected K, or ``None``.
    """

    def __init__(self, pref: object = None, n_tasks: int | None = None) -> None:
        super().__init__(n_tasks)
        self.pref = _preference(pref)

    def _solve_pair(self, gramian: torch.Tensor) -> torch.Tensor | None:
        return _two_tasks.config(gramian, _preference_floats(self.pref, 2, 1.0))

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        pref = _resolve_preference(self.pref, n, gramian, 1.0)
        norms = gramian.diagonal().clamp(min=0.0).sqrt()
        inverse = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
        unit_gramian = gramian * inverse[:, None] * inverse[None, :]
        y = inverse * (torch.linalg.pinv(unit_gramian, hermitian=True) @ pref)
        squared_length = y @ gramian @ y
        if float(squared_length.detach()) <= 0:
            return torch.zeros_like(y)
        return y * (gramian.sum(dim=0) @ y) / squared_length


class FairGrad(_Gramian):
    r"""FairGrad, "Fair Resource Allocation in Multi-Task Learning" (Ban & Ji, ICML 2024).

    α-fair weights: ``w > 0`` solving ``G w = w^{−1/α}`` (element-wise), ``d = Σ_k w_k g_k``;
    α = 1 is proportional fairness (Nash bargaining, without Nash-MTL's normalisation),
    α → 0 approaches linear scalarisation. ``alpha=0`` returns uniform weights ``1/K``.

    Deviation: the official code (OptMN-Lab/fairgrad) calls ``scipy.optimize.least_squares``
    from ``1/K`` with bounds ``(0, ∞)``; here the same root is found exactly by Newton's
    method on the strictly convex ``½ wᵀGw − Σ_k φ(w_k)`` with ``φ' = w^{−1/α}``
    (:func:`moopt._solvers.power_root`; in closed form for two tasks and α = 1), on G's
    device. Zero gradients or a singular G with
    a positive null vector leave no positive root: ``ValueError`` / ``RuntimeError``.
    Weights are differentiable in ``G`` (implicit derivative).

    Args:
        alpha: fairness parameter ``α ≥ 0``.
        n_tasks: expected K, or ``None``.
    """

    def __init__(self, alpha: float = 1.0, n_tasks: int | None = None) -> None:
        super().__init__(n_tasks)
        self.alpha = check_positive(alpha, "alpha", allow_zero=True)

    def _solve_general(self, gramian: torch.Tensor) -> torch.Tensor:
        n = gramian.shape[0]
        if self.alpha == 0:
            return torch.full((n,), 1.0 / n, dtype=gramian.dtype, device=gramian.device)
        return _solvers.power_root(gramian, alpha=self.alpha)
