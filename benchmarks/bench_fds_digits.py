"""FDS vs greedy Hypergradient Descent vs Optuna random search on the digits MLP.

Each method gets the same number of full training runs of T inner steps (default 10 runs
of T = 1500) on the same data, minibatch order and initial weights, picks its run by
validation loss, and is scored by the test accuracy of that run (see
:mod:`moopt.hypergrad._digits` for the search spaces). Wall-clock seconds are printed too:
an FDS run costs several plain runs (it carries N tangents).

With ``--retrain R`` (default 5) each method's pick is also trained again from R other
training seeds (other initial weights and minibatch orders, same split), and the mean
test accuracy of those runs is reported: the single run's accuracy mixes the quality of
the hyperparameters with the luck of one draw, on a test split where one image is 0.28
points.

With several ``--seeds`` (the data split, the tuning draw and the random search's
sampler), a table per seed and a pooled summary follow. ``--results DIR`` keeps each
finished seed as JSON, so an interrupted sweep resumes and several processes can share
the work (each on its own seeds, then one more call over all seeds prints the summary).

Run: ``PYTHONPATH=. python benchmarks/bench_fds_digits.py [--seeds 0 1 ...] [--retrain 5]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
    retrained_scores,
)

METHODS = ("FDS", "greedy HD", "random search")
#: Retraining seeds are this offset plus 0, 1, ...; the tuning seeds are small integers.
RETRAIN_SEED_OFFSET = 1000


def run_seed(seed: int, steps: int, runs: int, retrain: int) -> dict:
    """Tune with the three methods on one seed; return the numbers the summary needs."""
    setup = DigitsSetup.create(steps=steps, seed=seed)
    outcomes = [
        fds_search(setup, runs=runs),
        hd_search(setup, runs=runs),
        random_search(setup, runs=runs, seed=seed),
    ]
    print(
        f"\n=== seed {seed}: digits MLP 64-64-64-10, T = {steps}, {runs} runs per method, "
        f"{len(setup.test.y)} test images"
    )
    print(format_table(outcomes))
    fds = outcomes[0]
    print("FDS validation loss per outer step: " + ", ".join(f"{v:.4f}" for v in fds.val_losses))
    print(
        "FDS log of the largest tangent entry per outer step: "
        + ", ".join(f"{v:.1f}" for v in fds.history.log_tangent_peaks)
    )
    print(f"FDS outer steps whose unroll diverged: {sorted(fds.history.diverged) or 'none'}")
    for step, reason in sorted(fds.history.rejected.items()):
        print(f"FDS outer step {step} finished, not updated from (stepped back): {reason}")
    seeds = range(RETRAIN_SEED_OFFSET, RETRAIN_SEED_OFFSET + retrain)
    record = {"seed": seed, "test_images": len(setup.test.y), "methods": {}}
    for name, outcome in zip(METHODS, outcomes):
        scores = retrained_scores(outcome, setup, seeds) if retrain else []
        accuracies = [accuracy for _, accuracy in scores]
        record["methods"][name] = {
            "val_loss": outcome.val_loss,
            "test_accuracy": outcome.test_accuracy,
            "retrained": accuracies,
            "retrained_val_losses": [val for val, _ in scores],
            "hyperparameters": outcome.hyperparameters,
            "seconds": outcome.seconds,
        }
        if accuracies:
            listed = " ".join(f"{a:.4f}" for a in accuracies)
            vals = [val for val, _ in scores]
            print(
                f"{name}: test accuracy retrained from {retrain} other seeds: {listed} "
                f"(mean {statistics.mean(accuracies):.4f}); validation loss median "
                f"{statistics.median(vals):.4f}"
            )
    return record


def verdict(fds: float, hd: float, rs: float) -> str:
    """The issue's criterion: above greedy HD and at least random search."""
    return "holds" if fds > hd and fds >= rs else "no"


def summarise(records: list[dict]) -> None:
    """Per-seed rows (single run, retrained mean) and paired differences pooled over seeds."""
    print("\n=== summary")
    print(
        f"{'seed':>4}  {'single-run test accuracy (FDS / HD / RS)':<42}{'criterion':<10}"
        f"{'retrained mean (FDS / HD / RS)':<34}criterion"
    )
    single_holds = retrained_holds = 0
    differences: dict[str, list[float]] = {"single": [], "retrained": []}
    for record in records:
        m = record["methods"]
        single = [m[name]["test_accuracy"] for name in METHODS]
        single_verdict = verdict(*single)
        single_holds += single_verdict == "holds"
        row = (
            f"{record['seed']:>4}  {' / '.join(f'{a:.4f}' for a in single):<42}{single_verdict:<10}"
        )
        differences["single"].append((single[0] - max(single[1:])) * record["test_images"])
        if all(m[name]["retrained"] for name in METHODS):
            means = [statistics.mean(m[name]["retrained"]) for name in METHODS]
            retrained_verdict = verdict(*means)
            retrained_holds += retrained_verdict == "holds"
            row += f"{' / '.join(f'{a:.4f}' for a in means):<34}{retrained_verdict}"
            differences["retrained"].append((means[0] - max(means[1:])) * record["test_images"])
        print(row)
    n = len(records)
    print(f"criterion holds (single run): {single_holds} of {n}")
    if len(differences["retrained"]) == n:
        print(f"criterion holds (retrained mean): {retrained_holds} of {n}")
    for name in METHODS:
        singles = [r["methods"][name]["test_accuracy"] for r in records]
        line = f"mean over seeds, {name}: single run {statistics.mean(singles):.4f}"
        retrained = [a for r in records for a in r["methods"][name]["retrained"]]
        if retrained:
            line += f", retrained {statistics.mean(retrained):.4f}"
            vals = [v for r in records for v in r["methods"][name].get("retrained_val_losses", [])]
            if vals:
                line += f" (retrained validation loss: median {statistics.median(vals):.4f})"
        print(line)
    for kind, values in differences.items():
        if len(values) < 2:
            continue
        mean = statistics.mean(values)
        error = statistics.stdev(values) / math.sqrt(len(values))
        wins = sum(v > 0 for v in values)
        ties = sum(v == 0 for v in values)
        print(
            f"FDS minus the better baseline ({kind}), in test images per seed: "
            f"mean {mean:+.2f} ± {error:.2f} (s.e.), FDS ahead on {wins}, level on {ties}, "
            f"behind on {len(values) - wins - ties} of {len(values)} seeds"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds S)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--retrain", type=int, default=5, help="retraining seeds per pick (0: none)"
    )
    parser.add_argument("--results", default=None, help="directory of per-seed JSON results")
    args = parser.parse_args()
    if args.seed is not None and args.seeds is not None:
        parser.error("give --seed or --seeds, not both")
    if args.retrain < 0:
        parser.error(f"--retrain must be non-negative; got {args.retrain}")
    seeds = args.seeds or [0 if args.seed is None else args.seed]
    torch.set_num_threads(1)
    results = Path(args.results) if args.results else None
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in seeds:
        path = (
            None
            if results is None
            else results / (f"seed{seed}_T{args.steps}_runs{args.runs}_retrain{args.retrain}.json")
        )
        if path is not None and path.exists():
            records.append(json.loads(path.read_text()))
            print(f"seed {seed}: read from {path}")
            continue
        record = run_seed(seed, args.steps, args.runs, args.retrain)
        if path is not None:
            path.write_text(json.dumps(record, indent=1))
        records.append(record)
    summarise(records)


if __name__ == "__main__":
    main()
