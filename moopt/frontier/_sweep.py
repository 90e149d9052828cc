"""``trace``: run a sweep of training runs on an executor, store each point, return a Front.

How the work is split (and what runs in parallel):

1. **Anchors** — one single-task run per loss and seed (weights ``1 − (K−1)δ`` on the
   loss, ``δ`` on the others; the small ``δ`` picks a Pareto-optimal end where the
   single-task minimum is a whole edge of the front, as on a sphere). They give the ideal
   point (Chebyshev reference) and the ε range, and with two losses they start the ε
   chains. One task each.
2. **Weighted runs** (``"linear"``, ``"chebyshev"``, ``"smooth_chebyshev"``) — one task
   per weight vector and seed, each from the seed's random initialisation.
3. **ε chains** — an ε sweep is a continuation: run ``i`` starts from the parameters and
   multipliers of run ``i − 1``, its bound one step looser; the first run of a two-loss
   chain starts from the anchor of the constrained loss, where the tightest bound is met
   (see ``_EpsilonPhases`` for K ≥ 3). A chain is therefore sequential and is one task;
   chains of different seeds (and, with K ≥ 3, the chains of one continuation phase) run
   in parallel.

With a batched target (``train_batch``) the single-run tasks, and the chains, are grouped
``batch_size`` at a time into one task that trains them together.

Every finished run is written to the store at once (see :class:`PointStore`); a re-run
loads finished points instead of submitting them, and a half-finished chain resumes from
its last stored state.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from moopt.frontier._config import (
    ANCHOR,
    METHODS,
    PointConfig,
    simplex_lattice,
)
from moopt.frontier._spacing import SPACINGS, arc_length_epsilons, pilot_epsilons
from moopt.frontier.front import Front
from moopt.frontier.run import Run, build_combiner
from moopt.frontier.store import PointRecord, PointStore, this_process
from moopt.frontier.training import ProblemTraining

TrainFn = Callable[[Run], object]


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once in the calling process (the default executor)."""

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> concurrent.futures.Future:
        """Call ``fn(*args, **kwargs)`` now; return a finished future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to the caller via the future
            future.set_exception(error)
        return future


@dataclasses.dataclass
class _Task:
    """A picklable unit of work: chains of runs, each chain run in order.

    A chain of one run is an independent point. Batched tasks run step t of every chain as
    one batch (``train.train_batch``); others run the chains one after the other.
    """

    train: TrainFn
    chains: list[list[PointConfig]]
    keys: list[list[str]]
    n_objectives: int
    damping: float
    scales: tuple[float, ...] | None
    store: PointStore | None
    init_states: list[dict | None]
    return_state: bool = False
    batched: bool = False

    def all_keys(self) -> list[str]:
        return [key for chain in self.keys for key in chain]


def _as_losses(value: object, n_objectives: int, config: PointConfig) -> tuple[float, ...]:
    try:
        array = torch.as_tensor(
            value.detach() if isinstance(value, torch.Tensor) else value, dtype=torch.float64
        ).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"the training function must return the {n_objectives} final task losses "
            f"(a tensor or a sequence of numbers); for {config.describe()} it returned "
            f"{type(value).__name__}"
        ) from error
    if array.numel() != n_objectives:
        raise ValueError(
            f"the training function returned {array.numel()} losses for {config.describe()}; "
            f"expected {n_objectives}"
        )
    if not bool(torch.isfinite(array).all()):
        raise ValueError(
            f"the training function returned non-finite losses {array.tolist()} for "
            f"{config.describe()} (diverged?)"
        )
    return tuple(array.tolist())


def _record(
    task: _Task,
    config: PointConfig,
    key: str,
    out: object,
    multipliers: Sequence[float] | None,
    seconds: float,
) -> PointRecord:
    losses = _as_losses(out, task.n_objectives, config)
    if multipliers is not None and task.scales is not None:
        constrained = [j for j, bound in enumerate(config.epsilon) if bound is not None]
        multipliers = [m * task.scales[j] for m, j in zip(multipliers, constrained)]
    return PointRecord(
        config=config,
        losses=losses,
        multipliers=None if multipliers is None else tuple(float(m) for m in multipliers),
        seconds=seconds,
        key=key,
        process=this_process(),
    )


def _run_point(
    task: _Task, config: PointConfig, key: str, init_state: dict | None
) -> tuple[PointRecord, dict]:
    torch.manual_seed(config.seed)
    combiner = build_combiner(config, task.damping, task.scales)
    run = Run(config, combiner, task.n_objectives, init_state)
    run.load_combiner_state()
    start = time.perf_counter()
    out = task.train(run)
    seconds = time.perf_counter() - start
    return _record(task, config, key, out, run.multipliers(), seconds), run.final_state()


def _run_batch(
    task: _Task, configs: list[PointConfig], keys: list[str], states: list[dict | None]
) -> list[tuple[PointRecord, dict]]:
    start = time.perf_counter()
    outs = task.train.train_batch(configs, states, task.damping, task.scales)
    seconds = (time.perf_counter() - start) / len(configs)
    return [
        (_record(task, config, key, losses, multipliers, seconds), state)
        for config, key, (losses, multipliers, state) in zip(configs, keys, outs)
    ]


def run_task(task: _Task) -> tuple[list[PointRecord], list[dict | None] | None]:
    """Run (or load from the store) every point of a task; store each one at once.

    Returns the records (chain by chain, in order) and, when ``task.return_state``, the
    trained state after each step of each chain (``None`` where the store kept none).
    """
    n_chains = len(task.chains)
    records: list[list[PointRecord]] = [[] for _ in range(n_chains)]
    history: list[list[dict | None]] = [[] for _ in range(n_chains)]
    states = list(task.init_states)
    stored_key: list[str | None] = [None] * n_chains
    longest = max((len(chain) for chain in task.chains), default=0)
    for step in range(longest):
        todo = []
        for c in range(n_chains):
            if step >= len(task.chains[c]):
                continue
            key = task.keys[c][step]
            done = task.store.get(key) if task.store is not None else None
            if done is not None:
                records[c].append(done)
                stored_key[c], states[c] = key, None
                if task.return_state:
                    history[c].append(task.store.state(key))
                continue
            if stored_key[c] is not None:
                states[c] = task.store.state(stored_key[c])
                stored_key[c] = None
            todo.append(c)
        if not todo:
            continue
        configs = [task.chains[c][step] for c in todo]
        keys = [task.keys[c][step] for c in todo]
        if task.batched:
            results = _run_batch(task, configs, keys, [states[c] for c in todo])
        else:
            results = [
                _run_point(task, config, key, states[c])
                for c, config, key in zip(todo, configs, keys)
            ]
        for c, (record, state) in zip(todo, results):
            if task.store is not None:
                task.store.put(record, state)
            records[c].append(record)
            states[c] = state
            if task.return_state:
                history[c].append(state)
    flat = [r for chain in records for r in chain]
    return flat, (history if task.return_state else None)


def _key_salt(config: PointConfig, fingerprint: str, damping: float) -> str:
    """The store-key fingerprint of a point: ε runs also depend on the MDMM damping."""
    if config.method == "epsilon":
        return f"{fingerprint}|damping={float(damping)!r}"
    return fingerprint


def _resolve_target(target: object, n_objectives: int | None) -> tuple[TrainFn, int, str]:
    if hasattr(target, "losses") and hasattr(target, "sample_init"):
        target = ProblemTraining(target)
    if not callable(target):
        raise TypeError(
            "target must be a moopt.problems problem or a training function run -> losses; "
            f"got {type(target).__name__}"
        )
    known = getattr(target, "n_objectives", None)
    if n_objectives is None:
        n_objectives = known
    elif known is not None and int(known) != n_objectives:
        raise ValueError(f"n_objectives={n_objectives} but the target has {known} objectives")
    if n_objectives is None:
        raise ValueError("n_objectives is required when target is a training function")
    if isinstance(n_objectives, bool) or not isinstance(n_objectives, int) or n_objectives < 2:
        raise ValueError(f"n_objectives must be an int >= 2; got {n_objectives!r}")
    if hasattr(target, "fingerprint"):
        fingerprint = str(target.fingerprint())
    else:
        fingerprint = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
    return target, n_objectives, fingerprint


def _as_methods(methods: str | Sequence[str]) -> tuple[str, ...]:
    chosen = (methods,) if isinstance(methods, str) else tuple(methods)
    if not chosen:
        raise ValueError("methods must name at least one method")
    for method in chosen:
        if method not in METHODS:
            raise ValueError(f"methods must be among {list(METHODS)}; got {method!r}")
    return chosen


def _as_seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int (how many) or a sequence of ints")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be at least 1; got {seeds}")
        return list(range(seeds))
    values = list(seeds)
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) for s in values):
        raise ValueError(
            f"seeds must be a positive int or a non-empty sequence of ints; got {seeds!r}"
        )
    return values


def _as_weights(weights: object, n_objectives: int, n_points: int) -> np.ndarray:
    if weights is None:
        return simplex_lattice(n_objectives, n_points)
    array = np.asarray(weights, dtype=float)
    if array.ndim != 2 or array.shape[1] != n_objectives or array.shape[0] == 0:
        raise ValueError(f"weights must have shape (n, {n_objectives}); got {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any() or (array.sum(axis=1) <= 0).any():
        raise ValueError("weights must be finite, non-negative, and not all zero in a row")
    return array


def _as_chains(epsilons: object, n_constrained: int) -> list[np.ndarray] | None:
    if epsilons is None:
        return None
    try:
        array = np.asarray(epsilons, dtype=float)
        chains = list(array) if array.ndim == 3 else [array]
    except ValueError:
        if not isinstance(epsilons, (list, tuple)):
            raise
        chains = [np.asarray(chain, dtype=float) for chain in epsilons]
    out = []
    for chain in chains:
        if chain.ndim == 1 and n_constrained == 1:
            chain = chain[:, None]
        if chain.ndim != 2 or chain.shape[1] != n_constrained or chain.shape[0] == 0:
            raise ValueError(
                f"epsilons must be an (n, {n_constrained}) array (one chain, tightest first) "
                f"or a list of such arrays (one per chain); got shape {chain.shape}"
            )
        if not np.isfinite(chain).all():
            raise ValueError("epsilons must be finite")
        out.append(chain)
    return out


def _as_spacing(spacing: object, n_objectives: int, explicit: bool) -> str:
    if spacing not in SPACINGS:
        raise ValueError(f"epsilon_spacing must be one of {list(SPACINGS)}; got {spacing!r}")
    if spacing == "arc" and n_objectives != 2:
        raise ValueError(
            f"epsilon_spacing='arc' needs two losses (a front that is a curve); got {n_objectives}"
        )
    if spacing == "arc" and explicit:
        raise ValueError(
            "epsilon_spacing='arc' places the default bounds; it cannot be combined with "
            "explicit epsilons="
        )
    return spacing


def _bounds(
    given: object, found: np.ndarray | None, name: str, n_objectives: int
) -> np.ndarray | None:
    if given is None:
        return found
    array = np.asarray(given, dtype=float).reshape(-1)
    if array.size != n_objectives or not np.isfinite(array).all():
        raise ValueError(f"{name} must be {n_objectives} finite numbers; got {given!r}")
    return array


def _submit_all(
    executor: concurrent.futures.Executor, tasks: list[_Task], progress: bool
) -> list[tuple[list[PointRecord], dict | None]]:
    """Run every task (finished ones inline, from the store); raise once all are done."""
    results: list = [None] * len(tasks)
    index_of: dict[concurrent.futures.Future, int] = {}
    for index, task in enumerate(tasks):
        if task.store is not None and all(key in task.store for key in task.all_keys()):
            results[index] = run_task(task)
        else:
            index_of[executor.submit(run_task, task)] = index
    errors: list[BaseException] = []
    finished = concurrent.futures.as_completed(list(index_of))
    if progress:
        from tqdm.auto import tqdm

        finished = tqdm(finished, total=len(index_of), desc="trace")
    for future in finished:
        try:
            results[index_of[future]] = future.result()
        except Exception as error:  # noqa: BLE001 - every task is awaited before raising
            errors.append(error)
    if errors:
        done = sum(len(r[0]) for r in results if r is not None)
        raise RuntimeError(
            f"{len(errors)} of {len(tasks)} sweep tasks failed; the {done} points of the "
            "other tasks finished (and are in the store, if one was given: re-run to "
            f"resume). First error: {errors[0]!r}"
        ) from errors[0]
    return results


def _anchor_weights(n_objectives: int, k: int, delta: float) -> tuple[float, ...]:
    weights = [delta] * n_objectives
    weights[k] = 1.0 - (n_objectives - 1) * delta
    return tuple(weights)


def trace(
    target: object,
    methods: str | Sequence[str] = ("linear", "epsilon"),
    *,
    n_points: int = 11,
    seeds: int | Sequence[int] = 1,
    weights: object = None,
    epsilons: object = None,
    epsilon_spacing: str = "even",
    objective: int = 0,
    ideal: object = None,
    nadir: object = None,
    mu: float = 0.02,
    damping: float = 100.0,
    anchor_weight: float = 1e-3,
    n_objectives: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    store: str | PointStore | None = None,
    batched: bool | None = None,
    batch_size: int = 256,
    fingerprint: str | None = None,
    loss_names: Sequence[str] | None = None,
    progress: bool = False,
) -> Front:
    """Trace the achievable Pareto front of a training setup.

    Args:
        target: a ``moopt.problems`` problem (trained by :class:`ProblemTraining` with its
            defaults; pass a configured ``ProblemTraining`` to change steps or learning
            rate), or a training function ``train(run) -> losses`` (see
            :class:`~moopt.frontier.Run`). Must be picklable for process or Dask executors.
        methods: any of ``"linear"`` (minimise ``Σ w_k L_k``), ``"chebyshev"`` (minimise
            ``max_k w_k (L_k − z_k)`` with ``z`` the ideal point), ``"smooth_chebyshev"``
            (``μ log Σ_k exp(w_k (L_k − z_k)/μ)``, Lin et al. 2024) and ``"epsilon"``
            (minimise ``L_objective`` subject to ``L_j ≤ ε_j`` for the other losses,
            through MDMM, Platt & Barr 1988, warm-started along ε).
        n_points: weights per simplex edge (the Das–Dennis lattice: ``n_points`` weights
            for K = 2, ``n(n+1)/2`` for K = 3) and ε values per constrained loss.
        seeds: how many seeds (``0..seeds-1``) or the seeds themselves; every point is
            run once per seed.
        weights: explicit ``(n, K)`` weights for the weighted methods (default: lattice).
        epsilons: explicit bounds: an ``(n, K−1)`` array (one chain, tightest first) or a
            list of them (one chain each); columns are the losses other than
            ``objective``, in order. Each chain starts from the anchor of the last
            constrained loss. Default: ``n_points`` per constrained loss, evenly from
            ``ideal_j`` (tightest) to ``nadir_j`` (loosest), run as warm-started phases
            (see ``_EpsilonPhases``), or placed by ``epsilon_spacing``.
        epsilon_spacing: where the default bounds go, with two losses. ``"even"``:
            evenly in ε. ``"arc"``: evenly in arc length of the front, in losses
            normalised by ``nadir − ideal`` — every stretch of the front gets its share
            of the ``n_points``, where even ε crowds them on the flat part and leaves gaps
            on the steep one. The front's shape comes from a pilot: one warm-started
            chain per seed of ``max(3, round(√n_points))`` bounds evenly inside the ε
            range, from the anchor like the sweep itself; the bounds are then read off a
            parametric cubic spline through the anchors and the pilot's points
            (``moopt.frontier._spacing.arc_length_epsilons``). The pilot runs cost that
            many extra training runs per seed; they are written to the store (a re-run
            skips them) but are not points of the returned Front, which holds the
            ``n_points`` bounds of each seed's sweep. Needs two losses and no explicit
            ``epsilons``.
        objective: the loss the ε method minimises.
        ideal, nadir: K numbers overriding the estimates from the anchors (ideal: least
            value of each loss over the anchors; nadir: largest). With K ≥ 3 the anchors'
            nadir can underestimate the true one; give it when known.
        mu: temperature of ``"smooth_chebyshev"`` (in loss units).
        damping: MDMM damping ``c`` of every ε constraint (on the constraint scaled by
            ``1/(nadir_j − ideal_j)``); it must exceed the front's negative curvature in
            those units (``moopt.mdmm``); 100 suits the toy fronts (the circle needs more than 12
            at ε = 0.9, where its curvature is -1/(1-ε²)^1.5). ``epsilon_spacing="arc"``
            puts bounds further into the steep end of a concave front, where the curvature
            is larger (about -260 at the 10th of 11 arc-spaced bounds on the circle): raise
            it there. Too large a damping stiffens the Lagrangian until the optimizer
            oscillates (``benchmarks/bench_nsga2.py`` uses 300 with 100 arc-spaced points).
        anchor_weight: ``δ`` of the anchor weights.
        n_objectives: K; required for a training function without an ``n_objectives``
            attribute.
        executor: any ``concurrent.futures.Executor`` (``ProcessPoolExecutor``, a Dask
            ``Client.get_executor()``, ...). Default: run in this process. Prefer
            processes to threads: each run calls ``torch.manual_seed``, and threads share
            torch's global generator.
        store: a directory (or :class:`PointStore`) where each finished point is written
            at once; a re-run skips finished points and resumes half-finished chains.
        batched: run the points of a task as one batch through ``target.train_batch``
            (the fast path of :class:`ProblemTraining`: same iterates, one stacked
            parameter). Default: when the target has ``train_batch``.
        batch_size: chains (or independent points) per batched task; smaller values
            give an executor more tasks to spread.
        fingerprint: identifies the training setup in the store keys. Default: the
            target's ``fingerprint()`` (``ProblemTraining``) or the function's qualified
            name. Change it (or the store) when the training code changes.
        loss_names: names of the K losses for reports and plots.
        progress: show a tqdm progress bar over tasks.

    Returns:
        A :class:`~moopt.frontier.Front` of every run (anchors included), with the
        target's analytic front as reference when it has one.

    The ε-constraint method is Haimes, Lasdon & Wismer (1971); textbook versions solve
    each bounded problem to optimality with a constrained solver from a fixed start.
    Deviations here: each bounded problem is trained by gradient descent-ascent on the
    damped Lagrangian (MDMM) with each constraint scaled by ``1/(nadir_j − ideal_j)``;
    runs are warm-started along ε (continuation); the ε range comes from single-task
    anchors with a small weight ``δ`` on the other losses (an augmented payoff table, so
    each anchor is Pareto-optimal rather than weakly so); the Chebyshev ideal point is the
    anchors' ideal, not shifted to a utopia point.
    """
    train, n_obj, default_fingerprint = _resolve_target(target, n_objectives)
    chosen = _as_methods(methods)
    seed_list = _as_seeds(seeds)
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2; got {n_points!r}")
    if isinstance(objective, bool) or not isinstance(objective, int) or not 0 <= objective < n_obj:
        raise ValueError(f"objective must be a loss index in [0, {n_obj}); got {objective!r}")
    if not (isinstance(mu, (int, float)) and mu > 0):
        raise ValueError(f"mu must be a positive number; got {mu!r}")
    if not (isinstance(damping, (int, float)) and damping >= 0):
        raise ValueError(f"damping must be a non-negative number; got {damping!r}")
    if not (isinstance(anchor_weight, (int, float)) and 0 <= anchor_weight < 1 / n_obj):
        raise ValueError(f"anchor_weight must be in [0, 1/K); got {anchor_weight!r}")
    if loss_names is not None and len(loss_names) != n_obj:
        raise ValueError(f"loss_names must have {n_obj} names; got {len(loss_names)}")
    weight_grid = _as_weights(weights, n_obj, n_points)
    chains_given = _as_chains(epsilons, n_obj - 1)
    arc = _as_spacing(epsilon_spacing, n_obj, chains_given is not None) == "arc"
    executor = InlineExecutor() if executor is None else executor
    if not hasattr(executor, "submit"):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor; got {type(executor).__name__}"
        )
    if store is not None and not isinstance(store, PointStore):
        store = PointStore(store)
    fingerprint = default_fingerprint if fingerprint is None else str(fingerprint)
    use_batches = hasattr(train, "train_batch") if batched is None else bool(batched)
    if use_batches and not hasattr(train, "train_batch"):
        raise ValueError("batched=True needs a target with a train_batch method (ProblemTraining)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")

    def make_tasks(
        chains: list[list[PointConfig]],
        init_states: list[dict | None] | None = None,
        scales: tuple[float, ...] | None = None,
        return_state: bool = False,
    ) -> list[_Task]:
        states = init_states if init_states is not None else [None] * len(chains)
        size = batch_size if use_batches else 1
        return [
            _Task(
                train=train,
                chains=chains[i : i + size],
                keys=[
                    [c.key(_key_salt(c, fingerprint, damping)) for c in chain]
                    for chain in chains[i : i + size]
                ],
                n_objectives=n_obj,
                damping=float(damping),
                scales=scales,
                store=store,
                init_states=list(states[i : i + size]),
                return_state=return_state,
                batched=use_batches,
            )
            for i in range(0, len(chains), size)
        ]

    ideal_given = _bounds(ideal, None, "ideal", n_obj)
    nadir_given = _bounds(nadir, None, "nadir", n_obj)
    records: list[PointRecord] = []
    anchor_state: dict[tuple[int, tuple[float, ...]], dict | None] = {}
    ideal_found = nadir_found = None
    if any(m != "linear" for m in chosen):
        anchor_weights = [_anchor_weights(n_obj, k, float(anchor_weight)) for k in range(n_obj)]
        anchors = [
            [PointConfig(ANCHOR, seed, weights=w)] for seed in seed_list for w in anchor_weights
        ]
        anchor_tasks = make_tasks(anchors, return_state=True)
        for task, (task_records, states) in zip(
            anchor_tasks, _submit_all(executor, anchor_tasks, progress)
        ):
            records.extend(task_records)
            for chain, history in zip(task.chains, states):
                anchor_state[(chain[0].seed, chain[0].weights)] = history[-1]
        anchor_losses = np.array([r.losses for r in records])
        ideal_found = anchor_losses.min(axis=0)
        nadir_found = anchor_losses.max(axis=0)
    ideal_used = ideal_found if ideal_given is None else ideal_given
    nadir_used = nadir_found if nadir_given is None else nadir_given

    tasks: list[_Task] = []
    for method in chosen:
        if method == "epsilon":
            continue
        configs = [
            [
                PointConfig(
                    method,
                    seed,
                    weights=tuple(float(v) for v in w),
                    ideal=None if method == "linear" else tuple(float(v) for v in ideal_used),
                    mu=float(mu) if method == "smooth_chebyshev" else None,
                )
            ]
            for seed in seed_list
            for w in weight_grid
        ]
        tasks.extend(make_tasks(configs))
    phases: _EpsilonPhases | None = None
    if "epsilon" in chosen:
        other = _anchor_weights(n_obj, 1 - objective, float(anchor_weight)) if n_obj == 2 else None
        starts = {seed: anchor_state.get((seed, other)) for seed in seed_list}
        phases = _EpsilonPhases(
            seed_list, n_obj, objective, n_points, chains_given, ideal_used, nadir_used, starts
        )
        if arc:
            phases.plan_by_arc_length([r for r in records if r.config.method == ANCHOR])
    first = phases.next_round() if phases is not None else None
    round_tasks = tasks + ([] if first is None else make_tasks(*first))
    while round_tasks:
        results = _submit_all(executor, round_tasks, progress)
        for task, (task_records, history) in zip(round_tasks, results):
            if phases is not None:
                phases.finished(task.chains, task_records, history)
                task_records = [r for r in task_records if r.config not in phases.pilots]
            records.extend(task_records)
        following = phases.next_round() if phases is not None else None
        round_tasks = [] if following is None else make_tasks(*following)
    reference = None
    if hasattr(train, "reference_front"):
        reference = train.reference_front(200 if n_obj == 2 else 30)
    return Front(
        records,
        n_objectives=n_obj,
        reference=reference,
        ideal=ideal_used,
        nadir=nadir_used,
        loss_names=loss_names,
    )


class _EpsilonPhases:
    """The ε grid as rounds of warm-started chains (continuation over a K−1 grid).

    With m constrained losses and n bounds per loss, grid point ``(i_0, …, i_{m−1})``
    (index 0 the tightest bound) is computed in phase p, the last axis where its index is
    non-zero. Phase 0 is one chain per seed along axis 0 (the others tightest). With K = 2
    it starts from the anchor of the constrained loss, which is the solution of its first,
    tightest bound. With K ≥ 3 its first run starts from the seed's own initialisation:
    the single-task anchors sit at corners of the front where, on concave fronts, the
    objective can have no first-order grip (they are stationary in the parameters of
    DTLZ-type problems), while from an interior start the tight bounds pull the run to
    the corner where every constrained loss is least. Phase p runs, from each
    point computed before, a chain along axis p (indices 1…n−1). Every chain of a phase is
    independent: phase p has ``n^p`` chains per seed, run in parallel. Explicit
    ``epsilons`` chains are one phase, each chain started like phase 0.

    With ``plan_by_arc_length`` (two losses), a pilot round comes first: one chain per
    seed over a few bounds evenly inside the ε range, started like phase 0; each seed's
    bounds are then placed evenly in arc length along the curve through its anchors and
    its pilot points (``moopt.frontier._spacing``). The pilot's configurations are in
    ``pilots``, so that ``trace`` can leave them out of the Front.
    """

    def __init__(
        self,
        seed_list: list[int],
        n_obj: int,
        objective: int,
        n_points: int,
        chains_given: list[np.ndarray] | None,
        ideal: np.ndarray,
        nadir: np.ndarray,
        starts: dict[int, dict | None],
    ) -> None:
        self.n_obj = n_obj
        self.objective = objective
        self.constrained = [j for j in range(n_obj) if j != objective]
        span = nadir - ideal
        self.scales = tuple(1.0 / s if s > 0 and math.isfinite(s) else 1.0 for s in span)
        self.seed_list = seed_list
        self.given = chains_given
        if chains_given is None:
            c = self.constrained
            if np.any(span[c] <= 1e-12 * (1 + np.abs(nadir[c]))):
                warnings.warn(
                    "the anchors give an empty range for some constrained loss "
                    f"(ideal {ideal.tolist()}, nadir {nadir.tolist()}); pass nadir= explicitly",
                    RuntimeWarning,
                    stacklevel=4,
                )
            even = [np.linspace(ideal[j], nadir[j], n_points) for j in c]
            self.axes = {seed: even for seed in seed_list}
        self.n_points = n_points
        self.phase = 0
        self.chain_count = 0
        self.states: dict[tuple[int, tuple[int, ...]], dict | None] = {
            (seed, (0,) * len(self.constrained)): state for seed, state in starts.items()
        }
        self.starts = starts
        self.index_of: dict[PointConfig, tuple[int, tuple[int, ...]]] = {}
        self.pilots: set[PointConfig] = set()
        self.pilot_points: dict[int, list[tuple[float, ...]]] | None = None
        self.ideal, self.nadir = ideal, nadir

    def plan_by_arc_length(self, anchors: Sequence[PointRecord]) -> None:
        """Place each seed's bounds evenly in arc length: run a pilot chain first.

        ``anchors``: the anchor runs, whose losses are the ends of each seed's curve the
        bounds are read from (two losses only; see ``moopt.frontier._spacing``).
        """
        self.pilot_points = {seed: [] for seed in self.seed_list}
        for record in anchors:
            self.pilot_points[record.config.seed].append(record.losses)

    def _pilot_round(self) -> tuple[list[list[PointConfig]], list[dict | None], tuple, bool]:
        j = self.constrained[0]
        bounds = pilot_epsilons(self.ideal[j], self.nadir[j], self.n_points)
        chains, init_states = [], []
        for seed in self.seed_list:
            chain = [self._config(seed, np.array([b]), s) for s, b in enumerate(bounds)]
            self.pilots.update(chain)
            chains.append(chain)
            init_states.append(self.starts.get(seed))
            self.chain_count += 1
        return chains, init_states, self.scales, False

    def _plan(self) -> None:
        """Replace each seed's bounds by arc-length ones read off its pilot's points."""
        j, o = self.constrained[0], self.objective
        for seed, found in self.pilot_points.items():
            losses = np.array(found, dtype=float).reshape(-1, self.n_obj)
            self.axes[seed] = [
                arc_length_epsilons(
                    losses[:, o],
                    losses[:, j],
                    (self.ideal[o], self.ideal[j]),
                    (self.nadir[o], self.nadir[j]),
                    self.n_points,
                )
            ]

    def _config(self, seed: int, bounds: np.ndarray, step: int) -> PointConfig:
        full: list[float | None] = [None] * self.n_obj
        for j, value in zip(self.constrained, bounds):
            full[j] = float(value)
        return PointConfig(
            "epsilon",
            seed,
            epsilon=tuple(full),
            objective=self.objective,
            chain=self.chain_count,
            step=step,
        )

    def next_round(
        self,
    ) -> tuple[list[list[PointConfig]], list[dict | None], tuple[float, ...], bool] | None:
        """The next phase's chains, starting states, scales, and whether a later phase
        needs their states (or ``None`` when done)."""
        chains, init_states = [], []
        if self.given is not None:
            if self.phase > 0:
                return None
            for seed in self.seed_list:
                for rows in self.given:
                    chains.append([self._config(seed, row, s) for s, row in enumerate(rows)])
                    init_states.append(self.starts.get(seed))
                    self.chain_count += 1
            self.phase = 1
            return chains, init_states, self.scales, False
        if self.pilot_points is not None:
            if not self.pilots:
                return self._pilot_round()
            self._plan()
            self.pilot_points = None
        m = len(self.constrained)
        if self.phase >= m:
            return None
        p = self.phase
        for (seed, start), state in list(self.states.items()):
            if any(start[p:]) or (p == 0 and start != (0,) * m):
                continue
            indices = range(self.n_points) if p == 0 else range(1, self.n_points)
            axes = self.axes[seed]
            chain = []
            for step, i in enumerate(indices):
                idx = start[:p] + (i,) + (0,) * (m - p - 1)
                bounds = np.array([axes[a][idx[a]] for a in range(m)])
                config = self._config(seed, bounds, step)
                self.index_of[config] = (seed, idx)
                chain.append(config)
            chains.append(chain)
            init_states.append(state)
            self.chain_count += 1
        self.phase += 1
        return chains, init_states, self.scales, self.phase < m

    def finished(
        self,
        chains: list[list[PointConfig]],
        records: list[PointRecord],
        history: list[list[dict | None]] | None,
    ) -> None:
        """Record the losses of finished pilot runs, and the state after each run of
        finished chains (starting points of the next phase)."""
        for record in records:
            if record.config in self.pilots:
                self.pilot_points[record.config.seed].append(record.losses)
        for chain, states in zip(chains, history or []):
            for config, state in zip(chain, states):
                if config in self.index_of:
                    self.states[self.index_of[config]] = state
