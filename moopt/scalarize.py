"""Loss-level combiners: scalarizations of K task losses into one scalar.

Each is a :class:`~moopt._base.LossCombiner`: ``combiner(losses)`` is a scalar that
stays differentiable in the losses *and* in the combiner's own weights (weights may be
tensors that require grad, which is how :mod:`moopt.hypergrad` tunes them), and
``combiner.backward(losses)`` replaces ``sum(losses).backward()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from moopt._base import LossCombiner
from moopt._validation import (
    as_weight_vector,
    carries_derivatives,
    check_choice,
    check_positive,
)


def _register_weights(module: nn.Module, name: str, weights: object) -> None:
    """Store validated weights: as given when they carry derivatives, else as a buffer."""
    tensor = as_weight_vector(weights, name)
    if carries_derivatives(tensor):
        setattr(module, name, tensor)
    else:
        module.register_buffer(name, tensor.detach().clone())


class Linear(LossCombiner):
    """Linear scalarization ``Σ_k w_k L_k``.

    Reaches only the *supported* (convex-hull) part of a Pareto front: where the front is
    concave, every weight leads to one of its ends (see ``moopt demo``). Use
    :class:`Chebyshev` or :class:`moopt.MDMM` constraints there.

    Args:
        weights: K non-negative weights, not all zero (a tensor that requires grad is
            kept as is, so the scalarization is differentiable in it).
    """

    weights: torch.Tensor

    def __init__(self, weights: torch.Tensor | Sequence[float]) -> None:
        tensor = as_weight_vector(weights, "weights")
        super().__init__(n_tasks=tensor.numel())
        _register_weights(self, "weights", weights)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.weights.to(losses) * losses).sum()

    def extra_repr(self) -> str:
        return f"weights={self.weights.detach().tolist()}"


class Chebyshev(LossCombiner):
    """(Smooth) Tchebycheff scalarization.

    Plain (``mu=None``): ``max_k w_k (L_k − z_k)``, which reaches every Pareto-optimal
    point, concave parts included, as the weights vary (Miettinen 1999, §3.4). Its
    gradient flows only through the currently worst weighted loss.

    Smooth (``mu > 0``, Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024): ``μ · log Σ_k exp(w_k (L_k − z_k) / μ)``, an upper bound
    of the plain form within ``μ·log K`` that is differentiable everywhere and tends to
    it as ``μ → 0``.

    Args:
        weights: K non-negative preference weights, not all zero.
        ideal: the ideal (utopia) point z, K values; zeros when not given.
        mu: smoothing temperature; ``None`` for the plain, non-smooth form.
    """

    weights: torch.Tensor
    ideal: torch.Tensor

    def __init__(
        self,
        weights: torch.Tensor | Sequence[float],
        ideal: torch.Tensor | Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        tensor = as_weight_vector(weights, "weights")
        super().__init__(n_tasks=tensor.numel())
        _register_weights(self, "weights", weights)
        if ideal is None:
            self.register_buffer("ideal", torch.zeros_like(tensor.detach()))
        else:
            ideal_tensor = torch.as_tensor(ideal, dtype=tensor.dtype)
            if ideal_tensor.shape != tensor.shape:
                raise ValueError(
                    f"ideal must have one value per task, shape {tuple(tensor.shape)}; "
                    f"got {tuple(ideal_tensor.shape)}"
                )
            if not bool(torch.isfinite(ideal_tensor).all()):
                raise ValueError(f"ideal must be finite; got {ideal_tensor.tolist()}")
            self.register_buffer("ideal", ideal_tensor.detach().clone())
        self.mu = None if mu is None else check_positive(mu, "mu")

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        scaled = self.weights.to(losses) * (losses - self.ideal.to(losses))
        if self.mu is None:
            return scaled.max()
        return self.mu * torch.logsumexp(scaled / self.mu, dim=0)

    def extra_repr(self) -> str:
        return f"weights={self.weights.detach().tolist()}, mu={self.mu}"


TASK_KINDS = ("regression", "classification")


class UncertaintyWeighting(LossCombiner):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns one log-variance ``s_k = log σ_k²`` per task and minimises, jointly with the
    model, ``Σ_k c_k · exp(−s_k) · L_k + s_k / 2`` where ``c_k = 1/2`` for a regression
    task (Gaussian likelihood, eq. 5 of the paper: ``L/(2σ²) + log σ``) and ``c_k = 1``
    for a classification task (softmax likelihood with temperature, eq. 10:
    ``L/σ² + log σ``). Writing the regulariser as ``s_k/2 = log σ_k`` follows the paper;
    at the optimum ``σ_k² = 2 c_k L_k``, i.e. ``σ² = L`` for regression and ``σ² = 2L``
    for classification.

    The paper released no code; common re-implementations apply one of the two forms to
    every task. Here the kind is chosen per task, with the paper's constants.

    Args:
        n_tasks: number of tasks K.
        kinds: ``"regression"`` or ``"classification"`` for all tasks, or one per task.
        init_log_variance: initial ``s_k`` (0: σ² = 1).
    """

    def __init__(
        self,
        n_tasks: int,
        kinds: str | Sequence[str] = "regression",
        init_log_variance: float = 0.0,
    ) -> None:
        super().__init__(n_tasks=n_tasks)
        if isinstance(kinds, str):
            kinds = [kinds] * n_tasks
        kinds = list(kinds)
        if len(kinds) != n_tasks:
            raise ValueError(f"kinds must name one kind per task ({n_tasks}); got {len(kinds)}")
        for kind in kinds:
            check_choice(kind, "kinds", TASK_KINDS)
        if not isinstance(init_log_variance, (int, float)) or not torch.isfinite(
            torch.tensor(float(init_log_variance))
        ):
            raise ValueError(f"init_log_variance must be a finite number; got {init_log_variance}")
        self.kinds = kinds
        self.init_log_variance = float(init_log_variance)
        self.log_variance = nn.Parameter(torch.full((n_tasks,), float(init_log_variance)))
        self.register_buffer(
            "coefficient",
            torch.tensor([0.5 if kind == "regression" else 1.0 for kind in kinds]),
        )

    @property
    def variance(self) -> torch.Tensor:
        """The current σ_k² = exp(s_k), detached."""
        return self.log_variance.detach().exp()

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        log_variance = self.log_variance.to(losses)
        precision = torch.exp(-log_variance)
        return (self.coefficient.to(losses) * precision * losses + 0.5 * log_variance).sum()

    def reset(self) -> None:
        """Set every log-variance back to ``init_log_variance``."""
        with torch.no_grad():
            self.log_variance.fill_(self.init_log_variance)

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}"
