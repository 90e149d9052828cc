"""MultiDigits: linear loss weights are all-or-nothing, Chebyshev and ε are not.

Two digits overlap on a 12×12 canvas (``moopt.data.multi_digits``); one network reads
the canvas through a shared trunk that squeezes everything into a 2-unit ``tanh``
bottleneck, and two heads classify the left and the right digit (``BottleneckNet``).
Two numbers per image must serve both tasks.

We trace the trade-off between the two cross-entropies three ways with
``moopt.frontier.trace``:

* ``linear`` — minimise ``w·CE_left + (1 − w)·CE_right`` for weights on a grid;
* ``smooth_chebyshev`` — minimise ``μ log Σ_k exp(w_k (CE_k − z_k)/μ)``, a smooth
  ``max_k w_k (CE_k − z_k)`` (z: the single-task anchors);
* ``epsilon`` — minimise ``CE_left`` subject to ``CE_right ≤ ε`` through MDMM, ε swept
  from tight to loose, each run warm-started from the previous one (the first from the
  single-task anchor of the right digit).

What to look for: most linear runs end with one task at chance (CE ≈ ln 10 ≈ 2.30, 10%
accuracy) — whichever task grabs the bottleneck early keeps it — whereas Chebyshev and
ε runs land on balanced points. The diagnosis explains why: the all-or-nothing linear
runs have a higher value of their own weighted objective than points other methods
found (a basin, not a limit of linear weights). With its default tolerance (1% of the
front's range) it also flags a few points as unsupported; the example sorts them out
(``_diagnosis_notes.py``): linear runs among them are failed runs (a perfectly optimised
linear run is always supported), and the others lie less deep below the hull than two
seeds of one configuration land apart. Diagnosed again with that scatter as tolerance,
the front is convex up to run-to-run noise: linear weights failed by optimisation
basins, not by concavity.

Run: ``python examples/multidigits.py`` (about 1–3 minutes on 2 CPU cores; the sweep is
stored under ``--out`` so a re-run resumes). Writes ``multidigits.png`` there.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import sys

import numpy as np

CHANCE = math.log(10.0)
AT_CHANCE = 0.9 * CHANCE
"""A task whose cross-entropy exceeds 90% of ln 10 has learnt (almost) nothing."""

DAMPING = 10.0
"""MDMM damping of the ε constraint (in units of the anchors' range). A stiffer quadratic
penalty (trace's default, 100) makes the constrained digit take the whole bottleneck in
the first steps, and the objective's digit stays at chance."""


def all_or_nothing(losses: np.ndarray) -> np.ndarray:
    """Rows where exactly one task is at chance (its CE above ``AT_CHANCE``)."""
    at_chance = losses > AT_CHANCE
    return at_chance.sum(axis=1) == 1


def summary(front: object) -> str:
    """Per method: how many runs ended all-or-nothing, and how many balanced."""
    lines = [f"{'method':<18}{'runs':>6}{'one task at chance':>21}{'both tasks learnt':>20}"]
    for method in ("linear", "smooth_chebyshev", "epsilon"):
        part = front.select(method=method)
        if not len(part):
            continue
        losses = part.losses
        if method == "linear":
            interior = np.all(part.weights > 0, axis=1)
            losses = losses[interior]
            method = "linear*"
        stuck = int(all_or_nothing(losses).sum())
        both = int(np.all(losses < AT_CHANCE, axis=1).sum())
        lines.append(f"{method:<18}{len(losses):>6}{stuck:>21}{both:>20}")
    lines.append("* interior weights only: w = (1, 0) and (0, 1) ignore a task by construction")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=7, help="weights / ε values per method")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per point")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per run")
    parser.add_argument("--workers", type=int, default=2, help="process pool size (0: inline)")
    parser.add_argument("--out", default="multidigits-out", help="output directory")
    args = parser.parse_args(argv)

    import torch
    from _diagnosis_notes import explain_unsupported, seed_scatter

    from moopt._digits_models import MultiDigitsTraining
    from moopt.frontier import trace

    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    training = MultiDigitsTraining(steps=args.steps)
    pool = concurrent.futures.ProcessPoolExecutor(args.workers) if args.workers else None
    try:
        front = trace(
            training,
            methods=["linear", "smooth_chebyshev", "epsilon"],
            n_points=args.points,
            seeds=args.seeds,
            damping=DAMPING,
            executor=pool,
            store=os.path.join(args.out, "store"),
            loss_names=["CE left digit", "CE right digit"],
        )
    finally:
        if pool is not None:
            pool.shutdown()
    front.save(os.path.join(args.out, "front.json"))
    print(front.table())
    print()
    print(summary(front))
    print()
    print("Diagnosis (default tolerance: 1% of the front's range):")
    diagnosis = front.diagnose()
    print(diagnosis)
    print()
    print(explain_unsupported(front, diagnosis))
    scatter = seed_scatter(front)
    if scatter.size:
        tolerance = max(0.01, float(np.quantile(scatter, 0.75)))
        print(f"\nDiagnosis with the seeds' upper-quartile scatter as tolerance ({tolerance:.3f}):")
        diagnosis = front.diagnose(support_tol=tolerance)
        print(diagnosis)
    figure = front.plot(
        diagnosis=diagnosis, title="MultiDigits, 2-unit bottleneck: training cross-entropies"
    )
    path = os.path.join(args.out, "multidigits.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nfigure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
