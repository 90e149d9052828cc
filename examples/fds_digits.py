"""FDS learns a learning-rate schedule, momentum and weight decay for a digits MLP.

scikit-learn's digits (offline), a validation split carved from the training data
(:func:`moopt.data.digits_split`), an MLP 64-64-64-10 trained for T = 1500 SGD steps.
FDS (Micaelli & Storkey 2021) starts every hyperparameter at zero — a 10-window
learning-rate schedule, one momentum, one weight decay — and updates them for 10 outer
steps with the sign step with halving, each outer step one training run carrying the
exact hypergradient of the final validation loss forward. With ``--compare`` the same
number of training runs is given to greedy Hypergradient Descent (Baydin et al. 2018) and
to Optuna's random search (``benchmarks/bench_fds_digits.py`` prints that table alone).

Run: ``MPLBACKEND=Agg PYTHONPATH=. python examples/fds_digits.py [--compare]``
"""

from __future__ import annotations

import argparse

import torch

from moopt.hypergrad._digits import DigitsSetup, fds_search, format_table, hd_search, random_search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fds_digits.png", help="schedule plot path")
    parser.add_argument("--steps", type=int, default=1500, help="inner steps T")
    parser.add_argument("--runs", type=int, default=10, help="outer steps = training runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare", action="store_true", help="also run greedy HD and random search"
    )
    args = parser.parse_args(argv)
    setup = DigitsSetup.create(steps=args.steps, seed=args.seed)
    outcomes = [fds_search(setup, runs=args.runs, progress=True)]
    outcomes[0].history.plot(args.out)
    if args.compare:
        outcomes += [
            hd_search(setup, runs=args.runs),
            random_search(setup, runs=args.runs, seed=args.seed),
        ]
    print(f"digits MLP, T = {args.steps} inner steps, {args.runs} training runs per method")
    print(format_table(outcomes))
    print(f"schedule plot written to {args.out}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread: steadier timings on a shared machine
    raise SystemExit(main())
