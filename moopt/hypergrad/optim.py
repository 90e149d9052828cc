"""Functional, differentiable inner optimizers: SGD, Adam and AdamW as pure functions.

Each optimizer is a pure function ``(params, state, grads, hyperparameters) -> (params,
state)`` on dictionaries of tensors, written with out-of-place tensor operations only, so
that forward-mode (``torch.func.jvp``) and reverse-mode autograd differentiate it in every
hyperparameter, and each hyperparameter may change at every step (a :class:`Schedule`).
With constant hyperparameters they reproduce ``torch.optim.SGD``, ``torch.optim.Adam`` and
``torch.optim.AdamW`` (tested to 1e-6 over many steps in float64).

The classes :class:`SGD`, :class:`Adam` and :class:`AdamW` bundle the pure function with
their hyperparameters: each hyperparameter is a number (fixed) or a :class:`Schedule`
(tuned by FDS, with one value per window of steps).

Deviations from ``torch.optim`` (each exact where torch's own is defined):

* SGD: when ``momentum`` is a :class:`Schedule`, the momentum buffer is always used (torch
  skips it when momentum is exactly 0); the two agree unless momentum is 0 *and*
  dampening is non-zero. The first step sets the buffer to the gradient, like torch.
* Adam: with a per-step β, the bias corrections are ``1 - β_t ** t`` with the current
  β_t, which is what torch computes when a param group's betas change between steps.
  ``sqrt(v)`` is taken with a zero derivative where ``v == 0`` (an entry whose gradient
  has always been exactly zero, e.g. a dead unit), where the true derivative is infinite
  and would turn the tangents into NaN; elsewhere it is the usual square root.
* ``maximize``, ``foreach``/``fused`` kernels, sparse and complex parameters are not
  supported (the functional form is already vectorised over tangents by ``vmap``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from moopt.hypergrad.schedule import Schedule

Tensors = dict[str, torch.Tensor]
HyperValue = float | torch.Tensor


def sgd(
    params: Mapping[str, torch.Tensor],
    state: Mapping[str, object],
    grads: Mapping[str, torch.Tensor],
    *,
    lr: HyperValue,
    momentum: HyperValue = 0.0,
    dampening: HyperValue = 0.0,
    weight_decay: HyperValue = 0.0,
    nesterov: bool = False,
    use_momentum: bool = True,
) -> tuple[Tensors, dict[str, object]]:
    """One step of SGD, out of place (``torch.optim.SGD``)::

        g ← g + ξ·θ                                    (weight decay ξ)
        b ← g  at the first step,  b ← μ·b + (1 − τ)·g  after   (momentum μ, dampening τ)
        d ← g + μ·b  (nesterov)  or  d ← b
        θ ← θ − α·d

    ``state`` is ``{"step": 0-d tensor, "momentum_buffer": {name: tensor}}`` from
    :meth:`SGD.init`; with ``use_momentum=False`` the buffer is skipped (``d ← g``).
    """
    new_params: Tensors = {}
    buffers: Tensors = {}
    step = state["step"]
    # torch sets the buffer to the gradient at the first step: with a zero buffer this is
    # the general update with the dampening switched off (``started`` = 0).
    grad_scale = None if _is_zero(dampening) else 1 - dampening * (step > 0).to(step.dtype)
    for name, param in params.items():
        grad = grads[name]
        if not _is_zero(weight_decay):
            grad = _add_scaled(grad, weight_decay, param)
        if use_momentum:
            scaled = grad if grad_scale is None else grad_scale * grad
            buf = _add_scaled(scaled, momentum, state["momentum_buffer"][name])
            buffers[name] = buf
            grad = _add_scaled(grad, momentum, buf) if nesterov else buf
        new_params[name] = _add_scaled(param, -lr, grad)
    # The counter carries no derivative: detached, its update is not a forward-mode operation.
    return new_params, {"step": step.detach() + 1, "momentum_buffer": buffers}


def _add_scaled(base: torch.Tensor, scale: HyperValue, other: torch.Tensor) -> torch.Tensor:
    """``base + scale·other``; a fixed (Python number) ``scale`` goes into ``add``'s
    ``alpha`` (one kernel, as torch.optim computes it). Forward mode matters here: in torch
    2.x, an operation between a tensor that carries a tangent and one that does not (a
    Python number becomes such a tensor) computes the missing tangent's shape through a
    Python meta function, about 0.1-0.2 ms per operation on CPU, whereas ``alpha`` is no
    tensor at all."""
    if isinstance(scale, (int, float)):
        return base.add(other, alpha=scale)
    return base + scale * other


def _safe_sqrt(value: torch.Tensor) -> torch.Tensor:
    positive = value > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, value, 1.0)), 0.0)


def adam(
    params: Mapping[str, torch.Tensor],
    state: Mapping[str, object],
    grads: Mapping[str, torch.Tensor],
    *,
    lr: HyperValue,
    beta1: HyperValue = 0.9,
    beta2: HyperValue = 0.999,
    eps: HyperValue = 1e-8,
    weight_decay: HyperValue = 0.0,
    decoupled: bool = False,
    amsgrad: bool = False,
) -> tuple[Tensors, dict[str, object]]:
    """One step of Adam (Kingma & Ba 2015) / AdamW (Loshchilov & Hutter 2019), out of place::

        t ← t + 1
        θ ← θ·(1 − α·ξ)  (AdamW, decoupled)    or    g ← g + ξ·θ  (Adam)
        m ← m + (1 − β₁)·(g − m)        v ← β₂·v + (1 − β₂)·g²
        v̂ ← max(v̂, v)  (amsgrad)
        θ ← θ − α/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)

    as ``torch.optim.Adam``/``AdamW`` compute it. ``state`` comes from :meth:`Adam.init`.
    """
    step = state["step"] + 1
    bias1 = 1 - beta1**step
    bias2_sqrt = (1 - beta2**step) ** 0.5
    step_size = lr / bias1
    new_params: Tensors = {}
    exp_avg: Tensors = {}
    exp_avg_sq: Tensors = {}
    max_sq: Tensors = {}
    for name, param in params.items():
        grad = grads[name]
        if not _is_zero(weight_decay):
            if decoupled:
                param = param * (1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * param
        m = state["exp_avg"][name]
        m = m + (1 - beta1) * (grad - m)
        v = beta2 * state["exp_avg_sq"][name] + (1 - beta2) * grad * grad
        exp_avg[name], exp_avg_sq[name] = m, v
        if amsgrad:
            v = torch.maximum(state["max_exp_avg_sq"][name], v)
            max_sq[name] = v
        denom = _safe_sqrt(v) / bias2_sqrt + eps
        new_params[name] = param - step_size * m / denom
    new_state: dict[str, object] = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if amsgrad:
        new_state["max_exp_avg_sq"] = max_sq
    return new_params, new_state


def _is_zero(value: HyperValue) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _check_hyper(name: str, value: object) -> HyperValue | Schedule:
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number (fixed) or a Schedule (tuned); got {type(value).__name__}"
        )
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


class InnerOptimizer:
    """Base class: a pure optimizer step plus its hyperparameters (numbers or Schedules).

    Subclasses set ``hyper_names`` and implement :meth:`init` and :meth:`update`.
    """

    hyper_names: tuple[str, ...] = ()

    def __init__(self, **hypers: HyperValue | Schedule) -> None:
        unknown = set(hypers) - set(self.hyper_names)
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {sorted(unknown)} for {type(self).__name__}; "
                f"expected {list(self.hyper_names)}"
            )
        self.hypers = {name: _check_hyper(name, value) for name, value in hypers.items()}

    def schedules(self) -> dict[str, Schedule]:
        """The tuned hyperparameters (those given as a :class:`Schedule`), by name."""
        return {n: v for n, v in self.hypers.items() if isinstance(v, Schedule)}

    def resolve(self, values: Mapping[str, HyperValue]) -> dict[str, HyperValue]:
        """Per-step values: ``values[name]`` for tuned ones, the fixed number otherwise;
        keyed by ``hyper_names``, which are the keyword arguments of the update function."""
        out: dict[str, HyperValue] = {}
        for name, value in self.hypers.items():
            if isinstance(value, Schedule):
                if name not in values:
                    raise KeyError(f"no value given for the tuned hyperparameter {name!r}")
                out[name] = values[name]
            else:
                out[name] = value
        return out

    def init(self, params: Mapping[str, torch.Tensor]) -> dict[str, object]:
        """Initial optimizer state (zeros) for ``params``."""
        raise NotImplementedError

    def update(
        self,
        params: Mapping[str, torch.Tensor],
        state: Mapping[str, object],
        grads: Mapping[str, torch.Tensor],
        values: Mapping[str, HyperValue],
    ) -> tuple[Tensors, dict[str, object]]:
        """One step with the tuned hyperparameters' current ``values`` (pure)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hypers.items())
        return f"{type(self).__name__}({args})"


class SGD(InnerOptimizer):
    """Functional ``torch.optim.SGD``; any hyperparameter may be a :class:`Schedule`.

    Args:
        lr: learning rate α.
        momentum: momentum μ.
        dampening: dampening τ.
        weight_decay: L2 penalty ξ (added to the gradient).
        nesterov: Nesterov momentum (a fixed choice, not differentiable); needs a
            positive momentum and zero dampening, as in torch.

    The update is :func:`sgd`.
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay")

    def __init__(
        self,
        lr: HyperValue | Schedule,
        momentum: HyperValue | Schedule = 0.0,
        dampening: HyperValue | Schedule = 0.0,
        weight_decay: HyperValue | Schedule = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool; got {type(nesterov).__name__}")
        self.nesterov = nesterov
        self.use_momentum = isinstance(momentum, Schedule) or self.hypers["momentum"] != 0
        if nesterov and not isinstance(momentum, Schedule) and self.hypers["momentum"] <= 0:
            raise ValueError("nesterov=True requires a positive momentum (as torch.optim.SGD)")
        if nesterov and (isinstance(dampening, Schedule) or self.hypers["dampening"] != 0):
            raise ValueError("nesterov=True requires zero dampening (as torch.optim.SGD)")

    def init(self, params: Mapping[str, torch.Tensor]) -> dict[str, object]:
        first = next(iter(params.values()))
        buffers = {n: torch.zeros_like(p) for n, p in params.items()} if self.use_momentum else {}
        step = torch.zeros((), dtype=first.dtype, device=first.device)
        return {"step": step, "momentum_buffer": buffers}

    def update(
        self,
        params: Mapping[str, torch.Tensor],
        state: Mapping[str, object],
        grads: Mapping[str, torch.Tensor],
        values: Mapping[str, HyperValue],
    ) -> tuple[Tensors, dict[str, object]]:
        return sgd(
            params,
            state,
            grads,
            **self.resolve(values),
            nesterov=self.nesterov,
            use_momentum=self.use_momentum,
        )


class Adam(InnerOptimizer):
    """Functional ``torch.optim.Adam``; any hyperparameter may be a :class:`Schedule`.

    Args:
        lr: learning rate α.
        betas: ``(β₁, β₂)``; each a number or a :class:`Schedule` (tuned under the names
            ``"beta1"`` and ``"beta2"``).
        eps: ε added to the denominator.
        weight_decay: L2 penalty ξ added to the gradient (decoupled in :class:`AdamW`).
        amsgrad: use the running maximum of the second moment (Reddi et al. 2018).

    The update is :func:`adam`.
    """

    hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    decoupled = False

    def __init__(
        self,
        lr: HyperValue | Schedule = 1e-3,
        betas: tuple[HyperValue | Schedule, HyperValue | Schedule] = (0.9, 0.999),
        eps: HyperValue | Schedule = 1e-8,
        weight_decay: HyperValue | Schedule = 0.0,
        amsgrad: bool = False,
    ) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2); got {betas!r}")
        super().__init__(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
        if not isinstance(amsgrad, bool):
            raise TypeError(f"amsgrad must be a bool; got {type(amsgrad).__name__}")
        self.amsgrad = amsgrad

    def init(self, params: Mapping[str, torch.Tensor]) -> dict[str, object]:
        first = next(iter(params.values()))
        state: dict[str, object] = {
            "step": torch.zeros((), dtype=first.dtype, device=first.device),
            "exp_avg": {n: torch.zeros_like(p) for n, p in params.items()},
            "exp_avg_sq": {n: torch.zeros_like(p) for n, p in params.items()},
        }
        if self.amsgrad:
            state["max_exp_avg_sq"] = {n: torch.zeros_like(p) for n, p in params.items()}
        return state

    def update(
        self,
        params: Mapping[str, torch.Tensor],
        state: Mapping[str, object],
        grads: Mapping[str, torch.Tensor],
        values: Mapping[str, HyperValue],
    ) -> tuple[Tensors, dict[str, object]]:
        return adam(
            params,
            state,
            grads,
            **self.resolve(values),
            decoupled=self.decoupled,
            amsgrad=self.amsgrad,
        )


class AdamW(Adam):
    """Functional ``torch.optim.AdamW``: :class:`Adam` with decoupled weight decay
    ``θ ← θ·(1 − α·ξ)`` (Loshchilov & Hutter 2019); default ``weight_decay=0.01`` as torch.
    """

    decoupled = True

    def __init__(
        self,
        lr: HyperValue | Schedule = 1e-3,
        betas: tuple[HyperValue | Schedule, HyperValue | Schedule] = (0.9, 0.999),
        eps: HyperValue | Schedule = 1e-8,
        weight_decay: HyperValue | Schedule = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
