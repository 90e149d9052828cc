"""Reading a frontier diagnosis of a real model, where every point carries training noise.

Shared by ``multidigits.py`` and ``digits_vae.py``. Two facts separate noise from
concavity among the points a diagnosis calls unsupported:

* A linear run with weights ``w`` that were perfectly optimised lands on a point that
  minimises ``w·L`` over the front, so on a supported point. A linear run's point that is
  unsupported is therefore always a linear run that failed its own weighted sum, never
  evidence of a concave stretch.
* A point of another method that lies less deep below the hull than two seeds of one
  configuration land apart is within run-to-run noise.
"""

from __future__ import annotations

import numpy as np


def seed_scatter(front: object) -> np.ndarray:
    """How far two seeds of one configuration land apart, per configuration.

    For every configuration run with several seeds: the largest coordinate difference
    between its seeds, in losses normalised by the range of the non-dominated points (the
    units of the diagnosis' ``support_tol`` and ``depth``).
    """
    nondominated = front.losses[front.nondominated()]
    low = nondominated.min(axis=0)
    span = np.maximum(nondominated.max(axis=0) - low, 1e-12)
    groups: dict[tuple, list[np.ndarray]] = {}
    for config, losses in zip(front.configs, front.losses):
        key = (config.method, config.weights, config.epsilon)
        groups.setdefault(key, []).append((losses - low) / span)
    spreads = [np.ptp(np.stack(p), axis=0).max() for p in groups.values() if len(p) > 1]
    return np.array(spreads)


def explain_unsupported(front: object, diagnosis: object) -> str:
    """Split the unsupported points into failed linear runs and the others, in words."""
    unsupported = np.flatnonzero(diagnosis.unsupported)
    if unsupported.size == 0:
        return "No found point is unsupported: linear weights can reach every one."
    failed = {run.index for run in diagnosis.failed}
    linear = [i for i in unsupported if front.methods[i] == "linear"]
    others = [i for i in unsupported if front.methods[i] != "linear"]
    lines = [f"Of the {unsupported.size} unsupported point(s):"]
    if linear:
        beaten = sum(i in failed for i in linear)
        lines.append(
            f"- {len(linear)} are linear runs ({beaten} of them flagged as failing their own "
            "weighted sum). A perfectly optimised linear run lands on a supported point, so "
            "these are optimisation failures, not evidence of concavity."
        )
    if others:
        deepest = float(diagnosis.depth[others].max())
        methods = ", ".join(sorted({str(front.methods[i]) for i in others}))
        lines.append(
            f"- {len(others)} come from {methods}, at most {deepest:.1%} of the front's range "
            "below the hull of the others."
        )
    scatter = seed_scatter(front)
    if scatter.size:
        lines.append(
            f"Two seeds of one configuration land {np.median(scatter):.1%} of the range apart "
            f"(median; upper quartile {np.quantile(scatter, 0.75):.1%})."
        )
    return "\n".join(lines)
