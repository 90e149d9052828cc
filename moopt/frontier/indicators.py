"""Quality indicators of a set of loss vectors (minimisation), through ``moocore``.

* Non-dominated mask: ``a`` dominates ``b`` when ``a ≤ b`` everywhere and ``a < b``
  somewhere; duplicates of a non-dominated point are all kept.
* Hypervolume (Zitzler & Thiele 1998): the Lebesgue measure of the region dominated by
  the points and bounded by the reference point ``r``; points that do not strictly
  dominate ``r`` contribute nothing.
* IGD (Coello & Reyes Sierra 2004): ``IGD(A, R) = (1/|R|) Σ_{r∈R} min_{a∈A} ‖a − r‖₂``,
  the mean distance from each reference point to the nearest found point.
* IGD+ (Ishibuchi et al. 2015): the same with ``d⁺(a, r) = ‖max(a − r, 0)‖₂``, which
  only counts the ways in which ``a`` is worse than ``r`` (weakly Pareto-compliant).

Normalisation: none by default (loss units). With ``normalize=True``, both sets are
mapped by ``(x − min R) / (max R − min R)`` per objective, the ideal and nadir of the
reference front, so objectives on different scales weigh equally.
"""

from __future__ import annotations

import numpy as np


def _moocore():
    try:
        import moocore
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "moopt.frontier indicators need moocore: pip install 'moopt[frontier]'"
        ) from error
    return moocore


def _as_points(points: object, name: str, n_objectives: int | None = None) -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim == 1 and array.size:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty (N, K) array of loss vectors; got {array.shape}"
        )
    if n_objectives is not None and array.shape[1] != n_objectives:
        raise ValueError(f"{name} has {array.shape[1]} objectives; expected {n_objectives}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def nondominated_mask(points: object) -> np.ndarray:
    """Boolean mask of the points no other point dominates (duplicates kept)."""
    array = _as_points(points, "points")
    return np.asarray(_moocore().is_nondominated(array, keep_weakly=True), dtype=bool)


def hypervolume(points: object, ref_point: object) -> float:
    """Hypervolume of ``points`` with respect to ``ref_point`` (minimisation)."""
    array = _as_points(points, "points")
    ref = np.asarray(ref_point, dtype=float).reshape(-1)
    if ref.size != array.shape[1]:
        raise ValueError(
            f"ref_point has {ref.size} entries; points have {array.shape[1]} objectives"
        )
    inside = np.all(array < ref, axis=1)
    if not inside.any():
        return 0.0
    return float(_moocore().hypervolume(array[inside], ref=ref))


def _normalised(points: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = reference.min(axis=0)
    span = reference.max(axis=0) - low
    span = np.where(span > 0, span, 1.0)
    return (points - low) / span, (reference - low) / span


def igd(points: object, reference: object, normalize: bool = False) -> float:
    """Inverted generational distance of ``points`` to the ``reference`` front."""
    return _distance_to_front("igd", points, reference, normalize)


def igd_plus(points: object, reference: object, normalize: bool = False) -> float:
    """IGD+ of ``points`` to the ``reference`` front."""
    return _distance_to_front("igd_plus", points, reference, normalize)


def _distance_to_front(indicator: str, points: object, reference: object, normalize: bool) -> float:
    """moocore's ``indicator`` (``"igd"`` or ``"igd_plus"``) of ``points`` to ``reference``."""
    array = _as_points(points, "points")
    ref = _as_points(reference, "reference", array.shape[1])
    if normalize:
        array, ref = _normalised(array, ref)
    return float(getattr(_moocore(), indicator)(array, ref=ref))
