"""``Front``: the points a sweep found, their configurations, indicators, save/load."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moopt.frontier import indicators
from moopt.frontier._config import PointConfig
from moopt.frontier.store import PointRecord

FORMAT = "moopt.frontier.Front/1"


class Front:
    """The points of a sweep: losses, configurations, MDMM multipliers, indicators.

    Args:
        records: the finished runs (:class:`PointRecord`).
        n_objectives: K (inferred from the records when omitted).
        reference: an ``(M, K)`` reference front (the analytic front of a toy problem),
            used by :meth:`igd`, :meth:`igd_plus` and the plots.
        ideal, nadir: the ideal and nadir points the sweep used (from its anchors).
        loss_names: names of the K losses (default ``L1 … LK``).

    Attributes:
        losses: ``(N, K)`` final losses, one row per run.
        configs: the :class:`PointConfig` of each run.
        methods: ``(N,)`` method of each run (``"anchor"`` for the single-task anchors).
        seeds: ``(N,)`` seed of each run.
        weights: ``(N, K)`` weights of the weighted runs and anchors, NaN elsewhere.
        epsilon: ``(N, K)`` ε bounds of the ε runs (NaN at the objective and elsewhere).
        multipliers: ``(N, K)`` final MDMM multipliers of the ε runs, in loss units: at a
            regular optimum ``λ_j = −∂L_objective/∂ε_j``, the local slope of the front.
        from_store: ``(N,)`` whether each point was loaded from a store.
    """

    def __init__(
        self,
        records: Sequence[PointRecord],
        n_objectives: int | None = None,
        reference: object = None,
        ideal: object = None,
        nadir: object = None,
        loss_names: Sequence[str] | None = None,
    ) -> None:
        self.records = list(records)
        if n_objectives is None:
            if not self.records:
                raise ValueError("n_objectives is required for a Front without records")
            n_objectives = len(self.records[0].losses)
        self.n_objectives = int(n_objectives)
        k = self.n_objectives
        for record in self.records:
            if len(record.losses) != k:
                raise ValueError(f"every record must have {k} losses; got {len(record.losses)}")
        n = len(self.records)
        self.losses = np.array([r.losses for r in self.records], dtype=float).reshape(n, k)
        self.configs = [r.config for r in self.records]
        self.methods = np.array([c.method for c in self.configs], dtype=object)
        self.seeds = np.array([c.seed for c in self.configs], dtype=int)
        self.weights = np.full((n, k), np.nan)
        self.epsilon = np.full((n, k), np.nan)
        self.multipliers = np.full((n, k), np.nan)
        for i, (record, config) in enumerate(zip(self.records, self.configs)):
            if config.weights is not None:
                self.weights[i] = config.weights
            if config.epsilon is not None:
                constrained = [j for j, b in enumerate(config.epsilon) if b is not None]
                self.epsilon[i, constrained] = [config.epsilon[j] for j in constrained]
                if record.multipliers is not None:
                    self.multipliers[i, constrained] = record.multipliers
        self.from_store = np.array([r.from_store for r in self.records], dtype=bool)
        self.reference = None if reference is None else np.asarray(reference, dtype=float)
        self.ideal = None if ideal is None else np.asarray(ideal, dtype=float)
        self.nadir = None if nadir is None else np.asarray(nadir, dtype=float)
        if loss_names is None:
            loss_names = [f"L{j + 1}" for j in range(k)]
        if len(loss_names) != k:
            raise ValueError(f"loss_names must have {k} names; got {len(loss_names)}")
        self.loss_names = [str(name) for name in loss_names]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        counts = ", ".join(f"{m}: {int((self.methods == m).sum())}" for m in self.method_names())
        return f"Front({len(self)} points, K={self.n_objectives}; {counts})"

    def method_names(self) -> list[str]:
        """The methods present, in order of first appearance."""
        return list(dict.fromkeys(self.methods.tolist()))

    def select(
        self,
        method: str | Sequence[str] | None = None,
        seed: int | None = None,
        mask: object = None,
    ) -> Front:
        """A Front of the points of some methods / one seed / a boolean mask."""
        keep = np.ones(len(self), dtype=bool)
        if method is not None:
            wanted = [method] if isinstance(method, str) else list(method)
            keep &= np.isin(self.methods, wanted)
        if seed is not None:
            keep &= self.seeds == seed
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != keep.shape:
                raise ValueError(f"mask must have shape {keep.shape}; got {mask.shape}")
            keep &= mask
        return Front(
            [r for r, k in zip(self.records, keep) if k],
            n_objectives=self.n_objectives,
            reference=self.reference,
            ideal=self.ideal,
            nadir=self.nadir,
            loss_names=self.loss_names,
        )

    def nondominated(self) -> np.ndarray:
        """Boolean mask of the points that no other point of this Front dominates."""
        if len(self) == 0:
            return np.zeros(0, dtype=bool)
        return indicators.nondominated_mask(self.losses)

    def hypervolume(self, ref_point: object) -> float:
        """Hypervolume dominated by the points, bounded by ``ref_point`` (minimisation)."""
        if len(self) == 0:
            return 0.0
        return indicators.hypervolume(self.losses, ref_point)

    def _reference(self, reference: object) -> np.ndarray:
        chosen = self.reference if reference is None else reference
        if chosen is None:
            raise ValueError("no reference front: pass reference= (an (M, K) array)")
        return np.asarray(chosen, dtype=float)

    def igd(self, reference: object = None, normalize: bool = False) -> float:
        """IGD to ``reference`` (default: the Front's reference front); see ``indicators``."""
        return indicators.igd(self.losses, self._reference(reference), normalize)

    def igd_plus(self, reference: object = None, normalize: bool = False) -> float:
        """IGD+ to ``reference`` (default: the Front's reference front); see ``indicators``."""
        return indicators.igd_plus(self.losses, self._reference(reference), normalize)

    def diagnose(self, **options: object):
        """:func:`moopt.frontier.diagnose` of this Front."""
        from moopt.frontier.diagnose import diagnose

        return diagnose(self, **options)

    def plot(self, **options: object):
        """:func:`moopt.frontier.plot_front` of this Front; returns the matplotlib figure."""
        from moopt.frontier.plot import plot_front

        return plot_front(self, **options)

    def table(self) -> str:
        """A plain-text table: one row per point (method, configuration, losses, λ)."""
        names = "  ".join(f"{name:>10}" for name in self.loss_names)
        lines = [f"{'method':<17}{'seed':>5}  {names}  configuration"]
        nondominated = self.nondominated() if len(self) else []
        for i, config in enumerate(self.configs):
            values = "  ".join(f"{v:10.4g}" for v in self.losses[i])
            flag = "" if nondominated[i] else "  (dominated)"
            detail = config.describe().split(" seed ")[0].removeprefix(config.method).strip()
            if config.method == "epsilon":
                lam = [f"{m:.3g}" for m in self.multipliers[i] if np.isfinite(m)]
                detail += f"  lambda=({', '.join(lam)})"
            lines.append(f"{config.method:<17}{config.seed:>5}  {values}  {detail}{flag}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable form (see :meth:`save`)."""

        def array(value: np.ndarray | None) -> list | None:
            return None if value is None else value.tolist()

        return {
            "format": FORMAT,
            "n_objectives": self.n_objectives,
            "loss_names": self.loss_names,
            "ideal": array(self.ideal),
            "nadir": array(self.nadir),
            "reference": array(self.reference),
            "records": [record.to_dict() for record in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Front:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a saved Front (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        return cls(
            [PointRecord.from_dict(r) for r in data["records"]],
            n_objectives=data["n_objectives"],
            reference=data.get("reference"),
            ideal=data.get("ideal"),
            nadir=data.get("nadir"),
            loss_names=data.get("loss_names"),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the Front to a JSON file (floats round-trip exactly)."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Front:
        """Read a Front written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @staticmethod
    def from_losses(
        losses: object, method: str = "given", reference: object = None, loss_names=None
    ) -> Front:
        """A Front of bare loss vectors (e.g. from another optimiser, for comparison)."""
        array = np.asarray(losses, dtype=float)
        if array.ndim != 2 or array.shape[1] < 2:
            raise ValueError(f"losses must be an (N, K) array with K >= 2; got {array.shape}")
        records = [
            PointRecord(PointConfig(method, 0), tuple(row.tolist()), None, 0.0, key=f"{method}-{i}")
            for i, row in enumerate(array)
        ]
        return Front(records, array.shape[1], reference=reference, loss_names=loss_names)
