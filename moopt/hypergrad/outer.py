"""Outer updates of shared hyperparameters from their hypergradients.

* :class:`SignStep` — the FDS outer step (Micaelli & Storkey 2021, Appendix G): every
  scalar hyperparameter moves by a fixed step against the *sign* of its hypergradient,
  ``λ ← λ − γ·sign(∂L_val/∂λ)``, its own step ``γ`` is halved each time that sign flips
  between two outer steps, and the result is clamped into the search range. The sign
  makes the update insensitive to the scale of hypergradients, which varies by orders of
  magnitude between hyperparameters and along a run; the halving lets it settle.
* :class:`AdamStep` — Adam (Kingma & Ba 2015) on the hypergradients, then the same clamp.

Both act on each :class:`Schedule`'s ``raw`` tensor (value space for the identity
transform) and modify it in place. Deviation from the official FDS code: the initial step
is ``fraction`` of the search range in raw space unless given per hyperparameter, and a
zero hypergradient (exactly) neither moves a value nor counts as a sign flip.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from moopt.hypergrad.schedule import Schedule, _inverse

StepSizes = float | Mapping[str, float] | None


class OuterOptimizer:
    """Base class: ``step(schedules, hypergrads)`` updates every ``schedule.raw`` in place."""

    def step(
        self, schedules: Mapping[str, Schedule], hypergrads: Mapping[str, torch.Tensor]
    ) -> None:
        """Update the schedules from the hypergradients of their ``raw`` tensors."""
        raise NotImplementedError

    def validate(self, schedules: Mapping[str, Schedule]) -> None:
        """Raise before any inner run if the schedules cannot be updated (default: no check)."""

    def state_dict(self) -> dict[str, object]:
        """Internal state, for checkpoints."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore the internal state saved by :meth:`state_dict`."""
        raise NotImplementedError


def _check_grads(schedules: Mapping[str, Schedule], hypergrads: Mapping[str, torch.Tensor]) -> None:
    for name, schedule in schedules.items():
        if name not in hypergrads:
            raise KeyError(f"no hypergradient for the schedule {name!r}")
        if tuple(hypergrads[name].shape) != tuple(schedule.raw.shape):
            raise ValueError(
                f"hypergradient of {name!r} has shape {tuple(hypergrads[name].shape)}; "
                f"expected {tuple(schedule.raw.shape)}"
            )
        if not bool(torch.isfinite(hypergrads[name]).all()):
            raise ValueError(f"hypergradient of {name!r} is not finite")


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

    def validate(self, schedules: Mapping[str, Schedule]) -> None:
        """Check that every schedule has an initial step (given, or from its search range)."""
        for name, schedule in schedules.items():
            if name not in self.gamma:
                _step_size_for(name, schedule, self.step_sizes, self.fraction)

    def step(
        self, schedules: Mapping[str, Schedule], hypergrads: Mapping[str, torch.Tensor]
    ) -> None:
        _check_grads(schedules, hypergrads)
        for name, schedule in schedules.items():
            sign = torch.sign(hypergrads[name].detach()).to(schedule.raw)
            if name not in self.gamma:
                size = _step_size_for(name, schedule, self.step_sizes, self.fraction)
                self.gamma[name] = torch.full_like(schedule.raw, size)
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
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.gamma = {k: v.clone() for k, v in state["gamma"].items()}
        self.previous_sign = {k: v.clone() for k, v in state["previous_sign"].items()}


class AdamStep(OuterOptimizer):
    """Adam on the hypergradients (Kingma & Ba 2015), then the search-range clamp::

        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  λ ← λ − lr·(m/(1−β₁ᵏ)) / (√(v/(1−β₂ᵏ)) + ε)

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

    def _lr(self, name: str) -> float:
        if isinstance(self.lr, Mapping):
            return float(self.lr.get(name, 0.01))
        return float(self.lr)

    def step(
        self, schedules: Mapping[str, Schedule], hypergrads: Mapping[str, torch.Tensor]
    ) -> None:
        _check_grads(schedules, hypergrads)
        self.count += 1
        beta1, beta2 = self.betas
        for name, schedule in schedules.items():
            g = hypergrads[name].detach().to(schedule.raw)
            m = self.m.get(name, torch.zeros_like(g)).to(g)
            v = self.v.get(name, torch.zeros_like(g)).to(g)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            self.m[name], self.v[name] = m, v
            m_hat = m / (1 - beta1**self.count)
            v_hat = v / (1 - beta2**self.count)
            schedule.raw = schedule.raw - self._lr(name) * m_hat / (v_hat.sqrt() + self.eps)
            schedule.project_()

    def state_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "m": {k: v.cpu().clone() for k, v in self.m.items()},
            "v": {k: v.cpu().clone() for k, v in self.v.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.count = int(state["count"])
        self.m = {k: v.clone() for k, v in state["m"].items()}
        self.v = {k: v.clone() for k, v in state["v"].items()}
