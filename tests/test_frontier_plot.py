"""Plots: the right artists for 2 and 3 objectives, and input checks (no training)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from moopt.frontier import Front, PointConfig, PointRecord, plot_front  # noqa: E402
from moopt.frontier.plot import supported_hull  # noqa: E402


def _front(rows, reference=None, ideal=None):
    records = [
        PointRecord(
            PointConfig(method, 0, weights=weights, ideal=ideal if method == "chebyshev" else None),
            tuple(losses),
            None,
            0.0,
            key=str(i),
        )
        for i, (method, weights, losses) in enumerate(rows)
    ]
    return Front(records, reference=reference, ideal=ideal)


def _concave_front():
    phi = np.linspace(0, np.pi / 2, 7)
    circle = np.stack([np.sin(phi), np.cos(phi)], 1)
    rows = [("linear", (1.0, 0.0), (0.0, 1.0)), ("linear", (0.0, 1.0), (1.0, 0.0))]
    rows += [("chebyshev", (np.cos(p), np.sin(p)), c) for p, c in zip(phi[1:-1], circle[1:-1])]
    return _front(rows, reference=circle, ideal=(0.0, 0.0))


def test_supported_hull_of_a_concave_front_is_its_chord():
    front = _concave_front()
    hull = supported_hull(front.losses)
    np.testing.assert_allclose(hull, [[0.0, 1.0], [1.0, 0.0]])


def test_two_objective_plot_shades_the_unsupported_region_and_draws_rays():
    fig = plot_front(_concave_front(), title="circle")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for label in ("reference front", "reach of linear weights", "unsupported (concave)"):
        assert label in labels
    assert "Chebyshev rays" in labels and "linear" in labels and "chebyshev" in labels
    assert len(ax.patches) == 1  # one shaded concave stretch
    plt.close(fig)


def test_three_objective_plots():
    rng = np.random.default_rng(0)
    points = rng.random((10, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    front = _front([("epsilon", None, p) for p in points], reference=points)
    fig = front.plot()
    assert fig.axes[0].name == "3d"
    plt.close(fig)
    fig = front.plot(kind="pairs")
    assert len(fig.axes) == 3
    plt.close(fig)


def test_plot_rejects_bad_input():
    with pytest.raises(TypeError, match="front"):
        plot_front(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="kind"):
        plot_front(_concave_front(), kind="4d")
    with pytest.raises(ValueError, match="kind"):
        plot_front(_concave_front(), kind="3d")
