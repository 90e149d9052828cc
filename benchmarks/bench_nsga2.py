"""The ε-constraint sweep of ``moopt.frontier.trace`` against pymoo's NSGA-II.

Problems: ZDT1 and ZDT2 with 30 variables (box ``[0, 1]^30`` handled by ``x = sigmoid(θ)``
for the gradient method, natively by NSGA-II), the concave quarter circle, the convex
circle and Fonseca–Fleming (``moopt.problems``; NSGA-II searches the box given below).

Quality: hypervolume (reference point (1.1, 1.1)) and IGD against 1000 points of the
analytic front, both on the non-dominated points found. For scale, the table also gives
the hypervolume of the 100-point analytic front (pymoo's ``pareto_front()`` for ZDT; for
the toys the exact ε-constraint points of the same 100 bounds are the best the sweep can
reach, so the "exact" column uses the 100-point front as well).

Cost, in loss evaluations: NSGA-II evaluates each individual once (population 100, so
100 per generation). The gradient method computes the losses and their gradient once per
optimizer step; a gradient evaluation is counted as one loss evaluation (reverse mode
costs a small constant factor more than a forward pass; on ZDT the losses are so cheap
that wall time is dominated by Python overhead for both methods). Every run of the sweep
counts: the two single-task anchors (``anchor_steps`` each) and the 100 warm-started ε
runs (``steps`` each).

Run: ``python benchmarks/bench_nsga2.py`` (about two minutes on 2 CPU cores;
``--quick`` for a smaller check).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

REF_POINT = (1.1, 1.1)


def problems() -> dict[str, tuple[object, tuple[float, float], float]]:
    """Name -> (moopt problem, NSGA-II box for every variable, Adam learning rate).

    The learning rate is the one tuning knob of the sweep: 0.1 on ZDT, where the 29
    distance variables must travel far (``θ → −∞``), 0.03 on the two-parameter toys,
    where a larger step makes the MDMM iterate lag behind its bound along the chain.
    """
    from moopt.problems import ZDT1, ZDT2, Circle, FonsecaFleming

    return {
        "ZDT1 (n=30)": (ZDT1(30), (0.0, 1.0), 0.1),
        "ZDT2 (n=30)": (ZDT2(30), (0.0, 1.0), 0.1),
        "circle (concave)": (Circle(), (-6.0, 6.0), 0.03),
        "circle (convex)": (Circle(convex=True), (-6.0, 6.0), 0.03),
        "Fonseca-Fleming (n=2)": (FonsecaFleming(2), (-4.0, 4.0), 0.03),
    }


def quality(points: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """``(hypervolume, IGD)`` of the non-dominated ``points``."""
    from moopt.frontier import hypervolume, igd, nondominated_mask

    best = points[nondominated_mask(points)]
    return hypervolume(best, REF_POINT), igd(best, reference)


def nsga2_curve(
    problem: object, box: tuple[float, float], generations: list[int], seed: int
) -> list[tuple[int, float, float, float]]:
    """NSGA-II (population 100): ``(evaluations, HV, IGD, seconds)`` after each listed
    generation (seconds since the start, the indicator computations excluded)."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.callback import Callback
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    reference = problem.pareto_front(1000).numpy()
    is_zdt = hasattr(problem, "evaluate")

    class Wrapped(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=problem.n_params, n_obj=2, xl=box[0], xu=box[1])

        def _evaluate(self, x: np.ndarray, out: dict, *args: object, **kwargs: object) -> None:
            theta = torch.as_tensor(x, dtype=torch.float64)
            with torch.no_grad():
                values = problem.evaluate(theta) if is_zdt else problem.losses(theta)
            out["F"] = values.numpy()

    rows: list[tuple[int, float, float, float]] = []
    clock = {"start": time.perf_counter(), "excluded": 0.0}

    class Record(Callback):
        def notify(self, algorithm: object) -> None:
            if algorithm.n_gen in generations:
                now = time.perf_counter()
                hv, distance = quality(algorithm.opt.get("F"), reference)
                elapsed = now - clock["start"] - clock["excluded"]
                rows.append((algorithm.evaluator.n_eval, hv, distance, elapsed))
                clock["excluded"] += time.perf_counter() - now

    minimize(
        Wrapped(),
        NSGA2(pop_size=100),
        ("n_gen", max(generations)),
        seed=seed,
        callback=Record(),
        verbose=False,
    )
    return rows


def epsilon_sweep(
    problem: object, steps: int, anchor_steps: int, n_points: int, lr: float
) -> tuple[int, float, float, float]:
    """One ε sweep: ``(evaluations, HV, IGD, seconds)``.

    ``ProblemTraining`` gives the two single-task anchors, which start from a random
    point, ``anchor_steps`` Adam steps and every ε run, warm-started from its neighbour's
    solution, ``steps`` (cosine decay of the learning rate to a tenth within each run).
    """
    from moopt.frontier import ProblemTraining, trace

    training = ProblemTraining(
        problem, steps=anchor_steps, warm_steps=steps, lr=lr, final_lr_fraction=0.1
    )
    start = time.perf_counter()
    front = trace(training, methods=["epsilon"], n_points=n_points, seeds=1)
    seconds = time.perf_counter() - start
    per_run = {"anchor": anchor_steps, "epsilon": steps}
    evaluations = sum(per_run[method] for method in front.methods)
    hv, distance = quality(front.losses, problem.pareto_front(1000).numpy())
    return evaluations, hv, distance, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ZDT1 only, fewer budgets")
    parser.add_argument("--seed", type=int, default=1, help="NSGA-II seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budgets = [(10, 100), (20, 300), (50, 500), (40, 2000)] if not args.quick else [(20, 300)]
    generations = [10, 25, 50, 100] if not args.quick else [50, 100]
    chosen = problems()
    if args.quick:
        chosen = {name: value for name, value in chosen.items() if name.startswith("ZDT1")}
    print(f"torch {torch.__version__}, 100 ε points / NSGA-II population 100, ref {REF_POINT}")
    header = (
        f"| {'problem':<22} | {'method':<28} | {'loss evals':>10} | {'HV':>6} | "
        f"{'HV / exact':>10} | {'IGD':>7} | {'seconds':>7} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name, (problem, box, lr) in chosen.items():
        exact_hv = quality(problem.pareto_front(100).numpy(), problem.pareto_front(1000).numpy())[0]
        rows = []
        for evaluations, hv, distance, seconds in nsga2_curve(problem, box, generations, args.seed):
            label = f"NSGA-II gen {evaluations // 100}"
            rows.append((label, evaluations, hv, distance, seconds))
        for steps, anchor_steps in budgets:
            evaluations, hv, distance, seconds = epsilon_sweep(
                problem, steps, anchor_steps, 100, lr
            )
            label = f"ε sweep {steps} steps/pt, lr {lr}"
            rows.append((label, evaluations, hv, distance, seconds))
        for label, evaluations, hv, distance, seconds in rows:
            print(
                f"| {name:<22} | {label:<28} | {evaluations:>10} | {hv:6.4f} | "
                f"{hv / exact_hv:10.3f} | {distance:7.4f} | {seconds:7.1f} |",
                flush=True,
            )
        print(
            f"| {name:<22} | {'exact front, 100 points':<28} | {'':>10} | {exact_hv:6.4f} | "
            f"{1.0:10.3f} | {'':>7} | {'':>7} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
