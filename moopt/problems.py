"""Toy multi-objective problems in torch with analytic Pareto fronts.

Every problem maps parameters ``theta`` (last dimension ``n_params``, any leading batch
dimensions) to losses (last dimension ``n_objectives``) with :meth:`Problem.losses`, and
knows its exact answers: :meth:`Problem.pareto_front`, the ε-constraint point
(:meth:`Problem.epsilon_point`, ``min L1 s.t. L2 <= ε`` with its Lagrange multiplier) and
the Tchebycheff point (:meth:`Problem.chebyshev_point`). They serve the tests, the demo
and the frontier tracer.

* :class:`Circle` — two parameters, φ = (π/2)·sigmoid(θ₁), r = 1 + θ₂². The concave
  version has losses ``L = r·(cos^{2/p} φ, sin^{2/p} φ)`` and the front
  ``L₁^p + L₂^p = 1`` (p = 2: the quarter circle); the convex version has
  ``L = (r − cos^{2/p} φ, r − sin^{2/p} φ)`` and the front ``(1−L₁)^p + (1−L₂)^p = 1``.
  p > 1 makes the concave version concave (linear weights reach only its two ends).
* :class:`FonsecaFleming` — Fonseca & Fleming (1995) in n dimensions,
  ``L₁ = 1 − exp(−Σ (x_i − 1/√n)²)``, ``L₂ = 1 − exp(−Σ (x_i + 1/√n)²)``; concave front
  on the segment ``x_i = t``, ``t ∈ [−1/√n, 1/√n]``.
* :class:`ZDT1`, :class:`ZDT2` — Zitzler, Deb & Thiele (2000) with box bounds
  ``x ∈ [0, 1]^n`` handled by the reparametrisation ``x = sigmoid(θ)``; convex
  (``f₂ = 1 − √f₁``) and concave (``f₂ = 1 − f₁²``) fronts.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch

from moopt._validation import as_weight_vector


@dataclass(frozen=True)
class EpsilonPoint:
    """Exact solution of ``min L1 s.t. L2 <= eps``: its losses and the multiplier λ*.

    λ* is the Lagrange multiplier of the constraint (``∇L1 + λ*·∇L2 = 0``), i.e. minus
    the slope ``dL1/dL2`` of the front at that point; 0 when the constraint is inactive.
    """

    losses: torch.Tensor
    multiplier: float


class Problem(abc.ABC):
    """A toy problem with an analytic Pareto front (see the module docstring)."""

    n_params: int
    n_objectives: int

    @abc.abstractmethod
    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        """Losses of ``theta`` (``[..., n_params]``) as a ``[..., n_objectives]`` tensor."""

    @abc.abstractmethod
    def pareto_front(self, n_points: int) -> torch.Tensor:
        """``n_points`` points of the exact front (float64), ordered by increasing L2."""

    @abc.abstractmethod
    def epsilon_point(self, eps: float) -> EpsilonPoint:
        """Exact solution of ``min L1 s.t. L2 <= eps`` (see :class:`EpsilonPoint`)."""

    @abc.abstractmethod
    def sample_init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random initial parameter vectors, ``[n, n_params]`` (float64)."""

    @abc.abstractmethod
    def _front_at(self, t: float) -> tuple[float, float]:
        """The front point at position ``t ∈ [0, 1]`` (L1 decreasing, L2 increasing in t)."""

    def chebyshev_point(
        self, weights: torch.Tensor | list[float], ideal: torch.Tensor | list[float] | None = None
    ) -> torch.Tensor:
        """Exact minimiser of ``max_k w_k (L_k − z_k)`` over the problem (its losses).

        On a connected two-objective front where L1 falls as L2 rises, the minimiser is
        where the ray from the ideal point z along 1/w meets the front, i.e.
        ``w₁(L₁ − z₁) = w₂(L₂ − z₂)``; found by bisection along the front to 1e-12. When
        the ray misses the front, the nearer end of the front is returned.
        """
        w = as_weight_vector(weights, "weights", n_tasks=2).double()
        z = torch.zeros(2, dtype=torch.float64) if ideal is None else torch.as_tensor(ideal)
        if z.shape != (2,):
            raise ValueError(f"ideal must have shape (2,); got {tuple(z.shape)}")
        w1, w2 = float(w[0]), float(w[1])
        z1, z2 = float(z[0]), float(z[1])

        def gap(t: float) -> float:
            l1, l2 = self._front_at(t)
            return w1 * (l1 - z1) - w2 * (l2 - z2)

        lo, hi = 0.0, 1.0
        if gap(lo) <= 0:
            return torch.tensor(self._front_at(lo), dtype=torch.float64)
        if gap(hi) >= 0:
            return torch.tensor(self._front_at(hi), dtype=torch.float64)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if gap(mid) > 0:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-13:
                break
        return torch.tensor(self._front_at(0.5 * (lo + hi)), dtype=torch.float64)

    def _check_theta(self, theta: torch.Tensor) -> None:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a torch.Tensor; got {type(theta).__name__}")
        if theta.dim() == 0 or theta.shape[-1] != self.n_params:
            raise ValueError(
                f"theta must have last dimension n_params={self.n_params}; "
                f"got shape {tuple(theta.shape)}"
            )

    @staticmethod
    def _check_n_points(n_points: int) -> None:
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
            raise ValueError(f"n_points must be an int >= 2; got {n_points!r}")


class Circle(Problem):
    """The circle problem (concave by default) with a superellipse exponent ``p``.

    Args:
        p: the front is ``L₁^p + L₂^p = 1`` (concave version) or
            ``(1−L₁)^p + (1−L₂)^p = 1`` (convex version). Must lie in (0, 2]: for p > 2
            the gradient of ``cos^{2/p} φ`` is unbounded at the ends.
        convex: use the convex version ``L = (r − cos^{2/p} φ, r − sin^{2/p} φ)``.
    """

    n_params = 2
    n_objectives = 2

    def __init__(self, p: float = 2.0, convex: bool = False) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 2:
            raise ValueError(f"p must be a number in (0, 2]; got {p!r}")
        self.p = float(p)
        self.convex = bool(convex)

    def __repr__(self) -> str:
        return f"Circle(p={self.p}, convex={self.convex})"

    def _unit(self, phi: torch.Tensor) -> torch.Tensor:
        exponent = 2.0 / self.p
        return torch.stack([torch.cos(phi) ** exponent, torch.sin(phi) ** exponent], dim=-1)

    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        self._check_theta(theta)
        phi = 0.5 * math.pi * torch.sigmoid(theta[..., 0])
        radius = (1.0 + theta[..., 1] ** 2).unsqueeze(-1)
        unit = self._unit(phi)
        return radius - unit if self.convex else radius * unit

    def _front_at(self, t: float) -> tuple[float, float]:
        phi = 0.5 * math.pi * t
        u1 = math.cos(phi) ** (2.0 / self.p)
        u2 = math.sin(phi) ** (2.0 / self.p)
        if self.convex:
            return 1.0 - u2, 1.0 - u1
        return u1, u2

    def pareto_front(self, n_points: int) -> torch.Tensor:
        self._check_n_points(n_points)
        return torch.tensor(
            [self._front_at(i / (n_points - 1)) for i in range(n_points)], dtype=torch.float64
        )

    def epsilon_point(self, eps: float) -> EpsilonPoint:
        p = self.p
        if self.convex:
            if eps >= 1.0:
                return EpsilonPoint(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.0)
            if eps <= 0.0:
                raise ValueError(f"eps must be positive (L2 >= 0 on this problem); got {eps}")
            u2 = 1.0 - eps
            u1 = (1.0 - u2**p) ** (1.0 / p)
            return EpsilonPoint(
                torch.tensor([1.0 - u1, eps], dtype=torch.float64), (u2 / u1) ** (p - 1)
            )
        if eps >= 1.0:
            return EpsilonPoint(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.0)
        if eps <= 0.0:
            raise ValueError(f"eps must be positive (L2 >= 0 on this problem); got {eps}")
        l1 = (1.0 - eps**p) ** (1.0 / p)
        return EpsilonPoint(torch.tensor([l1, eps], dtype=torch.float64), (eps / l1) ** (p - 1))

    def sample_init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform on [−2, 2]²: φ covers most of (0, π/2), r up to 5."""
        return 4.0 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 2.0


class FonsecaFleming(Problem):
    """Fonseca & Fleming (1995) in ``n`` dimensions (concave front).

    ``L₁ = 1 − exp(−Σᵢ (xᵢ − 1/√n)²)``, ``L₂ = 1 − exp(−Σᵢ (xᵢ + 1/√n)²)``. With
    ``s = √n·t`` on the Pareto set ``xᵢ = t``, the front is
    ``(1 − e^{−(s−1)²}, 1 − e^{−(s+1)²})`` for ``s ∈ [−1, 1]``.
    """

    n_objectives = 2

    def __init__(self, n: int = 2) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}")
        self.n_params = n

    def __repr__(self) -> str:
        return f"FonsecaFleming(n={self.n_params})"

    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        self._check_theta(theta)
        shift = 1.0 / math.sqrt(self.n_params)
        l1 = 1.0 - torch.exp(-((theta - shift) ** 2).sum(-1))
        l2 = 1.0 - torch.exp(-((theta + shift) ** 2).sum(-1))
        return torch.stack([l1, l2], dim=-1)

    @staticmethod
    def _at_s(s: float) -> tuple[float, float]:
        return 1.0 - math.exp(-((s - 1.0) ** 2)), 1.0 - math.exp(-((s + 1.0) ** 2))

    def _front_at(self, t: float) -> tuple[float, float]:
        return self._at_s(2.0 * t - 1.0)

    def pareto_front(self, n_points: int) -> torch.Tensor:
        self._check_n_points(n_points)
        return torch.tensor(
            [self._front_at(i / (n_points - 1)) for i in range(n_points)], dtype=torch.float64
        )

    def epsilon_point(self, eps: float) -> EpsilonPoint:
        top = 1.0 - math.exp(-4.0)
        if eps >= top:
            return EpsilonPoint(torch.tensor(self._at_s(1.0), dtype=torch.float64), 0.0)
        if eps <= 0.0:
            raise ValueError(f"eps must be positive (L2 >= 0 on this problem); got {eps}")
        s = math.sqrt(-math.log(1.0 - eps)) - 1.0
        multiplier = ((1.0 - s) * math.exp(-((s - 1.0) ** 2))) / (
            (1.0 + s) * math.exp(-((s + 1.0) ** 2))
        )
        return EpsilonPoint(torch.tensor(self._at_s(s), dtype=torch.float64), multiplier)

    def sample_init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform on [−1.5, 1.5]ⁿ, around the Pareto set."""
        return 3.0 * torch.rand(n, self.n_params, generator=generator, dtype=torch.float64) - 1.5


class SphereOctant:
    """Three losses on the positive octant of the unit sphere (a DTLZ2-like concave front).

    Parameters ``θ = (θ₁, θ₂, z₁ … z_m)``: angles ``a = (π/2)·tri(θ₁)``,
    ``b = (π/2)·tri(θ₂)`` and a distance ``g = Σ z_i²``; losses
    ``L = (1 + g)·(cos a cos b, cos a sin b, sin a)``. This is DTLZ2 (Deb et al. 2002) with
    its box ``x ∈ [0, 1]²`` replaced by the triangle wave ``tri(θ) = |((θ − 1) mod 2) − 1|``
    (a reflection at the box faces), so θ is unconstrained and the edges of the octant are
    reached at finite θ with a gradient of constant size. Smooth maps such as a sigmoid or
    ``sin²θ`` make the edges stationary points in θ: a run that reaches an edge (an ε
    bound at its tightest) can never leave it when the bound is then loosened. The front
    is ``‖L‖ = 1, L ≥ 0``: concave, so linear weights reach only its three corners.

    Args:
        n_distance: m, the number of distance parameters (``n_params = 2 + m``).
    """

    n_objectives = 3

    def __init__(self, n_distance: int = 1) -> None:
        if isinstance(n_distance, bool) or not isinstance(n_distance, int) or n_distance < 0:
            raise ValueError(f"n_distance must be a non-negative int; got {n_distance!r}")
        self.n_distance = n_distance
        self.n_params = 2 + n_distance

    def __repr__(self) -> str:
        return f"SphereOctant(n_distance={self.n_distance})"

    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        """``[..., n_params]`` parameters to ``[..., 3]`` losses."""
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a torch.Tensor; got {type(theta).__name__}")
        if theta.dim() == 0 or theta.shape[-1] != self.n_params:
            raise ValueError(
                f"theta must have last dimension n_params={self.n_params}; "
                f"got shape {tuple(theta.shape)}"
            )
        x = (torch.remainder(theta[..., :2] - 1.0, 2.0) - 1.0).abs()
        a = 0.5 * math.pi * x[..., 0]
        b = 0.5 * math.pi * x[..., 1]
        radius = 1.0 + (theta[..., 2:] ** 2).sum(-1)
        unit = torch.stack(
            [torch.cos(a) * torch.cos(b), torch.cos(a) * torch.sin(b), torch.sin(a)], -1
        )
        return radius.unsqueeze(-1) * unit

    def pareto_front(self, n_points: int) -> torch.Tensor:
        """Front points ``w/‖w‖`` for the simplex lattice with ``n_points`` per edge."""
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
            raise ValueError(f"n_points must be an int >= 2; got {n_points!r}")
        d = n_points - 1
        rows = [(i, j, d - i - j) for i in range(d + 1) for j in range(d + 1 - i)]
        lattice = torch.tensor(rows, dtype=torch.float64)
        return lattice / lattice.norm(dim=1, keepdim=True)

    def epsilon_point(self, eps: tuple[float, float] | list[float]) -> EpsilonPoint:
        """Exact ``min L1 s.t. L2 <= ε₂, L3 <= ε₃``; ``eps = (ε₂, ε₃)``.

        With ``ε₂² + ε₃² <= 1`` both bounds are active: ``L = (√(1−ε₂²−ε₃²), ε₂, ε₃)`` and
        the multipliers ``λ_j = ε_j / L1`` (``−∂L1/∂ε_j``; infinite at ``L1 = 0``, returned
        as ``inf``). Otherwise ``L1 = 0`` and every point of the arc ``L2² + L3² = 1``
        inside the box is a minimiser; the one on the ray towards ``(ε₂, ε₃)`` is returned,
        with multipliers 0. ``multiplier`` is a tuple of the two here.
        """
        e2, e3 = (float(v) for v in eps)
        if e2 < 0 or e3 < 0:
            raise ValueError(f"eps must be non-negative (L >= 0 on this problem); got {eps}")
        rest = 1.0 - e2**2 - e3**2
        if rest >= 0:
            l1 = math.sqrt(rest)
            lam = (e2 / l1, e3 / l1) if l1 > 0 else (math.inf, math.inf)
            return EpsilonPoint(torch.tensor([l1, e2, e3], dtype=torch.float64), lam)
        norm = math.hypot(e2, e3)
        return EpsilonPoint(
            torch.tensor([0.0, e2 / norm, e3 / norm], dtype=torch.float64), (0.0, 0.0)
        )

    def chebyshev_point(
        self,
        weights: torch.Tensor | list[float],
        ideal: torch.Tensor | list[float] | None = None,
    ) -> torch.Tensor:
        """Exact minimiser of ``max_k w_k (L_k − z_k)`` for positive weights.

        It is where the ray ``z + t/w`` (t > 0) meets the sphere: the positive root of
        ``‖z + t d‖² = 1`` with ``d = 1/w``. Zero weights make the minimiser non-unique
        (a ``ValueError``); ``ideal`` (z) must lie inside the unit ball, ``z >= 0``.
        """
        w = as_weight_vector(weights, "weights", n_tasks=3).detach().double()
        if bool((w <= 0).any()):
            raise ValueError(
                f"weights must be positive (zero weights: no unique point); got {w.tolist()}"
            )
        z = (
            torch.zeros(3, dtype=torch.float64)
            if ideal is None
            else torch.as_tensor(ideal, dtype=torch.float64)
        )
        if z.shape != (3,) or bool((z < 0).any()) or float(z.norm()) >= 1:
            raise ValueError(
                f"ideal must be 3 non-negative values inside the unit ball; got {z.tolist()}"
            )
        d = 1.0 / w
        a, b, c = float(d @ d), float(2 * z @ d), float(z @ z) - 1.0
        t = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
        return z + t * d

    def sample_init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Angles' θ uniform on [0.1, π/2 − 0.1] (inside the octant), distance z on [−1, 1]."""
        u = torch.rand(n, self.n_params, generator=generator, dtype=torch.float64)
        low = torch.tensor([0.1, 0.1] + [-1.0] * self.n_distance, dtype=torch.float64)
        high = torch.tensor(
            [0.5 * math.pi - 0.1] * 2 + [1.0] * self.n_distance, dtype=torch.float64
        )
        return low + (high - low) * u


class _ZDT(Problem):
    """Common part of ZDT1 and ZDT2 (Zitzler, Deb & Thiele 2000).

    Decision variables ``x ∈ [0, 1]^n``: ``f₁ = x₁``, ``g = 1 + 9/(n−1)·Σ_{i≥2} xᵢ``,
    ``f₂ = g·h(f₁/g)``. The Pareto set is ``x₂ = … = xₙ = 0`` (``g = 1``), the front
    ``f₂ = h(f₁)`` for ``f₁ ∈ [0, 1]``.

    Box bounds by reparametrisation: :meth:`losses` takes unconstrained ``θ`` and
    evaluates at ``x = sigmoid(θ)``, so any gradient method stays in the box;
    :meth:`evaluate` takes ``x`` itself (what pymoo's ``get_problem("zdt1")`` evaluates).
    The front is reached only in the limit ``θᵢ → −∞`` (``i ≥ 2``): under Adam ``θᵢ``
    falls at a constant rate, so ``xᵢ`` and ``g − 1`` shrink geometrically.
    """

    n_objectives = 2

    def __init__(self, n: int = 30) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n (number of decision variables) must be an int >= 2; got {n!r}")
        self.n_params = n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n_params})"

    @staticmethod
    @abc.abstractmethod
    def _h(ratio: torch.Tensor) -> torch.Tensor:
        """``h(f₁/g)``, so that ``f₂ = g·h(f₁/g)``."""

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Objectives ``(f₁, f₂)`` of decision vectors ``x ∈ [0, 1]^n`` (batched)."""
        self._check_theta(x)
        f1 = x[..., 0]
        g = 1.0 + 9.0 * x[..., 1:].sum(-1) / (self.n_params - 1)
        return torch.stack([f1, g * self._h(f1 / g)], dim=-1)

    def losses(self, theta: torch.Tensor) -> torch.Tensor:
        self._check_theta(theta)
        return self.evaluate(torch.sigmoid(theta))

    def _front_at(self, t: float) -> tuple[float, float]:
        f1 = 1.0 - t
        return f1, float(self._h(torch.tensor(f1, dtype=torch.float64)))

    def pareto_front(self, n_points: int) -> torch.Tensor:
        self._check_n_points(n_points)
        return torch.tensor(
            [self._front_at(i / (n_points - 1)) for i in range(n_points)], dtype=torch.float64
        )

    def sample_init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``θ = logit(u)`` with ``u`` uniform on the box (clipped to [1e-6, 1 − 1e-6])."""
        u = torch.rand(n, self.n_params, generator=generator, dtype=torch.float64)
        u = u.clamp(1e-6, 1.0 - 1e-6)
        return torch.log(u) - torch.log1p(-u)


class ZDT1(_ZDT):
    """ZDT1: ``h(r) = 1 − √r``, convex front ``f₂ = 1 − √f₁``.

    ε-constraint point of ``min f₁ s.t. f₂ ≤ ε`` (ε ∈ (0, 1)): ``f₁ = (1 − ε)²`` with
    multiplier ``λ* = −df₁/df₂ = 2(1 − ε)``.
    """

    @staticmethod
    def _h(ratio: torch.Tensor) -> torch.Tensor:
        return 1.0 - torch.sqrt(ratio)

    def epsilon_point(self, eps: float) -> EpsilonPoint:
        if eps >= 1.0:
            return EpsilonPoint(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.0)
        if eps < 0.0:
            raise ValueError(f"eps must be non-negative (f2 >= 0 on the front); got {eps}")
        return EpsilonPoint(
            torch.tensor([(1.0 - eps) ** 2, eps], dtype=torch.float64), 2.0 * (1.0 - eps)
        )


class ZDT2(_ZDT):
    """ZDT2: ``h(r) = 1 − r²``, concave front ``f₂ = 1 − f₁²``.

    ε-constraint point of ``min f₁ s.t. f₂ ≤ ε`` (ε ∈ (0, 1)): ``f₁ = √(1 − ε)`` with
    multiplier ``λ* = −df₁/df₂ = 1 / (2√(1 − ε))``.
    """

    @staticmethod
    def _h(ratio: torch.Tensor) -> torch.Tensor:
        return 1.0 - ratio**2

    def epsilon_point(self, eps: float) -> EpsilonPoint:
        if eps >= 1.0:
            return EpsilonPoint(torch.tensor([0.0, 1.0], dtype=torch.float64), 0.0)
        if eps < 0.0:
            raise ValueError(f"eps must be non-negative (f2 >= 0 on the front); got {eps}")
        root = math.sqrt(1.0 - eps)
        return EpsilonPoint(torch.tensor([root, eps], dtype=torch.float64), 0.5 / root)
