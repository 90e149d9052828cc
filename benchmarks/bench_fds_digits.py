"""FDS vs greedy Hypergradient Descent vs Optuna random search on the digits MLP.

Each method gets the same number of full training runs of T inner steps (default 10 runs
of T = 1500) on the same data, minibatch order and initial weights, picks its run by
validation loss, and is scored by the test accuracy of that run (see
:mod:`moopt.hypergrad._digits` for the search spaces). Wall-clock seconds are printed too:
an FDS run costs several plain runs (it carries N tangents).

Run: ``PYTHONPATH=. python benchmarks/bench_fds_digits.py [--steps 1500] [--runs 10]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moopt.hypergrad._digits import (  # noqa: E402
    DigitsSetup,
    fds_search,
    format_table,
    hd_search,
    random_search,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup = DigitsSetup.create(steps=args.steps, seed=args.seed)
    outcomes = [
        fds_search(setup, runs=args.runs),
        hd_search(setup, runs=args.runs),
        random_search(setup, runs=args.runs, seed=args.seed),
    ]
    print(
        f"digits MLP 64-64-64-10, T = {args.steps}, {args.runs} training runs per method, "
        f"{len(setup.test.y)} test images"
    )
    print(format_table(outcomes))
    fds, hd, rs = outcomes
    losses = ", ".join(f"{v:.4f}" for v in fds.val_losses)
    print(f"\nFDS validation loss per outer step: {losses}")
    peaks = ", ".join(f"{v:.1f}" for v in fds.history.log_tangent_peaks)
    print(f"FDS log of the largest tangent entry per outer step: {peaks}")
    diverged = sorted(fds.history.diverged)
    print(f"FDS outer steps whose unroll diverged (tune stepped back): {diverged or 'none'}")
    for step, reason in sorted(fds.history.rejected.items()):
        print(f"FDS outer step {step} finished, not updated from (stepped back): {reason}")
    print(f"\nFDS - greedy HD test accuracy: {fds.test_accuracy - hd.test_accuracy:+.4f}")
    print(f"FDS - random search test accuracy: {fds.test_accuracy - rs.test_accuracy:+.4f}")


if __name__ == "__main__":
    main()
