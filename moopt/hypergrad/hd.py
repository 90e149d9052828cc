"""Greedy online Hypergradient Descent (Baydin et al., ICLR 2018): the one-step baseline.

"Online Learning Rate Adaptation with Hypergradient Descent" adapts the learning rate α
*during* a single training run with the derivative of the current loss with respect to the
learning rate used at the previous step. If the previous update was
``θ_t = θ_{t−1} − α·d_{t−1}`` (``d`` the update direction: the gradient for plain SGD, the
momentum buffer or Nesterov direction with momentum, the bias-corrected Adam direction
``m̂/(√v̂ + ε)`` for Adam), then

    ∂f(θ_t)/∂α = −∇f(θ_t) · d_{t−1},        α_t = α_{t−1} + β · ∇f(θ_t) · d_{t−1},

with β the hypergradient learning rate. The rule is greedy (a horizon of one step): it is
the short-horizon meta-objective that Wu et al. (2018) show to be biased towards small
learning rates, which is why moopt uses it as a baseline for FDS.

:class:`SGDHD` and :class:`AdamHD` are ordinary ``torch.optim.Optimizer``\\ s (call
``step()`` after ``backward()``); ``group["lr"]`` holds the current learning rate and
``lr_history`` the learning rate used at every step. With ``hyper_lr=0`` they are exactly
``torch.optim.SGD`` and ``torch.optim.Adam``.

Deviations from the official code (github.com/gbaydin/hypergradient-descent):

* every parameter group has its own α and its own hypergradient (the dot product runs over
  the group's parameters); with one group this is the paper's single global α;
* AdamHD updates α once per step from the dot product over *all* the group's parameters
  (the official code updates it once per parameter tensor inside its loop) and uses the
  exact previous Adam direction ``(m/(1−β₁ᵗ)) / (√v/√(1−β₂ᵗ) + ε)`` (the official code
  places ε before the bias correction);
* α is clamped at ``min_lr`` (default 0) so that a run of negative hypergradients cannot
  turn descent into ascent (the paper leaves α unconstrained).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


def _check_nonnegative(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be non-negative; got {value}")
    return float(value)


class _HypergradientOptimizer(Optimizer):
    """Shared bookkeeping: the per-group α update from ``∇f(θ_t) · d_{t−1}``."""

    lr_history: list[list[float]]

    def _adapt_lr(self, group: dict, grads: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        dot = None
        for p, grad in zip(params, grads):
            previous = self.state[p].get("previous_direction")
            if previous is None:
                continue
            term = torch.sum(grad * previous)
            dot = term if dot is None else dot + term
        if dot is not None:
            group["lr"] = max(group["lr"] + group["hyper_lr"] * float(dot), group["min_lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Adapt α from the hypergradient, then take one step of the base method with it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [
                p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
                for p in params
            ]
            self._adapt_lr(group, grads, params)
            self._update(group, params, grads)
        self.lr_history.append([float(group["lr"]) for group in self.param_groups])
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """One step of the base method on ``params``; stores ``previous_direction``."""
        raise NotImplementedError


class SGDHD(_HypergradientOptimizer):
    """SGD (momentum, dampening, Nesterov, weight decay as ``torch.optim.SGD``) with HD.

    At each step, with ``g = ∇f(θ) + ξθ``::

        α ← max(α + β · g · d_prev, min_lr)               (hypergradient descent)
        b ← μ b + (1 − τ) g  (b = g at the first step);   d = g + μ b (Nesterov) or b
        θ ← θ − α d,   d_prev ← d

    Args:
        params: parameters or parameter groups.
        lr: initial learning rate α₀.
        hyper_lr: hypergradient learning rate β (Baydin et al. use 1e-3 for SGD).
        momentum, dampening, weight_decay, nesterov: as ``torch.optim.SGD``.
        min_lr: lower clamp of α (default 0).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        hyper_lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        min_lr: float = 0.0,
    ) -> None:
        for name, value in (
            ("lr", lr),
            ("hyper_lr", hyper_lr),
            ("momentum", momentum),
            ("dampening", dampening),
            ("weight_decay", weight_decay),
            ("min_lr", min_lr),
        ):
            _check_nonnegative(value, name)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        defaults = dict(
            lr=float(lr),
            hyper_lr=float(hyper_lr),
            momentum=float(momentum),
            dampening=float(dampening),
            weight_decay=float(weight_decay),
            nesterov=bool(nesterov),
            min_lr=float(min_lr),
        )
        super().__init__(params, defaults)
        self.lr_history = []

    def _update(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        momentum, lr = group["momentum"], group["lr"]
        for p, grad in zip(params, grads):
            state = self.state[p]
            direction = grad
            if momentum != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = grad.clone()
                else:
                    buf = buf * momentum + (1 - group["dampening"]) * grad
                state["momentum_buffer"] = buf
                direction = grad + momentum * buf if group["nesterov"] else buf
            state["previous_direction"] = direction.clone()
            p.add_(direction, alpha=-lr)


class AdamHD(_HypergradientOptimizer):
    """Adam (``torch.optim.Adam``, L2 weight decay) with hypergradient descent on α.

    At step t, with ``g = ∇f(θ) + ξθ``::

        α ← max(α + β · g · d_prev, min_lr)
        m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
        d = (m / (1 − β₁ᵗ)) / (√v / √(1 − β₂ᵗ) + ε),   θ ← θ − α d,   d_prev ← d

    Args:
        params: parameters or parameter groups.
        lr: initial learning rate α₀.
        hyper_lr: hypergradient learning rate β (Baydin et al. use 1e-7 to 1e-8 for Adam).
        betas, eps, weight_decay: as ``torch.optim.Adam``.
        min_lr: lower clamp of α (default 0).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        hyper_lr: float = 1e-7,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_lr: float = 0.0,
    ) -> None:
        for name, value in (
            ("lr", lr),
            ("hyper_lr", hyper_lr),
            ("eps", eps),
            ("weight_decay", weight_decay),
            ("min_lr", min_lr),
        ):
            _check_nonnegative(value, name)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1); got {betas!r}")
        defaults = dict(
            lr=float(lr),
            hyper_lr=float(hyper_lr),
            betas=(float(betas[0]), float(betas[1])),
            eps=float(eps),
            weight_decay=float(weight_decay),
            min_lr=float(min_lr),
        )
        super().__init__(params, defaults)
        self.lr_history = []

    def _update(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p, grad in zip(params, grads):
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = state["exp_avg_sq"].sqrt() / (1 - beta2**t) ** 0.5 + group["eps"]
            direction = state["exp_avg"] / (1 - beta1**t) / denom
            state["previous_direction"] = direction
            p.add_(direction, alpha=-group["lr"])
