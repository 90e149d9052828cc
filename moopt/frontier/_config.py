"""The configuration of one point of a sweep, its store key, and the default grids.

A sweep is a set of independent training runs. Each run is described by a
:class:`PointConfig` (method, weights or ε bounds, seed, position in a warm-start chain);
its store key is the SHA-256 of the configuration's canonical JSON together with the
sweep's fingerprint, so a re-run of the same sweep finds the points it already finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json

import numpy as np

METHODS = ("linear", "chebyshev", "smooth_chebyshev", "epsilon")
"""The sweep methods ``trace`` accepts."""

ANCHOR = "anchor"
"""Method label of the single-task anchor runs that fix the ε range and the ideal point."""


@dataclasses.dataclass(frozen=True)
class PointConfig:
    """Everything that defines one run of a sweep.

    Attributes:
        method: ``"anchor"``, ``"linear"``, ``"chebyshev"``, ``"smooth_chebyshev"`` or
            ``"epsilon"``.
        seed: the random seed of the run (``torch.manual_seed`` is called with it).
        weights: task weights (weighted methods and anchors), else ``None``.
        epsilon: for ``"epsilon"``, the upper bound on each loss, ``None`` at the
            objective's index; else ``None``.
        objective: for ``"epsilon"``, the index of the minimised loss.
        ideal: for the Chebyshev methods, the reference point ``z`` of
            ``max_k w_k (L_k - z_k)``.
        mu: for ``"smooth_chebyshev"``, the temperature of the log-sum-exp.
        chain: for ``"epsilon"``, which warm-start chain the run belongs to.
        step: for ``"epsilon"``, the run's position in its chain (0 starts from the anchor).
    """

    method: str
    seed: int
    weights: tuple[float, ...] | None = None
    epsilon: tuple[float | None, ...] | None = None
    objective: int | None = None
    ideal: tuple[float, ...] | None = None
    mu: float | None = None
    chain: int | None = None
    step: int | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (tuples become lists)."""
        return {
            field.name: (list(value) if isinstance(value, tuple) else value)
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_dict(cls, data: dict) -> PointConfig:
        """Inverse of :meth:`to_dict`."""
        values = {}
        for field in dataclasses.fields(cls):
            value = data.get(field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def key(self, fingerprint: str = "") -> str:
        """SHA-256 (hex, 32 characters) of the canonical JSON of the config and fingerprint."""
        payload = json.dumps(
            {"config": self.to_dict(), "fingerprint": fingerprint}, sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:32]

    def describe(self) -> str:
        """A short human-readable label, e.g. ``linear w=(0.3, 0.7) seed 0``."""
        if self.method == "epsilon" and self.epsilon is not None:
            bounds = ", ".join(
                f"L{j + 1}<={value:.3g}"
                for j, value in enumerate(self.epsilon)
                if value is not None
            )
            return f"epsilon min L{(self.objective or 0) + 1} s.t. {bounds} seed {self.seed}"
        if self.weights is not None:
            weights = ", ".join(f"{w:.3g}" for w in self.weights)
            return f"{self.method} w=({weights}) seed {self.seed}"
        return f"{self.method} seed {self.seed}"


def simplex_lattice(n_objectives: int, n_per_edge: int) -> np.ndarray:
    """Every weight vector on the simplex whose entries are multiples of ``1/(n_per_edge-1)``.

    The Das & Dennis (1998) lattice: ``C(n_per_edge + K - 2, K - 1)`` points, the corners
    (single-task weights) included. For two objectives it is ``linspace(0, 1, n)``
    paired with its reverse, ordered by the first weight descending.
    """
    if n_objectives < 2:
        raise ValueError(f"n_objectives must be at least 2; got {n_objectives}")
    if n_per_edge < 2:
        raise ValueError(f"n_points must be at least 2; got {n_per_edge}")
    divisions = n_per_edge - 1
    rows = [
        combo
        for combo in itertools.product(range(divisions + 1), repeat=n_objectives - 1)
        if sum(combo) <= divisions
    ]
    lattice = np.array([[*combo, divisions - sum(combo)] for combo in rows], dtype=float)
    lattice = lattice[np.lexsort(lattice.T[::-1])][::-1]
    return lattice / divisions
