"""Where to put the ε bounds of a two-loss sweep: evenly in ε, or evenly along the front.

Bounds evenly spaced in ε crowd the points where the front is flat in the constrained
loss and leave gaps where it is steep: on the concave quarter circle ``L₁² + L₂² = 1``
with ``L₂ ≤ ε``, the last 10 % of the ε range holds 29 % of the arc. Bounds placed
evenly in *arc length* (in losses normalised by the anchors' range) give every stretch
of the front the same number of points. The arc length of a front that is not yet known
is measured on a pilot: a short warm-started chain (see :func:`pilot_epsilons`), whose
points, with the two anchors, are joined by a parametric cubic spline (see
:func:`arc_length_epsilons`).
"""

from __future__ import annotations

import math

import numpy as np

SPACINGS = ("even", "arc")
"""The ``epsilon_spacing`` values ``trace`` accepts."""


MONOTONE_TOLERANCE = 1e-3
"""How far (normalised units) the spline may dip in the constrained loss before PCHIP
replaces it. At an end where the front is tangent to the constrained axis (the concave
circle at ``(0, 1)``) any spline overshoots a little (1e-4 through 3 pilot points); the
running maximum of the bounds absorbs such a dip."""


def pilot_size(n_points: int) -> int:
    """Interior pilot runs for an ``n_points`` ε sweep: ``max(3, round(√n_points))``.

    The pilot only has to fix the shape of the front between the anchors: on the
    circles, bounds read off a curve through the 3 exact pilot points of an 11-point
    sweep are within 8 % of equal arc steps, and their hypervolume within 0.1 % of that of
    11 points evenly spaced along the arc (``tests/test_frontier_spacing.py`` checks it);
    with the 10 of a 100-point sweep, within 0.001 %.
    """
    return max(3, round(math.sqrt(n_points)))


def pilot_epsilons(low: float, high: float, n_points: int) -> np.ndarray:
    """The pilot's bounds: ``pilot_size(n_points)`` values evenly inside ``(low, high)``.

    The ends are left out: the two anchors are the front's points there.
    """
    return np.linspace(low, high, pilot_size(n_points) + 2)[1:-1]


def _front_order(points: np.ndarray) -> np.ndarray:
    """The non-dominated rows of a ``(P, 2)`` array, by increasing second column, with
    points that coincide (within 1e-12) kept once."""
    order = np.lexsort((points[:, 0], points[:, 1]))
    kept: list[np.ndarray] = []
    for point in points[order]:
        if kept and point[0] >= kept[-1][0]:
            continue
        if kept and math.hypot(*(point - kept[-1])) < 1e-12:
            continue
        kept.append(point)
    return np.array(kept)


def arc_length_epsilons(
    objective_losses: np.ndarray,
    constrained_losses: np.ndarray,
    ideal: tuple[float, float],
    nadir: tuple[float, float],
    n_points: int,
) -> np.ndarray:
    """``n_points`` bounds on the constrained loss, evenly spaced in arc length of the front.

    The points ``(L_objective, L_constrained)`` found so far are normalised to
    ``(L − ideal) / (nadir − ideal)`` (``ideal``, ``nadir``: ``(objective, constrained)``
    pairs), the dominated ones dropped, and the rest joined, in order of the constrained
    loss, by a parametric curve: each coordinate a not-a-knot cubic spline of the
    cumulative chord length (accurate to fourth order on a smooth front: through 10 exact
    points of the quarter circle, 100 bounds land within 5 % of equal arc steps except
    the last step). Where that spline would not be monotone in the constrained loss (a
    kinked front, or unevenly placed points) the curve is the monotone PCHIP interpolant
    instead (Fritsch & Carlson 1980; see ``MONOTONE_TOLERANCE``); the bounds always come
    out non-decreasing. The
    curve needs no slopes, so the multipliers of a pilot that lags behind its bounds (a
    warm-started run can end on the front but off its own ε) do no harm. Its arc length
    is measured on 64 sub-steps per piece; the returned bounds are the constrained
    coordinates of ``n_points`` points at equal arc-length steps, from ``ideal`` to
    ``nadir`` (the first and last are set to exactly those).

    Falls back to even spacing when fewer than two distinct non-dominated points are given.
    """
    try:
        from scipy.interpolate import CubicSpline, PchipInterpolator
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "epsilon_spacing='arc' needs scipy: pip install 'moopt[frontier]'"
        ) from error
    low = np.asarray(ideal, dtype=float)
    span = np.asarray(nadir, dtype=float) - low
    span = np.where(span > 0, span, 1.0)
    points = (np.column_stack([objective_losses, constrained_losses]) - low) / span
    front = _front_order(points[np.isfinite(points).all(axis=1)])
    if len(front) < 2:
        return np.linspace(ideal[1], nadir[1], n_points)
    chord = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(front, axis=0).T))])
    fine = np.linspace(0.0, chord[-1], 64 * (len(front) - 1) + 1)
    curve = [CubicSpline(chord, front[:, c]) for c in range(2)]
    dense = np.column_stack([c(fine) for c in curve])
    if np.diff(dense[:, 1]).min() < -MONOTONE_TOLERANCE:
        curve = [PchipInterpolator(chord, front[:, c]) for c in range(2)]
        dense = np.column_stack([c(fine) for c in curve])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(dense, axis=0).T))])
    where = np.interp(np.linspace(0.0, arc[-1], n_points), arc, fine)
    bounds = low[1] + span[1] * np.clip(curve[1](where), 0.0, 1.0)
    bounds = np.maximum.accumulate(bounds)
    bounds[0], bounds[-1] = ideal[1], nadir[1]
    return bounds
