"""Figures of a Front (matplotlib, imported lazily).

Two objectives: the points by method, the reference front, the *supported* boundary
(the lower-left convex hull of the non-dominated points: everything linear weights can
reach), the unsupported region shaded (between that hull and the concave stretches the
diagnosis found), and the Chebyshev preference rays ``z + t/w``. Three objectives: a 3-D
scatter, or the three pairwise projections (``kind="pairs"``).
"""

from __future__ import annotations

import numpy as np

from moopt.frontier.front import Front

STYLE = {
    "anchor": dict(marker="X", color="black", s=60, zorder=5),
    "linear": dict(marker="o", facecolors="none", edgecolors="tab:blue", s=90, lw=1.5, zorder=6),
    "chebyshev": dict(marker="^", color="tab:green", s=40, zorder=4),
    "smooth_chebyshev": dict(marker="v", color="tab:olive", s=40, zorder=4),
    "epsilon": dict(marker="s", color="tab:red", s=32, zorder=4),
}
KINDS = ("auto", "2d", "3d", "pairs")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'moopt[frontier]'") from error
    return plt


def _style(method: str) -> dict:
    return dict(STYLE.get(method, dict(marker="D", color="tab:gray", s=30, zorder=3)))


def supported_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the lower-left convex hull of 2-D points, ordered by increasing L1.

    These are the points some linear weight ``w ≥ 0`` makes optimal (Andrew's monotone
    chain, keeping the part of the lower hull where L2 decreases).
    """
    pts = np.unique(np.asarray(points, dtype=float), axis=0)
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    lower: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2:
            o, a = lower[-2], lower[-1]
            if (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]) <= 0:
                lower.pop()
            else:
                break
        lower.append(p)
    hull = np.array(lower)
    start = int(np.argmin(hull[:, 1] + 1e-12 * hull[:, 0]))
    first = int(np.argmin(hull[:, 0]))
    return hull[first : start + 1]


def _plot_2d(ax, front: Front, reference: bool, hull: bool, rays: bool, diagnosis) -> None:
    names = front.loss_names
    if reference and front.reference is not None:
        ref = front.reference
        ax.plot(ref[:, 0], ref[:, 1], color="0.6", lw=1.5, label="reference front", zorder=1)
    if hull and len(front):
        nondominated = front.losses[front.nondominated()]
        vertices = supported_hull(nondominated)
        ax.plot(
            vertices[:, 0],
            vertices[:, 1],
            ls="--",
            color="tab:purple",
            lw=1,
            label="reach of linear weights",
            zorder=2,
        )
        if diagnosis is None:
            diagnosis = front.diagnose()
        for n, stretch in enumerate(diagnosis.stretches):
            pts = front.losses[stretch.indices]
            pts = pts[np.argsort(pts[:, 0])]
            left = vertices[vertices[:, 0] <= pts[0, 0]]
            right = vertices[vertices[:, 0] >= pts[-1, 0]]
            polygon = np.concatenate([left[-1:], pts, right[:1]])
            ax.fill(
                polygon[:, 0],
                polygon[:, 1],
                color="tab:purple",
                alpha=0.15,
                label="unsupported (concave)" if n == 0 else None,
                zorder=1,
            )
    if rays and front.ideal is not None:
        chebyshev = np.isin(front.methods, ["chebyshev", "smooth_chebyshev"])
        top = front.losses.max(axis=0) if len(front) else np.ones(2)
        labelled = False
        for i in np.flatnonzero(chebyshev):
            w = front.weights[i]
            if not np.all(w > 0):
                continue
            z = np.asarray(front.configs[i].ideal, dtype=float)
            t = float(np.min((top - z) * w))
            end = z + t / w
            ax.plot(
                [z[0], end[0]],
                [z[1], end[1]],
                color="tab:green",
                lw=0.6,
                alpha=0.5,
                label=None if labelled else "Chebyshev rays",
                zorder=1,
            )
            labelled = True
    for method in front.method_names():
        rows = front.methods == method
        ax.scatter(front.losses[rows, 0], front.losses[rows, 1], label=method, **_style(method))
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(fontsize=8)


def plot_front(
    front: Front,
    ax=None,
    *,
    kind: str = "auto",
    reference: bool = True,
    hull: bool = True,
    rays: bool = True,
    diagnosis=None,
    title: str | None = None,
):
    """Plot a Front; returns the matplotlib ``Figure``.

    Args:
        front: the points to draw.
        ax: an existing Axes (2-D; a 3-D Axes for ``kind="3d"``); default: a new figure.
        kind: ``"2d"`` (K = 2), ``"3d"`` or ``"pairs"`` (K = 3); ``"auto"`` picks 2d / 3d.
        reference: draw the reference front when the Front has one.
        hull: (2-D) draw the reach of linear weights and shade the unsupported region.
        rays: (2-D) draw the Chebyshev preference rays from the ideal point along ``1/w``.
        diagnosis: a :class:`~moopt.frontier.Diagnosis` to shade (computed when needed).
        title: the figure title.
    """
    if not isinstance(front, Front):
        raise TypeError(f"front must be a moopt.frontier.Front; got {type(front).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}; got {kind!r}")
    k = front.n_objectives
    if kind == "auto":
        kind = "2d" if k == 2 else "3d"
    if (kind == "2d") != (k == 2) or k > 3:
        raise ValueError(f"kind={kind!r} cannot show {k} objectives (2d: K = 2; 3d, pairs: K = 3)")
    plt = _pyplot()
    if kind == "2d":
        fig = plt.figure(figsize=(5.5, 5)) if ax is None else ax.figure
        ax = fig.add_subplot() if ax is None else ax
        _plot_2d(ax, front, reference, hull, rays, diagnosis)
    elif kind == "3d":
        fig = plt.figure(figsize=(6, 5.5)) if ax is None else ax.figure
        ax = fig.add_subplot(projection="3d") if ax is None else ax
        if reference and front.reference is not None:
            ref = front.reference
            ax.scatter(*ref.T, color="0.75", s=4, label="reference front", depthshade=False)
        for method in front.method_names():
            rows = front.methods == method
            ax.scatter(*front.losses[rows].T, label=method, depthshade=False, **_style(method))
        ax.set_xlabel(front.loss_names[0])
        ax.set_ylabel(front.loss_names[1])
        ax.set_zlabel(front.loss_names[2])
        ax.legend(fontsize=8)
    else:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
        for panel, (i, j) in zip(axes, [(0, 1), (0, 2), (1, 2)]):
            if reference and front.reference is not None:
                ref = front.reference
                panel.scatter(ref[:, i], ref[:, j], color="0.8", s=4, label="reference front")
            for method in front.method_names():
                rows = front.methods == method
                panel.scatter(
                    front.losses[rows, i], front.losses[rows, j], label=method, **_style(method)
                )
            panel.set_xlabel(front.loss_names[i])
            panel.set_ylabel(front.loss_names[j])
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
