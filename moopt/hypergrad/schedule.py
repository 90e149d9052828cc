"""Shared hyperparameters: one value per window of contiguous inner steps.

FDS (Micaelli & Storkey, "Gradient-based Hyperparameter Optimization Over Long Horizons",
NeurIPS 2021, Section 4) *shares* each hyperparameter over contiguous windows of inner
steps: a learning-rate schedule for T steps is described by W values, the value of window
``w`` being used at every step of that window. Sharing averages the noise of the
hypergradients of neighbouring steps at the cost of a little bias, and makes the number of
hyperparameters N independent of the horizon T.

A :class:`Schedule` holds the W values in an unconstrained *raw* tensor, of shape
``(W, *shape)`` (``shape`` is ``()`` for a scalar hyperparameter and e.g. ``(K,)`` for K
loss weights). The value used at step ``t`` is ``transform(raw[window_of(t)])``, with an
optional elementwise reparametrisation:

* ``"identity"``: value = raw (the FDS paper's choice);
* ``"log"``: value = exp(raw), for positive hyperparameters spanning decades;
* ``"softplus"``: value = log(1 + exp(raw)), positive and linear for large values;
* ``"sigmoid"``: value = 1 / (1 + exp(-raw)), in (0, 1) (momentum, β₁).

Hypergradients and outer updates act on ``raw``; the optional search range ``bounds`` is
given in value space and clamps the values after every outer update (FDS Appendix G).

Windows when W does not divide T: step ``t`` (0-based) belongs to window
``floor(t * W / T)``, so the windows are contiguous, cover every step once, and their
sizes differ by at most one (the larger ones come first: T = 10, W = 3 gives 4, 3, 3).
This is the official FDS code's assignment (``int(W * t / T)``). W larger than T is an
error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

TRANSFORMS = ("identity", "log", "softplus", "sigmoid")


def window_index(steps: int, windows: int) -> torch.Tensor:
    """Window of every step: ``floor(t * W / T)`` for ``t = 0..T-1`` (int64 tensor)."""
    return torch.div(torch.arange(steps) * windows, steps, rounding_mode="floor")


def _forward(transform: str, raw: torch.Tensor) -> torch.Tensor:
    if transform == "identity":
        return raw
    if transform == "log":
        return torch.exp(raw)
    if transform == "softplus":
        return torch.nn.functional.softplus(raw)
    return torch.sigmoid(raw)


def _inverse(transform: str, value: torch.Tensor) -> torch.Tensor:
    if transform == "identity":
        return value
    if transform == "log":
        return torch.log(value)
    if transform == "softplus":
        return value + torch.log(-torch.expm1(-value))
    return torch.log(value) - torch.log1p(-value)


def _domain_ok(transform: str, value: torch.Tensor) -> bool:
    if transform in ("log", "softplus"):
        return bool((value > 0).all())
    if transform == "sigmoid":
        return bool(((value > 0) & (value < 1)).all())
    return True


_DOMAIN_TEXT = {"log": "> 0", "softplus": "> 0", "sigmoid": "in the open interval (0, 1)"}


class Schedule:
    """A hyperparameter shared over W contiguous windows of a horizon of T inner steps.

    Args:
        init: initial value (value space): a number, a tensor of shape ``shape`` (same for
            every window) or of shape ``(W, *shape)`` (one per window). FDS starts every
            hyperparameter at zero, hence the default ``0.0``.
        steps: the horizon T (number of inner steps) this schedule covers.
        windows: the number W of windows (``1``: one shared value; ``steps``: one per step).
        shape: the shape of one value, ``()`` for a scalar, ``(K,)`` for K loss weights.
        bounds: optional search range ``(low, high)`` in value space (either may be
            ``None``); values are clamped into it after every outer update.
        transform: reparametrisation, one of ``"identity"``, ``"log"``, ``"softplus"``,
            ``"sigmoid"`` (see the module docstring).
        dtype: floating dtype of ``raw`` (default: torch's default dtype).

    Attributes:
        raw: the tensor of shape ``(W, *shape)`` that hypergradients refer to and outer
            updates change (in place).
    """

    def __init__(
        self,
        init: float | torch.Tensor | Sequence[float] = 0.0,
        *,
        steps: int,
        windows: int = 1,
        shape: Sequence[int] = (),
        bounds: tuple[float | None, float | None] | None = None,
        transform: str = "identity",
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (("steps", steps), ("windows", windows)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int; got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1; got {value}")
        if windows > steps:
            raise ValueError(
                f"windows={windows} exceeds steps={steps}: a window must hold at least one "
                "step (use windows=steps for one value per step)"
            )
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {list(TRANSFORMS)}; got {transform!r}")
        self.steps = steps
        self.windows = windows
        self.shape = tuple(int(s) for s in shape)
        self.transform = transform
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be floating point (hypergradients need it); got {dtype}")
        self.bounds = self._check_bounds(bounds)
        values = self._as_values(init, dtype)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"init must be finite; got {values.tolist()}")
        if not _domain_ok(transform, values):
            raise ValueError(
                f"init must be {_DOMAIN_TEXT[transform]} for transform={transform!r}; "
                f"got {values.tolist()}"
            )
        low, high = self.bounds
        if (low is not None and bool((values < low).any())) or (
            high is not None and bool((values > high).any())
        ):
            raise ValueError(f"init {values.tolist()} lies outside the search range {bounds}")
        self.raw = _inverse(transform, values).detach().clone()
        self.window_of = window_index(steps, windows)

    def _check_bounds(
        self, bounds: tuple[float | None, float | None] | None
    ) -> tuple[float | None, float | None]:
        if bounds is None:
            return (None, None)
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise TypeError(f"bounds must be a pair (low, high); got {bounds!r}")
        low, high = (None if b is None else float(b) for b in bounds)
        if low is not None and high is not None and not low < high:
            raise ValueError(f"bounds must satisfy low < high; got {bounds!r}")
        return (low, high)

    def _as_values(self, init: object, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(init, bool):
            raise TypeError("init must be a number or a floating tensor; got bool")
        if isinstance(init, torch.Tensor):
            if not init.dtype.is_floating_point:
                raise TypeError(
                    f"init must be a floating tensor (an integer hyperparameter cannot be "
                    f"differentiated); got dtype {init.dtype}"
                )
            tensor = init.detach().to(dtype)
        elif isinstance(init, (int, float)):
            tensor = torch.tensor(float(init), dtype=dtype)
        elif isinstance(init, Sequence) and not isinstance(init, (str, bytes)):
            tensor = torch.as_tensor([float(v) for v in init], dtype=dtype)
        else:
            raise TypeError(f"init must be a number or a tensor; got {type(init).__name__}")
        full = (self.windows, *self.shape)
        if tuple(tensor.shape) == self.shape:
            return tensor.expand(full).clone()
        if tuple(tensor.shape) == full:
            return tensor.clone()
        if tensor.dim() == 0:
            return tensor.expand(full).clone()
        raise ValueError(
            f"init has shape {tuple(tensor.shape)}; expected {self.shape} (one value for "
            f"every window) or {full} (one per window)"
        )

    @property
    def numel(self) -> int:
        """Number of scalar hyperparameters (``W * prod(shape)``): its share of N."""
        return self.windows * math.prod(self.shape)

    def window_sizes(self) -> list[int]:
        """Number of inner steps in each window (they differ by at most one)."""
        return torch.bincount(self.window_of, minlength=self.windows).tolist()

    def values_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the reparametrisation to ``raw`` (differentiable)."""
        return _forward(self.transform, raw)

    def values(self) -> torch.Tensor:
        """The W window values, shape ``(W, *shape)`` (value space, detached)."""
        return self.values_from_raw(self.raw).detach()

    def per_step(self) -> torch.Tensor:
        """The value used at every inner step, shape ``(T, *shape)``."""
        return self.values()[self.window_of.to(self.raw.device)]

    def value_derivative(self) -> torch.Tensor:
        """``d value / d raw`` elementwise, shape ``(W, *shape)``."""
        raw = self.raw.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.values_from_raw(raw).sum(), raw)
        return grad

    def set_values(self, values: torch.Tensor | float) -> None:
        """Set the window values (value space), clamped into ``bounds``."""
        tensor = self._as_values(values, self.raw.dtype).to(self.raw.device)
        self.raw = _inverse(self.transform, self.clamp_values(tensor)).detach().clone()

    def clamp_values(self, values: torch.Tensor) -> torch.Tensor:
        """Clamp value-space ``values`` into ``bounds`` and strictly inside the transform's
        domain (``> 0`` for log/softplus, ``(0, 1)`` for sigmoid), so that ``raw`` is finite."""
        low, high = self.bounds
        if low is not None or high is not None:
            values = values.clamp(min=low, max=high)
        if self.transform != "identity":
            values = values.clamp(min=torch.finfo(values.dtype).tiny)
        if self.transform == "sigmoid":
            values = values.clamp(max=1 - torch.finfo(values.dtype).eps)
        return values

    def project_(self) -> None:
        """Clamp the current values into ``bounds`` in place (after an outer update)."""
        self.raw = _inverse(self.transform, self.clamp_values(self.values())).detach().clone()

    def to(self, device: torch.device | str) -> Schedule:
        """Move ``raw`` to ``device`` (in place) and return ``self``."""
        self.raw = self.raw.to(device)
        return self

    def state_dict(self) -> dict[str, object]:
        """Everything needed to rebuild the schedule (for checkpoints)."""
        return {
            "raw": self.raw.detach().cpu().clone(),
            "steps": self.steps,
            "windows": self.windows,
            "shape": self.shape,
            "transform": self.transform,
            "bounds": self.bounds,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore ``raw`` from :meth:`state_dict`; the configuration must match."""
        mine = (self.steps, self.windows, self.shape, self.transform)
        theirs = (state["steps"], state["windows"], tuple(state["shape"]), state["transform"])
        if mine != theirs:
            raise ValueError(
                f"state_dict describes a schedule (steps, windows, shape, transform) = "
                f"{theirs}; this one is {mine}"
            )
        raw = state["raw"]
        self.raw = raw.detach().to(device=self.raw.device, dtype=self.raw.dtype).clone()

    def __repr__(self) -> str:
        values = self.values()
        shown = values.flatten()[:4].tolist()
        more = ", ..." if values.numel() > 4 else ""
        return (
            f"Schedule(steps={self.steps}, windows={self.windows}, shape={self.shape}, "
            f"transform={self.transform!r}, bounds={self.bounds}, values=[{shown}{more}])"
        )
