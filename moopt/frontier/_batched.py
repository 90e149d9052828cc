"""Many runs of one method as one batched computation (the fast path for toy problems).

``BatchedScalarization`` holds B runs' configurations and maps a ``(B, K)`` loss matrix to
B scalars, row b being exactly what run b's own combiner returns:

* linear: ``Σ_k w_bk L_bk`` (``moopt.scalarize.Linear``);
* chebyshev: ``max_k w_bk (L_bk − z_k)``; smooth: ``μ log Σ_k exp(w_bk (L_bk − z_k)/μ)``
  (``moopt.scalarize.Chebyshev``);
* epsilon: ``L_bi + Σ_j ψ(h_bj, λ_bj)`` with ``h = s_j (L_bj − ε_bj)`` and
  ``ψ(h, λ) = (max(0, λ + c h)² − λ²)/(2c)`` (``moopt.mdmm`` with ``<=`` constraints),
  the multipliers ``λ`` a ``(B, m)`` parameter whose gradient is negated (ascent).

Summing the rows and calling ``backward`` gives every run its own gradient (the runs share
no parameter), and Adam and SGD act elementwise, so a batched sweep follows the same
iterates as the runs one by one (tests check it against the combiners themselves). The
combiners cannot simply be ``vmap``-ed: their input checks branch on tensor values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from moopt.frontier._config import ANCHOR, PointConfig


def _negate(grad: torch.Tensor) -> torch.Tensor:
    return -grad


class BatchedScalarization(nn.Module):
    """Row-wise combination of a ``(B, K)`` loss matrix for B runs of one method."""

    def __init__(
        self,
        configs: Sequence[PointConfig],
        damping: float,
        scales: Sequence[float] | None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        methods = {c.method for c in configs}
        if len(methods) != 1:
            raise ValueError(f"a batch must hold one method; got {sorted(methods)}")
        self.method = methods.pop()
        if self.method == "epsilon":
            objectives = {c.objective for c in configs}
            if len(objectives) != 1:
                raise ValueError("an ε batch must share its objective")
            self.objective = objectives.pop()
            self.constrained = [j for j, b in enumerate(configs[0].epsilon) if b is not None]
            bounds = [[c.epsilon[j] for j in self.constrained] for c in configs]
            self.register_buffer("bounds", torch.tensor(bounds, dtype=dtype))
            scale = [1.0 if scales is None else float(scales[j]) for j in self.constrained]
            self.register_buffer("scale", torch.tensor(scale, dtype=dtype))
            self.damping = float(damping)
            self.multipliers = nn.Parameter(
                torch.zeros(len(configs), len(self.constrained), dtype=dtype)
            )
            self.multipliers.register_hook(_negate)
        else:
            self.register_buffer("weights", torch.tensor([c.weights for c in configs], dtype=dtype))
            if self.method in ("chebyshev", "smooth_chebyshev"):
                self.register_buffer("ideal", torch.tensor([c.ideal for c in configs], dtype=dtype))
            if self.method == "smooth_chebyshev":
                self.register_buffer("mu", torch.tensor([[c.mu] for c in configs], dtype=dtype))
            elif self.method not in (ANCHOR, "linear", "chebyshev"):
                raise ValueError(f"unknown method {self.method!r}")

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """B scalars, one per run, from the ``(B, K)`` losses."""
        if self.method in (ANCHOR, "linear"):
            return (self.weights * losses).sum(-1)
        if self.method == "chebyshev":
            return (self.weights * (losses - self.ideal)).max(-1).values
        if self.method == "smooth_chebyshev":
            scaled = self.weights * (losses - self.ideal)
            return self.mu[:, 0] * torch.logsumexp(scaled / self.mu, dim=-1)
        h = self.scale * (losses[:, self.constrained] - self.bounds)
        lam = self.multipliers
        c = self.damping
        penalty = (torch.relu(lam + c * h) ** 2 - lam**2) / (2 * c)
        return losses[:, self.objective] + penalty.sum(-1)

    def load_multipliers(self, states: Sequence[dict | None]) -> None:
        """Start each ε run from the multipliers saved in its warm-start state."""
        if self.method != "epsilon":
            return
        with torch.no_grad():
            for b, state in enumerate(states):
                saved = (state or {}).get("combiner") or {}
                for i in range(len(self.constrained)):
                    value = saved.get(f"constraints.{i}.multiplier")
                    if value is not None:
                        self.multipliers[b, i] = value.reshape(())

    def combiner_state(self, b: int) -> dict:
        """Run b's multipliers in the layout of ``moopt.mdmm.MDMM.named_parameters``."""
        if self.method != "epsilon":
            return {}
        return {
            f"constraints.{i}.multiplier": self.multipliers[b, i].detach().clone()
            for i in range(len(self.constrained))
        }

    def raw_multipliers(self, b: int) -> list[float] | None:
        """Run b's final multipliers λ (unscaled, like the MDMM parameters)."""
        if self.method != "epsilon":
            return None
        return self.multipliers[b].detach().tolist()
