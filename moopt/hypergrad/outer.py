"""Outer updates of shared hyperparameters from their hypergradients.

* :class:`SignStep` — the FDS outer step (Micaelli & Storkey 2021, Appendix G): every
  scalar hyperparameter moves by a fixed step against the *sign* of its hypergradient,
  ``λ ← λ − γ·sign(∂L_val/∂λ)``, its own step ``γ`` is halved each time that sign flips
  between two outer steps, and the result is clamped into the search range. The sign
  makes the update insensitive to the scale of hypergradients, which varies by orders of
  magnitude between hyperparameters and along a run; the halving lets it settle.
* :class:`AdamStep` — Adam (Kingma & Ba 2015) on the hypergradients, then the same clamp.
* :class:`CuttingPlaneStep` — for one scalar hyperparameter and few outer steps: sign
  steps until the hypergradient's sign brackets the minimum, then the intersection of the
  tangent lines at the two ends of the bracket (a one-dimensional cutting-plane step,
  Kelley 1960); it uses the validation loss as well as the hypergradient.

Both act on each :class:`Schedule`'s ``raw`` tensor (value space for the identity
transform) and modify it in place. Deviation from the official FDS code: the initial step
is ``fraction`` of the search range in raw space unless given per hyperparameter, and a
zero hypergradient (exactly) neither moves a value nor counts as a sign flip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from moopt.hypergrad.schedule import Schedule, _inverse

StepSizes = float | Mapping[str, float] | None


class OuterOptimizer:
    """Base class: ``step(schedules, hypergrads, val_loss)`` updates every ``schedule.raw``
    in place (``val_loss``, the validation loss of the inner run that gave the
    hypergradients, is ignored by the rules that use only the hypergradients).

    ``sign_only``: whether the rule reads only the signs of the hypergradients, so that
    one whose magnitude overflowed its dtype to ±inf (see
    :mod:`moopt.hypergrad.engine`, rescaled tangents) is still usable; rules that need
    the values refuse ±inf with a ``ValueError``.
    """

    sign_only: bool = False

    def step(
        self,
        schedules: Mapping[str, Schedule],
        hypergrads: Mapping[str, torch.Tensor],
        val_loss: float | None = None,
    ) -> None:
        """Update the schedules from the hypergradients of their ``raw`` tensors."""
        raise NotImplementedError

    def validate(self, schedules: Mapping[str, Schedule]) -> None:
        """Raise before any inner run if the schedules cannot be updated (default: no check)."""

    def shrink(self, factor: float) -> None:
        """Multiply every step size, present and future, by ``factor`` (used by
        :func:`~moopt.hypergrad.tune` to step back after an unroll diverged)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, object]:
        """Internal state, for checkpoints."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore the internal state saved by :meth:`state_dict`."""
        raise NotImplementedError


def _check_grads(
    schedules: Mapping[str, Schedule],
    hypergrads: Mapping[str, torch.Tensor],
    sign_only: bool = False,
) -> None:
    """Shapes must match; NaN is refused, and ±inf too unless the rule uses only signs."""
    for name, schedule in schedules.items():
        if name not in hypergrads:
            raise KeyError(f"no hypergradient for the schedule {name!r}")
        if tuple(hypergrads[name].shape) != tuple(schedule.raw.shape):
            raise ValueError(
                f"hypergradient of {name!r} has shape {tuple(hypergrads[name].shape)}; "
                f"expected {tuple(schedule.raw.shape)}"
            )
        grad = hypergrads[name]
        if bool(torch.isnan(grad).any()):
            raise ValueError(f"hypergradient of {name!r} is NaN")
        if not sign_only and not bool(torch.isfinite(grad).all()):
            raise ValueError(
                f"hypergradient of {name!r} is infinite: its magnitude overflowed the dtype "
                "(a run near the edge of stability; HypergradResult.log_abs_hypergrads holds "
                "it). This rule needs its value: use SignStep, which needs only its sign"
            )


def _step_size_for(name: str, schedule: Schedule, sizes: StepSizes, fraction: float) -> float:
    if isinstance(sizes, Mapping) and name in sizes:
        size = float(sizes[name])
    elif isinstance(sizes, (int, float)) and not isinstance(sizes, bool):
        size = float(sizes)
    else:
        low, high = schedule.bounds
        if low is None or high is None:
            raise ValueError(
                f"schedule {name!r} has no finite search range: give it bounds=(low, high) "
                "or give SignStep an explicit step size for it"
            )
        raw = _inverse(schedule.transform, torch.tensor([low, high], dtype=torch.float64))
        if not bool(torch.isfinite(raw).all()):
            raise ValueError(
                f"the search range {schedule.bounds} of {name!r} is infinite in raw space "
                f"(transform {schedule.transform!r}); give SignStep an explicit step size"
            )
        size = fraction * float(raw[1] - raw[0])
    if not size > 0:
        raise ValueError(f"step size for {name!r} must be positive; got {size}")
    return size


class SignStep(OuterOptimizer):
    """FDS sign step with halving on sign flip (Micaelli & Storkey 2021, Appendix G).

    For every scalar hyperparameter λ (every entry of every window)::

        γ ← decay·γ               if sign(g_k) = −sign(g_{k−1}) ≠ 0     (decay = 1/2)
        λ ← clamp(λ − γ·sign(g_k), low, high)

    As in the official code (``lr_step_decay`` etc.), with these differences: the initial
    step defaults to ``fraction`` of the search range instead of a per-hyperparameter
    argument; the previous sign is the last *non-zero* one (the official code also stores
    a zero sign, so that a zero hypergradient hides the next flip); values are clamped into
    the search range; and the hypergradient is not divided by the number of steps per
    window (the sign does not change).

    Args:
        step_sizes: initial step γ: one number for all, or ``{name: number}``; a schedule
            not listed starts at ``fraction`` of its search range (in raw space).
        fraction: see ``step_sizes`` (default 0.1, i.e. a tenth of the range).
        halve_on_flip: multiply γ of an entry by ``decay`` when its hypergradient's sign
            flips (``False``: constant steps).
        decay: the factor applied on a sign flip (default 0.5: halving).
    """

    sign_only = True

    def __init__(
        self,
        step_sizes: StepSizes = None,
        *,
        fraction: float = 0.1,
        halve_on_flip: bool = True,
        decay: float = 0.5,
    ) -> None:
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
        if not (isinstance(decay, (int, float)) and 0 < decay <= 1):
            raise ValueError(f"decay must be in (0, 1]; got {decay!r}")
        if step_sizes is not None and not isinstance(step_sizes, (int, float, Mapping)):
            raise TypeError(
                f"step_sizes must be a number or a mapping name -> number; got "
                f"{type(step_sizes).__name__}"
            )
        self.step_sizes = step_sizes
        self.fraction = float(fraction)
        self.halve_on_flip = bool(halve_on_flip)
        self.decay = float(decay)
        self.gamma: dict[str, torch.Tensor] = {}
        self.previous_sign: dict[str, torch.Tensor] = {}
        self.scale = 1.0

    def shrink(self, factor: float) -> None:
        self.scale *= factor
        self.gamma = {name: gamma * factor for name, gamma in self.gamma.items()}

    def validate(self, schedules: Mapping[str, Schedule]) -> None:
        """Check that every schedule has an initial step (given, or from its search range)."""
        for name, schedule in schedules.items():
            if name not in self.gamma:
                _step_size_for(name, schedule, self.step_sizes, self.fraction)

    def step(
        self,
        schedules: Mapping[str, Schedule],
        hypergrads: Mapping[str, torch.Tensor],
        val_loss: float | None = None,
    ) -> None:
        _check_grads(schedules, hypergrads, sign_only=True)
        for name, schedule in schedules.items():
            sign = torch.sign(hypergrads[name].detach()).to(schedule.raw)
            if name not in self.gamma:
                size = _step_size_for(name, schedule, self.step_sizes, self.fraction)
                self.gamma[name] = torch.full_like(schedule.raw, size * self.scale)
                self.previous_sign[name] = torch.zeros_like(schedule.raw)
            gamma = self.gamma[name].to(schedule.raw)
            previous = self.previous_sign[name].to(schedule.raw)
            if self.halve_on_flip:
                flipped = sign * previous < 0
                gamma = torch.where(flipped, gamma * self.decay, gamma)
            self.gamma[name] = gamma
            self.previous_sign[name] = torch.where(sign != 0, sign, previous)
            schedule.raw = schedule.raw - gamma * sign
            schedule.project_()

    def state_dict(self) -> dict[str, object]:
        return {
            "gamma": {k: v.cpu().clone() for k, v in self.gamma.items()},
            "previous_sign": {k: v.cpu().clone() for k, v in self.previous_sign.items()},
            "scale": self.scale,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.gamma = {k: v.clone() for k, v in state["gamma"].items()}
        self.previous_sign = {k: v.clone() for k, v in state["previous_sign"].items()}
        self.scale = float(state.get("scale", 1.0))


class AdamStep(OuterOptimizer):
    """Adam on the hypergradients (Kingma & Ba 2015), then the search-range clamp::

        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  λ ← λ − lr·(m/(1−β₁ᵏ)) / (√(v/(1−β₂ᵏ)) + ε)

    The moments ``m`` and ``v`` are kept in float64 whatever the schedule's dtype
    (deviation from ``torch.optim.Adam``, which keeps them in the parameter's dtype): a
    float32 hypergradient past ~1.8e19, which rescaled tangents can give, would make
    ``g²`` and then ``v`` inf in float32, a zero step, and ``v`` would stay inf.

    Args:
        lr: step size, one number or ``{name: number}`` (default for unlisted: 0.01).
        betas: ``(β₁, β₂)``.
        eps: ε.
    """

    def __init__(
        self,
        lr: float | Mapping[str, float] = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not isinstance(lr, (int, float, Mapping)) or isinstance(lr, bool):
            raise TypeError(f"lr must be a number or a mapping name -> number; got {lr!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair; got {betas!r}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1); got {betas!r}")
        self.lr = lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.count = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self.scale = 1.0

    def shrink(self, factor: float) -> None:
        self.scale *= factor

    def _lr(self, name: str) -> float:
        if isinstance(self.lr, Mapping):
            return self.scale * float(self.lr.get(name, 0.01))
        return self.scale * float(self.lr)

    def step(
        self,
        schedules: Mapping[str, Schedule],
        hypergrads: Mapping[str, torch.Tensor],
        val_loss: float | None = None,
    ) -> None:
        _check_grads(schedules, hypergrads)
        self.count += 1
        beta1, beta2 = self.betas
        for name, schedule in schedules.items():
            g = hypergrads[name].detach().to(device=schedule.raw.device, dtype=torch.float64)
            m = self.m.get(name, torch.zeros_like(g)).to(g)
            v = self.v.get(name, torch.zeros_like(g)).to(g)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            self.m[name], self.v[name] = m, v
            m_hat = m / (1 - beta1**self.count)
            v_hat = v / (1 - beta2**self.count)
            update = self._lr(name) * m_hat / (v_hat.sqrt() + self.eps)
            schedule.raw = schedule.raw - update.to(schedule.raw)
            schedule.project_()

    def state_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "m": {k: v.cpu().clone() for k, v in self.m.items()},
            "v": {k: v.cpu().clone() for k, v in self.v.items()},
            "scale": self.scale,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.count = int(state["count"])
        self.m = {k: v.clone() for k, v in state["m"].items()}
        self.v = {k: v.clone() for k, v in state["v"].items()}
        self.scale = float(state.get("scale", 1.0))


class CuttingPlaneStep(OuterOptimizer):
    """Bracket, then intersect tangents: a cutting-plane step for one scalar hyperparameter.

    Every inner run gives a point ``(x_k, f_k, g_k)``: the raw value, the validation loss
    and its hypergradient. Until the points bracket a minimum, the value moves by a sign
    step from the best point so far, ``x ← x_best − γ·sign(g_best)`` (γ fixed: a
    ``fraction`` of the search range, or ``step_size``). Once some point has ``g < 0``
    (the loss falls to the right) and another to its right has ``g > 0``, the bracket is
    ``[a, b]`` with ``a`` the rightmost point with ``g < 0`` left of ``b``, the leftmost
    point with ``g > 0``, and the next value is where the two tangent lines meet,

        x = (f_b − f_a + g_a·a − g_b·b) / (g_a − g_b),

    the minimiser over ``[a, b]`` of the cutting-plane model ``max(f_a + g_a(x − a),
    f_b + g_b(x − b))`` (Kelley, "The cutting-plane method for solving convex programs",
    1960, restricted to the two cuts at the ends of the bracket). For a criterion shaped
    like a V — the worse of two task losses, whose minimum is where they cross — with
    nearly straight arms this lands next to the minimum in one step, where sign steps
    halve their way there. If the intersection lies outside the bracket
    (non-convex data), the midpoint is taken (bisection). Values are clamped into the
    search range. A point whose hypergradient is exactly zero is kept where it is.

    :meth:`shrink` (used by :func:`~moopt.hypergrad.tune` after a diverged run) scales
    the sign steps only: inside a bracket the next value lies between two finished runs.

    Meant for tight budgets of outer steps with exact (noise-free) hypergradients of a
    single shared value (``Schedule(..., windows=1)`` with a scalar shape); for several
    hyperparameters, windows or noisy hypergradients use :class:`SignStep`.

    Args:
        step_size: the sign step γ in raw space (default: ``fraction`` of the search range).
        fraction: see ``step_size`` (default 0.1).
    """

    def __init__(self, step_size: float | None = None, *, fraction: float = 0.1) -> None:
        if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
        if step_size is not None and (
            isinstance(step_size, bool) or not isinstance(step_size, (int, float))
        ):
            raise TypeError(f"step_size must be a number; got {type(step_size).__name__}")
        self.step_size = step_size
        self.fraction = float(fraction)
        self.points: list[tuple[float, float, float]] = []
        self.scale = 1.0

    def shrink(self, factor: float) -> None:
        self.scale *= factor

    def validate(self, schedules: Mapping[str, Schedule]) -> None:
        """Check that there is exactly one scalar hyperparameter and a step size for it."""
        self._only(schedules)

    def _only(self, schedules: Mapping[str, Schedule]) -> tuple[str, Schedule, float]:
        if len(schedules) != 1 or next(iter(schedules.values())).numel != 1:
            sizes = {name: s.numel for name, s in schedules.items()}
            raise ValueError(
                "CuttingPlaneStep tunes exactly one scalar hyperparameter (one schedule, "
                f"one window); got {sizes} values. Use SignStep or AdamStep for more."
            )
        name, schedule = next(iter(schedules.items()))
        size = _step_size_for(name, schedule, self.step_size, self.fraction)
        return name, schedule, size * self.scale

    def step(
        self,
        schedules: Mapping[str, Schedule],
        hypergrads: Mapping[str, torch.Tensor],
        val_loss: float | None = None,
    ) -> None:
        _check_grads(schedules, hypergrads)
        name, schedule, gamma = self._only(schedules)
        if val_loss is None or not math.isfinite(float(val_loss)):
            raise ValueError(
                "CuttingPlaneStep needs the finite validation loss of the run: "
                f"step(schedules, hypergrads, val_loss=...) (got {val_loss!r}); tune passes it"
            )
        x = float(schedule.raw.reshape(()))
        g = float(hypergrads[name].reshape(()))
        self.points.append((x, float(val_loss), g))
        schedule.raw = torch.full_like(schedule.raw, self._next(gamma))
        schedule.project_()

    def _next(self, gamma: float) -> float:
        rising = [p for p in self.points if p[2] > 0]
        b = min(rising, default=None)
        falling = [p for p in self.points if p[2] < 0 and b is not None and p[0] < b[0]]
        a = max(falling, default=None)
        if a is not None and b is not None:
            (xa, fa, ga), (xb, fb, gb) = a, b
            x = (fb - fa + ga * xa - gb * xb) / (ga - gb)
            return x if xa <= x <= xb else 0.5 * (xa + xb)
        x, _, g = min(self.points, key=lambda p: p[1])
        return x - gamma * math.copysign(1.0, g) if g != 0 else x

    def state_dict(self) -> dict[str, object]:
        points = torch.tensor(self.points, dtype=torch.float64).reshape(-1, 3)
        return {"points": points, "scale": self.scale}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.points = [tuple(row) for row in state["points"].tolist()]
        self.scale = float(state.get("scale", 1.0))
