"""Plots of learned schedules (matplotlib, imported lazily)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from moopt.hypergrad.schedule import Schedule

if TYPE_CHECKING:
    from moopt.hypergrad.tune import History


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'moopt[examples]'") from error
    return plt


def plot_schedules(
    source: History | Mapping[str, Schedule],
    path: str | os.PathLike | None = None,
    names: list[str] | None = None,
) -> Any:
    """Draw every hyperparameter against the inner step, one panel per hyperparameter.

    With a :class:`History`, each outer step is one line (light to dark along the outer
    steps) and the final values are drawn bold; with ``{name: Schedule}`` the current
    values are drawn. Vector-valued hyperparameters (e.g. K loss weights) draw one line
    per component. Saves the figure to ``path`` if given; returns the figure.
    """
    plt = _pyplot()
    if isinstance(source, Mapping):
        curves = {n: ([], s.values().cpu(), s.window_of) for n, s in source.items()}
    else:
        curves = {
            n: (
                source.values[n],
                source.final_values.get(n, source.values[n][-1]),
                source.window_of[n],
            )
            for n in source.values
        }
    names = list(curves) if names is None else names
    unknown = [n for n in names if n not in curves]
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; have {list(curves)}")
    if not names:
        raise ValueError("nothing to plot: no hyperparameter")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    colormap = plt.get_cmap("viridis")
    for axis, name in zip(axes.flat, names):
        trail, final, window_of = curves[name]
        steps = torch.arange(len(window_of)).numpy()
        for k, values in enumerate(trail):
            per_step = values.reshape(values.shape[0], -1)[window_of]
            shade = colormap(0.15 + 0.7 * k / max(1, len(trail) - 1))
            axis.step(steps, per_step.numpy(), where="post", color=shade, alpha=0.5, lw=1)
        per_step = final.reshape(final.shape[0], -1)[window_of]
        axis.step(steps, per_step.numpy(), where="post", color="black", lw=2)
        axis.set_title(name)
        axis.set_xlabel("inner step")
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
