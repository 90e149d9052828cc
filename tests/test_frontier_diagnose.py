"""Diagnosis on synthetic fronts with known answers (no training)."""

import numpy as np
import pytest

from moopt.frontier import Front, PointConfig, PointRecord, diagnose
from moopt.frontier.diagnose import support_depth


def _front(rows):
    """rows: (method, weights or None, losses)."""
    records = [
        PointRecord(PointConfig(method, 0, weights=weights), tuple(losses), None, 0.0, key=str(i))
        for i, (method, weights, losses) in enumerate(rows)
    ]
    return Front(records)


def _quarter_circle(n, concave=True):
    phi = np.linspace(0, np.pi / 2, n)
    points = np.stack([np.sin(phi), np.cos(phi)], 1)
    return points if concave else 1 - points


def test_support_depth_matches_the_chord_on_a_concave_circle():
    points = _quarter_circle(5)
    depth = support_depth(points)
    assert depth[0] == pytest.approx(0, abs=1e-9) and depth[-1] == pytest.approx(0, abs=1e-9)
    # the middle point (√½, √½) lies 2·√½ − 1 above the chord L1 + L2 = 1 for w = (½, ½)
    assert depth[2] == pytest.approx(0.5 * (2 * np.sqrt(0.5) - 1), rel=1e-6)
    assert (depth[1:-1] > 0.05).all()


def test_support_depth_is_zero_on_a_convex_front():
    assert np.allclose(support_depth(_quarter_circle(9, concave=False)), 0, atol=1e-9)


def test_support_depth_agrees_with_brute_force_weights():
    rng = np.random.default_rng(0)
    points = rng.random((12, 3))
    weights = rng.dirichlet(np.ones(3), size=20000)
    sums = points @ weights.T  # (points, weights)
    brute = (sums - sums.min(axis=0)).min(axis=1)  # best gap over sampled weights
    depth = support_depth(points)
    assert np.all(depth <= brute + 1e-9)
    np.testing.assert_allclose(depth, brute, atol=5e-3)


def test_failed_linear_run_is_reported_as_basin_not_concavity():
    # a convex front; the w=(0.5, 0.5) run stopped at an end, another point is better
    rows = [("linear", (1.0, 0.0), (0.0, 1.0)), ("linear", (0.0, 1.0), (1.0, 0.0))]
    rows += [("linear", (0.5, 0.5), (0.0, 1.0))]
    rows += [("chebyshev", (0.5, 0.5), (0.25, 0.25))]
    diagnosis = diagnose(_front(rows))
    assert not diagnosis.is_concave
    assert [f.index for f in diagnosis.failed] == [2]
    assert diagnosis.failed[0].best_index == 3
    assert "basins" in str(diagnosis) and "not concavity" in str(diagnosis)


def test_gap_between_neighbouring_weights_is_reported_with_points_inside():
    circle = _quarter_circle(7)
    rows = [
        ("linear", (w, 1 - w), (0.0, 1.0) if w > 0.5 else (1.0, 0.0)) for w in (1, 0.75, 0.25, 0)
    ]
    rows += [("epsilon", None, tuple(p)) for p in circle[1:-1]]
    diagnosis = diagnose(_front(rows))
    assert len(diagnosis.gaps) == 1
    gap = diagnosis.gaps[0]
    assert {gap.first, gap.second} == {1, 2}
    assert gap.unsupported_inside == 5
    assert diagnosis.linear_at_ends == (4, 4)
    assert len(diagnosis.stretches) == 1 and diagnosis.stretches[0].indices == [4, 5, 6, 7, 8]


def test_diagnose_rejects_bad_input():
    with pytest.raises(TypeError, match="front"):
        diagnose(np.zeros((3, 2)))
    front = _front([("linear", (1.0, 0.0), (0.0, 1.0))])
    with pytest.raises(ValueError, match="gap"):
        diagnose(front, gap=-1)


def test_import_frontier_loads_no_heavy_package():
    import subprocess
    import sys

    code = (
        "import sys, moopt.frontier\n"
        "heavy = ['scipy', 'cvxpy', 'pymoo', 'moocore', 'matplotlib', 'sklearn', 'dask']\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_unsupported_linear_point_is_a_failed_run_not_concavity():
    # convex front; the w=(0.5, 0.5) run stopped above the chord of its neighbours, so it
    # is unsupported, yet a linear run's own weights rank another found point better:
    # that is a failed run, never evidence of a concave stretch.
    rows = [("linear", (1.0, 0.0), (0.0, 1.0)), ("linear", (0.0, 1.0), (1.0, 0.0))]
    rows += [("linear", (0.5, 0.5), (0.3, 0.35))]
    rows += [("epsilon", None, (0.2, 0.4)), ("epsilon", None, (0.4, 0.2))]
    diagnosis = diagnose(_front(rows))
    assert diagnosis.unsupported[2]
    assert not diagnosis.concave.any() and not diagnosis.is_concave
    assert [f.index for f in diagnosis.failed] == [2]
    assert "concavely" not in str(diagnosis) and "not concavity" in str(diagnosis)
