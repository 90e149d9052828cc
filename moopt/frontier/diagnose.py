"""Where linear weights cannot reach, where they failed, and what to do about it.

From the points found by any methods, :func:`diagnose` reports three things:

1. **Unsupported points.** A point ``p`` is *supported* when some weight vector on the
   simplex makes it a minimiser of the weighted sum over the found set:
   ``max_{w ∈ Δ} min_{q} w·(q − p) ≥ 0`` (the LP below). An unsupported non-dominated
   point lies in a concave stretch of the front: no linear weight reaches it even with
   perfect optimisation (Das & Dennis 1997), only constraints (ε) or Chebyshev do.
   LP (scipy HiGHS), in losses normalised to ``[0, 1]`` by the non-dominated set's range:
   ``maximise t  s.t.  Σ_k w_k = 1, w ≥ 0, w·(q − p) ≥ t for every found q``; the
   *depth* of ``p`` is ``max(0, −t*)``, how far above the best weighted sum it stays at
   its most favourable weight. Only points found by other methods count as evidence of
   concavity: an unsupported point of a ``"linear"`` run is beaten, on the run's own
   weights, by another found point, so it is a failed run (2), not a concave stretch.
2. **Failed linear runs.** A ``"linear"`` run with weights ``w`` failed to optimise its
   own objective when another found point ``q`` has ``w·L(q) < w·L(run)`` by more than
   ``fail_tol · w·range``: the run stopped in a worse basin or too early — an
   optimisation failure, not a limit of linear weights.
3. **Gaps in a linear sweep.** Runs of one seed whose weights are neighbours but whose
   points land farther apart than ``gap`` (normalised) and than 3 times the median
   distance between neighbours of that seed (so an evenly spread sparse sweep has none);
   and the share of linear runs that landed at an end of the front.

Everything is relative to the points found: a concave stretch that no method reached is
invisible, and a stretch is called concave only when points inside it were found.

**Noise.** On a real model every point carries training noise. When some configuration
was run with several seeds, the default tolerance (``support_tol=None``) is the larger of
1 % of the range and the upper quartile of how far two seeds of one configuration land
apart (:func:`seed_scatter`): a point that lies less deep than run-to-run noise is not
called concave. The report says which tolerance it used.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moopt.frontier.front import Front


@dataclasses.dataclass
class FailedRun:
    """A linear run that another found point beats on the run's own weighted sum."""

    index: int
    weights: tuple[float, ...]
    value: float
    best_value: float
    best_index: int
    best_method: str


@dataclasses.dataclass
class Gap:
    """Neighbouring weights of one seed whose linear runs landed far apart.

    ``inside`` lists the concave-evidence points (unsupported, found by a non-linear
    method) in the box spanned by the two landing points; ``found`` lists every point of a
    non-linear method there.
    """

    first: int
    second: int
    distance: float
    inside: list[int]
    found: list[int] = dataclasses.field(default_factory=list)

    @property
    def unsupported_inside(self) -> int:
        """How many unsupported points lie inside the gap."""
        return len(self.inside)


@dataclasses.dataclass
class Stretch:
    """A concave stretch: unsupported non-dominated points and the range they span."""

    indices: list[int]
    low: np.ndarray
    high: np.ndarray


def _normaliser(losses: np.ndarray, nondominated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    core = losses[nondominated] if nondominated.any() else losses
    low = core.min(axis=0)
    span = core.max(axis=0) - low
    return low, np.where(span > 0, span, 1.0)


def support_depth(points: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """For each candidate, ``max(0, −t*)`` of the support LP against ``points``.

    0 means supported (some simplex weight makes the candidate a minimiser of the weighted
    sum over ``points``); a positive value is the gap to the best weighted sum at the
    candidate's most favourable weight. Use normalised losses.
    """
    try:
        from scipy.optimize import linprog
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the diagnosis needs scipy: pip install 'moopt[frontier]'") from error
    points = np.asarray(points, dtype=float)
    candidates = points if candidates is None else np.asarray(candidates, dtype=float)
    n, k = points.shape
    depths = np.zeros(len(candidates))
    cost = np.zeros(k + 1)
    cost[-1] = -1.0  # maximise t
    a_eq = np.concatenate([np.ones(k), [0.0]])[None, :]
    bounds = [(0.0, 1.0)] * k + [(None, None)]
    for i, p in enumerate(candidates):
        # w·(q − p) ≥ t  ⇔  −w·(q − p) + t ≤ 0
        a_ub = np.concatenate([-(points - p), np.ones((n, 1))], axis=1)
        result = linprog(
            cost,
            A_ub=a_ub,
            b_ub=np.zeros(n),
            A_eq=a_eq,
            b_eq=[1.0],
            bounds=bounds,
            method="highs",
        )
        if result.status != 0:
            raise RuntimeError(f"support LP failed for point {i}: {result.message}")
        depths[i] = max(0.0, -float(result.x[-1]))
    return depths


def _lattice_neighbours(weights: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of neighbouring weight rows.

    Two objectives: consecutive weights in order of ``w₁``. More: rows one lattice step
    apart (the smallest L1 distance between distinct rows).
    """
    if len(weights) < 2:
        return []
    if weights.shape[1] == 2:
        order = np.argsort(weights[:, 0], kind="stable")
        return [
            (int(a), int(b))
            for a, b in zip(order[:-1], order[1:])
            if abs(weights[a, 0] - weights[b, 0]) > 1e-12
        ]
    diffs = np.abs(weights[:, None, :] - weights[None, :, :]).sum(-1)
    positive = diffs[diffs > 1e-12]
    if positive.size == 0:
        return []
    step = positive.min()
    pairs = np.argwhere(np.triu(np.abs(diffs - step) < 1e-9 * max(1.0, step), k=1))
    return [(int(a), int(b)) for a, b in pairs]


class Diagnosis:
    """The result of :func:`diagnose`; ``str(diagnosis)`` is the report in words.

    Attributes:
        front: the diagnosed :class:`~moopt.frontier.Front`.
        nondominated: ``(N,)`` mask of non-dominated points.
        depth: ``(N,)`` support depth of each non-dominated point (0 elsewhere).
        unsupported: ``(N,)`` mask of non-dominated points with ``depth > support_tol``.
        stretches: concave stretches (:class:`Stretch`), ordered along L1.
        failed: linear runs that failed their own objective (:class:`FailedRun`).
        gaps: jumps between neighbouring linear weights (:class:`Gap`).
        linear_at_ends: how many linear runs landed at an end of the front, and of how many.
        support_tol: the depth tolerance used (given, or chosen from the seeds' scatter).
        scatter: per configuration run with several seeds, how far its seeds landed apart
            (normalised; empty when every configuration ran once).
    """

    def __init__(
        self,
        front: Front,
        nondominated: np.ndarray,
        depth: np.ndarray,
        unsupported: np.ndarray,
        stretches: list[Stretch],
        failed: list[FailedRun],
        gaps: list[Gap],
        linear_at_ends: tuple[int, int],
        support_tol: float,
        scatter: np.ndarray,
    ) -> None:
        self.front = front
        self.nondominated = nondominated
        self.depth = depth
        self.unsupported = unsupported
        self.stretches = stretches
        self.failed = failed
        self.gaps = gaps
        self.linear_at_ends = linear_at_ends
        self.support_tol = support_tol
        self.scatter = scatter

    @property
    def concave(self) -> np.ndarray:
        """``(N,)`` mask of the unsupported points found by non-linear methods: the
        evidence of concavity."""
        return self.unsupported & (self.front.methods != "linear")

    @property
    def is_concave(self) -> bool:
        """Whether a non-linear method found a point that no linear weight reaches."""
        return bool(self.concave.any())

    def __repr__(self) -> str:
        return (
            f"Diagnosis({int(self.unsupported.sum())} unsupported, {len(self.failed)} failed "
            f"linear runs, {len(self.gaps)} gaps)"
        )

    def _range(self, low: np.ndarray, high: np.ndarray) -> str:
        names = self.front.loss_names
        return ", ".join(f"{n} ∈ [{a:.3g}, {b:.3g}]" for n, a, b in zip(names, low, high))

    def __str__(self) -> str:
        front = self.front
        names = front.loss_names
        pair = "–".join(names)
        lines = [
            f"Front of {len(front)} points ({', '.join(front.method_names())}); "
            f"{int(self.nondominated.sum())} non-dominated."
        ]
        if self.scatter.size:
            lines[0] += (
                f" Seeds of one configuration land {np.median(self.scatter):.1%} of the "
                f"range apart (median); points less deep than {self.support_tol:.1%} are "
                "not called concave."
            )
        for stretch in self.stretches:
            methods = sorted({front.methods[i] for i in stretch.indices})
            where = self._range(stretch.low, stretch.high)
            lines.append(
                f"- Losses {pair} trade off concavely where {where}: "
                f"{len(stretch.indices)} points found there (by {', '.join(methods)}) are "
                "reachable by no linear weight, even with perfect optimisation. "
                "Use epsilon (or chebyshev) there."
            )
        if self.failed:
            worst = max(self.failed, key=lambda f: f.value - f.best_value)
            weights = ", ".join(f"{w:.3g}" for w in worst.weights)
            lines.append(
                f"- {len(self.failed)} linear run(s) did not minimise their own weighted sum: "
                f"e.g. w=({weights}) reached {worst.value:.4g}, but "
                f"{'an' if worst.best_method[0] in 'aeiou' else 'a'} {worst.best_method} "
                f"point gives {worst.best_value:.4g} for the same weights. That is an "
                "optimisation failure (a worse basin, the initialisation, or too few steps), "
                "not a limit of linear weights: use more seeds or steps, or chebyshev/epsilon."
            )
        if self.gaps:
            inside = len({i for g in self.gaps for i in g.inside})
            g = max(self.gaps, key=lambda gap: gap.distance)
            wa = ", ".join(f"{w:.3g}" for w in front.weights[g.first])
            wb = ", ".join(f"{w:.3g}" for w in front.weights[g.second])
            text = (
                f"- {len(self.gaps)} gap(s) in the linear sweep: neighbouring weights land far "
                f"apart, e.g. w=({wa}) and w=({wb}) jump by {g.distance:.2f} of the front's "
                "range."
            )
            if inside:
                text += (
                    f" The gaps hold {inside} unsupported point(s) found by other methods: "
                    "the front there is concave, and linear weights jump across it."
                )
            elif any(gap.found for gap in self.gaps):
                found = len({i for gap in self.gaps for i in gap.found})
                text += (
                    f" Other methods found {found} point(s) inside, all reachable by some "
                    "linear weight: the jump comes from optimisation (basins, "
                    "initialisation), not concavity."
                )
            elif not self.is_concave:
                text += (
                    " No point was found inside: trace with epsilon to tell a concave "
                    "stretch from an empty one."
                )
            lines.append(text)
        at_ends, total = self.linear_at_ends
        if total and at_ends >= max(2, 0.75 * total):
            lines.append(
                f"- {at_ends} of {total} linear runs landed at an end of the front (within 5% "
                "of a single-loss optimum): the weights do not spread over the trade-off."
            )
        if self.failed and not self.is_concave:
            lines.append(
                "Verdict: the failed linear runs missed points that some linear weight makes "
                "optimal: an optimisation failure (basins), not concavity."
            )
        elif self.failed and self.is_concave:
            lines.append(
                "Verdict: the front is concave in places (no linear weight reaches them), and "
                "some linear runs also fell into the wrong basin."
            )
        if len(lines) == 1:
            lines.append(
                "- Every non-dominated point found is reachable by some linear weight, and the "
                "linear runs minimised their objectives: linear weights suffice on this front."
            )
        return "\n".join(lines)


def diagnose(
    front: Front,
    support_tol: float | None = None,
    fail_tol: float = 1e-2,
    gap: float = 0.3,
) -> Diagnosis:
    """Diagnose a Front: unsupported points, failed linear runs, gaps (module docstring).

    Args:
        front: points found by any methods (their union is the comparison set).
        support_tol: normalised depth above which a point counts as unsupported.
            ``None`` (default): 1% of the front's range, or the upper quartile of the
            seeds' scatter when that is larger (see "Noise" in the module docstring).
        fail_tol: a linear run failed when another point beats its weighted sum by more
            than ``fail_tol · Σ_k w_k range_k``.
        gap: normalised distance between neighbouring linear runs that counts as a gap
            (when it is also above 3 times the seed's median neighbour distance).
    """
    if not isinstance(front, Front):
        raise TypeError(f"front must be a moopt.frontier.Front; got {type(front).__name__}")
    given = {"fail_tol": fail_tol, "gap": gap}
    if support_tol is not None:
        given["support_tol"] = support_tol
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number; got {value!r}")
    n = len(front)
    if n == 0:
        raise ValueError("front is empty: nothing to diagnose")
    losses = front.losses
    nondominated = front.nondominated()
    low, span = _normaliser(losses, nondominated)
    scaled = (losses - low) / span

    depth = np.zeros(n)
    core = np.flatnonzero(nondominated)
    depth[core] = support_depth(scaled[core])
    scatter = seed_scatter(front)
    if support_tol is None:
        support_tol = max(1e-2, float(np.quantile(scatter, 0.75))) if scatter.size else 1e-2
    unsupported = nondominated & (depth > support_tol)
    concave = unsupported & (front.methods != "linear")
    stretches = _stretches(front, scaled, concave, nondominated)

    failed = []
    for i in np.flatnonzero(front.methods == "linear"):
        w = front.weights[i]
        sums = losses @ w
        best = int(np.argmin(sums))
        if sums[i] - sums[best] > fail_tol * float(w @ span):
            failed.append(
                FailedRun(
                    int(i),
                    tuple(w.tolist()),
                    float(sums[i]),
                    float(sums[best]),
                    best,
                    str(front.methods[best]),
                )
            )

    gaps = []
    linear = np.flatnonzero(front.methods == "linear")
    for seed in np.unique(front.seeds[linear]):
        rows = linear[front.seeds[linear] == seed]
        pairs = [(int(rows[a]), int(rows[b])) for a, b in _lattice_neighbours(front.weights[rows])]
        if not pairs:
            continue
        distances = np.array([np.linalg.norm(scaled[i] - scaled[j]) for i, j in pairs])
        typical = float(np.median(distances))
        for (i, j), distance in zip(pairs, distances):
            if distance > gap and distance > 3 * typical:
                box_low = np.minimum(scaled[i], scaled[j]) - 1e-9
                box_high = np.maximum(scaled[i], scaled[j]) + 1e-9
                inside = np.all((scaled > box_low) & (scaled < box_high), axis=1)
                inside &= front.methods != "linear"
                gaps.append(
                    Gap(
                        i,
                        j,
                        float(distance),
                        np.flatnonzero(inside & concave).tolist(),
                        np.flatnonzero(inside).tolist(),
                    )
                )

    at_ends = 0
    if linear.size:
        ends = scaled[core][np.argmin(scaled[core], axis=0)]
        near = np.linalg.norm(scaled[linear][:, None, :] - ends[None], axis=-1).min(axis=1)
        at_ends = int((near < 0.05).sum())
    return Diagnosis(
        front,
        nondominated,
        depth,
        unsupported,
        stretches,
        failed,
        gaps,
        (at_ends, int(linear.size)),
        float(support_tol),
        scatter,
    )


def seed_scatter(front: Front) -> np.ndarray:
    """How far the seeds of one configuration land apart, per configuration.

    For every configuration (method, weights, ε, μ) run with several seeds: the largest
    coordinate difference between its seeds' losses, normalised by the range of the
    non-dominated points (the units of ``support_tol`` and ``depth``). Empty when no
    configuration ran more than once.
    """
    if len(front) == 0:
        return np.zeros(0)
    low, span = _normaliser(front.losses, front.nondominated())
    groups: dict[tuple, dict[int, np.ndarray]] = {}
    for config, losses in zip(front.configs, front.losses):
        if config.method == "anchor":
            continue
        key = (config.method, config.weights, config.epsilon, config.objective, config.mu)
        groups.setdefault(key, {})[config.seed] = (losses - low) / span
    spreads = [
        np.ptp(np.stack(list(by_seed.values())), axis=0).max()
        for by_seed in groups.values()
        if len(by_seed) > 1
    ]
    return np.asarray(spreads, dtype=float)


def _stretches(
    front: Front, scaled: np.ndarray, unsupported: np.ndarray, nondominated: np.ndarray
) -> list[Stretch]:
    losses = front.losses
    if not unsupported.any():
        return []
    if front.n_objectives != 2:
        idx = np.flatnonzero(unsupported)
        return [Stretch(idx.tolist(), losses[idx].min(axis=0), losses[idx].max(axis=0))]
    order = np.flatnonzero(nondominated)
    order = order[np.argsort(losses[order, 0], kind="stable")]
    stretches, current = [], []
    for i in order:
        if unsupported[i]:
            current.append(int(i))
        elif current:
            stretches.append(current)
            current = []
    if current:
        stretches.append(current)
    out = []
    for indices in stretches:
        # the stretch reaches to the supported points that bracket it along the front
        position = [int(np.flatnonzero(order == i)[0]) for i in indices]
        first, last = min(position), max(position)
        bracket = order[max(first - 1, 0) : last + 2]
        out.append(Stretch(indices, losses[bracket].min(axis=0), losses[bracket].max(axis=0)))
    return out
