"""Constraints by the Modified Differential Method of Multipliers (MDMM).

Platt & Barr, "Constrained Differential Optimization", NIPS 1988. To minimise ``L0(θ)``
subject to constraints ``g_i(θ) {==, <=, >=} b_i``, MDMM runs gradient *descent* on θ and
gradient *ascent* on one Lagrange multiplier λ per constraint element, on the damped
Lagrangian

    L(θ, λ) = L0(θ) + Σ_i λ_i·h_i(θ) + (c_i/2)·h_i(θ)²,    h_i = s_i·(g_i − b_i)

(``h_i = s_i·(b_i − g_i)`` for ``>=``), with damping ``c_i`` and scale ``s_i``. The
damping term vanishes at any feasible point, so it does not move the solution; it makes
the dynamics converge where plain descent-ascent would oscillate, and it convexifies the
Lagrangian near the solution, which is what lets MDMM reach points on *concave* parts of
a Pareto front that no linear weighting reaches.

**Ascent without a negative learning rate.** Each multiplier is an ``nn.Parameter`` with
a hook that negates its gradient, so *one* ``torch.optim`` optimizer over
``[*model.parameters(), *mdmm.parameters()]`` descends on θ and ascends on λ::

    mdmm = moopt.MDMM([moopt.Constraint("<=", bound=0.3)])
    opt = torch.optim.SGD([*model.parameters(), *mdmm.parameters()], lr=1e-2)
    out = mdmm(objective, [constraint_value])
    opt.zero_grad(); out.lagrangian.backward(); opt.step()

**Inequalities** use the clamped augmented-Lagrangian form of Rockafellar (1973) — the
slack variable eliminated in closed form — instead of the squared-slack variable of
Platt & Barr's paper:

    ψ(h, λ) = (max(0, λ + c·h)² − λ²) / (2c).

Where the constraint is active or violated (``λ + c·h > 0``) ψ equals the equality term
``λ·h + (c/2)·h²``; where it is slack, ψ = −λ²/(2c) no longer depends on θ and ascent
drives λ down to 0 at rate 1/c, so the multiplier is non-negative at every fixed point
and the fixed points are exactly the KKT points. Why not the slack form: the slack
variable adds a second, undamped oscillator per constraint that diverges at step sizes
plain gradient descent tolerates, and its multiplier can settle with the wrong sign.
Inequalities therefore need ``damping > 0``; equalities accept ``damping = 0`` (Platt &
Barr's undamped BDMM).

**Choosing damping and step size.** The solution does not depend on c; the dynamics do.
c must exceed the negative curvature of ``L0 + λ*·g`` along the constraint normal (on a
concave front, roughly ``|d²L0/dg²|``): c = 1 (the default) suffices for convex problems,
c ≈ 5–20 for concave fronts such as the circle. The stable step size of SGD shrinks as
``1 / (L_L0 + (λ* + c·|∇g|²)·…)``, so large c needs a smaller learning rate. The
multiplier moves by ``lr·h`` per step: if constraint values are tiny or huge relative to
the objective, set ``scale`` so that ``h`` is of order one (λ is then reported in the
original units as ``scale·λ``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from moopt._base import Combiner, ParamsLike, as_param_list
from moopt._validation import (
    LossesLike,
    as_loss_vector,
    carries_derivatives,
    check_choice,
    check_positive,
)

RELATIONS = ("==", "<=", ">=")


def _negate(grad: torch.Tensor) -> torch.Tensor:
    return -grad


def _as_damping(damping: float | torch.Tensor) -> torch.Tensor:
    """The damping c as a 0-d floating tensor, after checking it is finite and ≥ 0."""
    if not isinstance(damping, torch.Tensor):
        return torch.tensor(check_positive(damping, "damping", allow_zero=True))
    if damping.dim() != 0:
        raise ValueError(
            f"damping must be a number or a 0-d tensor; got shape {tuple(damping.shape)}"
        )
    if not torch.is_floating_point(damping):
        damping = damping.to(torch.get_default_dtype())
    value = float(damping.detach())
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"damping must be finite and non-negative; got {value}")
    return damping


class Constraint(nn.Module):
    """One constraint ``g(θ) == b``, ``g(θ) <= b`` or ``g(θ) >= b`` and its multipliers.

    Args:
        relation: ``"=="``, ``"<="`` or ``">="``.
        bound: the right-hand side b (a number, or a tensor broadcastable to ``shape``; a
            tensor that requires grad is kept as is, so the bound can be tuned).
        damping: c ≥ 0 in ``(c/2)·h²`` (must be > 0 for inequalities): a number or a 0-d
            tensor. It is kept as the non-persistent buffer ``damping`` (not in the state
            dict: it is a setting, like the constructor's other arguments), so
            ``torch.func.functional_call(mdmm, {"constraints.0.damping": c}, ...)`` runs
            with another c, and a tensor that requires grad is kept as is: either way the
            damping can be tuned by :mod:`moopt.hypergrad`, like the bound.
        scale: s > 0, multiplies ``g − b``; see the module docstring.
        shape: shape of the constraint value g; one multiplier per element.
    """

    bound: torch.Tensor
    damping: torch.Tensor

    def __init__(
        self,
        relation: str = "<=",
        bound: float | torch.Tensor = 0.0,
        damping: float | torch.Tensor = 1.0,
        scale: float = 1.0,
        shape: Sequence[int] | torch.Size = (),
    ) -> None:
        super().__init__()
        self.relation = check_choice(relation, "relation", RELATIONS)
        damping_tensor = _as_damping(damping)
        if relation != "==" and float(damping_tensor.detach()) == 0:
            raise ValueError(
                "damping must be positive for inequality constraints (the clamped form "
                "divides by it); got 0"
            )
        self.scale = check_positive(scale, "scale")
        try:
            self.shape = torch.Size(shape)
        except TypeError:
            raise TypeError(f"shape must be a sequence of ints; got {shape!r}") from None
        if isinstance(bound, torch.Tensor):
            if not torch.is_floating_point(bound):
                bound = bound.to(torch.get_default_dtype())
            tensor = bound
        elif isinstance(bound, (int, float)) and not isinstance(bound, bool):
            tensor = torch.tensor(float(bound))
        else:
            raise TypeError(f"bound must be a number or a tensor; got {type(bound).__name__}")
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise ValueError(f"bound must be finite; got {tensor.detach().tolist()}")
        try:
            torch.broadcast_shapes(tensor.shape, self.shape)
        except RuntimeError:
            raise ValueError(
                f"bound of shape {tuple(tensor.shape)} does not broadcast to the constraint "
                f"shape {tuple(self.shape)}"
            ) from None
        if carries_derivatives(tensor):
            self.bound = tensor
        else:
            self.register_buffer("bound", tensor.detach().clone())
        if carries_derivatives(damping_tensor):
            self.damping = damping_tensor
        else:
            self.register_buffer("damping", damping_tensor.detach().clone(), persistent=False)
        self.multiplier = nn.Parameter(torch.zeros(self.shape))
        self.multiplier.register_hook(_negate)

    def violation(self, value: torch.Tensor) -> torch.Tensor:
        """The scaled residual h: ``s·(g − b)`` (``s·(b − g)`` for ``>=``); > 0 is infeasible."""
        residual = value - self.bound.to(value)
        if self.relation == ">=":
            residual = -residual
        return self.scale * residual

    def infeasibility(self, value: torch.Tensor) -> torch.Tensor:
        """How far ``value`` is from feasible, in the units of g (0 when feasible)."""
        residual = self.violation(value.detach()) / self.scale
        return residual.abs() if self.relation == "==" else residual.clamp(min=0)

    def lagrange_multiplier(self) -> torch.Tensor:
        """The multiplier in the units of g (``scale·λ``), detached."""
        return self.scale * self.multiplier.detach()

    def penalty(self, value: torch.Tensor) -> torch.Tensor:
        """This constraint's term of the Lagrangian, summed over its elements."""
        h = self.violation(value)
        lam = self.multiplier.to(h)
        c = self.damping.to(h)
        if self.relation == "==":
            return (lam * h + 0.5 * c * h**2).sum()
        return ((torch.relu(lam + c * h) ** 2 - lam**2) / (2 * c)).sum()

    def extra_repr(self) -> str:
        return (
            f"relation={self.relation!r}, damping={float(self.damping.detach())}, "
            f"scale={self.scale}, "
            f"shape={tuple(self.shape)}"
        )


@dataclass
class MDMMOutput:
    """What :class:`MDMM` returns.

    Attributes:
        lagrangian: the scalar to call ``.backward()`` on.
        objective: the objective L0 that went in (graph kept).
        infeasibility: per constraint, how far it is from feasible (detached, units of g).
        multipliers: per constraint, its Lagrange multipliers (detached, units of g).
    """

    lagrangian: torch.Tensor
    objective: torch.Tensor
    infeasibility: list[torch.Tensor]
    multipliers: list[torch.Tensor]


class MDMM(Combiner):
    """The damped Lagrangian of an objective under a list of :class:`Constraint`.

    ``mdmm(objective, values)`` returns an :class:`MDMMOutput` whose ``lagrangian`` is
    ``L0 + Σ_i penalty_i(g_i)`` (see the module docstring for the formula and how to
    choose damping and step size). As a combiner, ``mdmm.backward(losses)`` takes the
    objective followed by one scalar value per (scalar) constraint.

    Args:
        constraints: the constraints, in the order their values will be passed.
    """

    def __init__(self, constraints: Sequence[Constraint]) -> None:
        if isinstance(constraints, Constraint):
            constraints = [constraints]
        constraints = list(constraints)
        for i, constraint in enumerate(constraints):
            if not isinstance(constraint, Constraint):
                raise TypeError(
                    f"constraints[{i}] must be a moopt.Constraint; got {type(constraint).__name__}"
                )
        super().__init__(n_tasks=None)
        self.constraints = nn.ModuleList(constraints)

    def forward(self, objective: torch.Tensor, values: Sequence[torch.Tensor]) -> MDMMOutput:
        """Build the Lagrangian from the objective and one value per constraint."""
        if not isinstance(objective, torch.Tensor) or objective.numel() != 1:
            raise ValueError(
                "objective must be a scalar tensor; got "
                + (
                    f"shape {tuple(objective.shape)}"
                    if isinstance(objective, torch.Tensor)
                    else type(objective).__name__
                )
            )
        if not bool(torch.isfinite(objective.detach()).all()):
            raise ValueError(f"objective is not finite: {objective.item()}")
        if isinstance(values, torch.Tensor) and values.dim() == 0:
            values = [values]
        values = list(values)
        if len(values) != len(self.constraints):
            raise ValueError(
                f"values has {len(values)} entries; this MDMM has {len(self.constraints)} "
                "constraints (one value per constraint)"
            )
        lagrangian = objective.reshape(())
        infeasibility, multipliers = [], []
        for i, (constraint, value) in enumerate(zip(self.constraints, values)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"values[{i}] must be a tensor; got {type(value).__name__}")
            if value.shape != constraint.shape and value.numel() != constraint.shape.numel():
                raise ValueError(
                    f"values[{i}] has shape {tuple(value.shape)}; constraint {i} expects "
                    f"{tuple(constraint.shape)}"
                )
            value = value.reshape(constraint.shape)
            if not bool(torch.isfinite(value.detach()).all()):
                raise ValueError(f"values[{i}] contains NaN or infinite entries")
            lagrangian = lagrangian + constraint.penalty(value)
            infeasibility.append(constraint.infeasibility(value))
            multipliers.append(constraint.lagrange_multiplier())
        return MDMMOutput(lagrangian, objective, infeasibility, multipliers)

    def backward(
        self, losses: LossesLike, params: ParamsLike = None, retain_graph: bool = False
    ) -> None:
        """Backward of the Lagrangian of ``losses = [L0, g_1, ..., g_m]`` (scalar constraints).

        ``params=None`` also fills the multipliers' ``.grad`` (negated: ascent).
        """
        vector = as_loss_vector(losses, len(self.constraints) + 1)
        lagrangian = self(vector[0], list(vector[1:])).lagrangian
        inputs = None if params is None else as_param_list(params, lagrangian)
        lagrangian.backward(inputs=inputs, retain_graph=retain_graph)
