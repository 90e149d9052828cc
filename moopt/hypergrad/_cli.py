"""``moopt tune``: FDS tunes a digits MLP's learning-rate schedule, momentum and weight decay.

Starting from zero, every outer step trains the MLP for ``--steps`` inner steps while
carrying the exact hypergradients forward (FDS, Micaelli & Storkey 2021), then moves every
hyperparameter by the sign step with halving. Prints the learned hyperparameters and the
test accuracy of the best run (lowest validation loss), and writes the schedule plot.
The defaults are those of ``examples/fds_digits.py`` (T = 1500, 10 outer steps; about
two minutes on two idle CPU cores), which also compares with greedy HD and random search.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moopt tune",
        description="FDS tuning of a digits MLP: lr schedule, momentum, weight decay.",
    )
    parser.add_argument("--out", default="moopt_tune_schedules.png", help="schedule plot path")
    parser.add_argument("--outer-steps", type=_positive_int, default=10, help="outer steps")
    parser.add_argument("--steps", type=_positive_int, default=1500, help="horizon T (inner steps)")
    parser.add_argument("--windows", type=_positive_int, default=10, help="lr schedule windows")
    parser.add_argument("--hidden", type=_positive_int, default=64, help="MLP hidden width")
    parser.add_argument("--seed", type=int, default=0, help="data split, batches and init seed")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (resume if present)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``moopt tune``; returns the exit status."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.windows > args.steps:
        print(
            f"moopt tune: --windows ({args.windows}) must not exceed --steps ({args.steps})",
            file=sys.stderr,
        )
        return 2
    from moopt.hypergrad._digits import DigitsSetup, fds_search

    setup = DigitsSetup.create(steps=args.steps, hidden=args.hidden, seed=args.seed)
    outcome = fds_search(
        setup,
        runs=args.outer_steps,
        windows=args.windows,
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
    )
    hypers = outcome.hyperparameters
    print(f"FDS on digits: T = {args.steps} inner steps, {args.outer_steps} outer steps")
    print("validation loss per outer step: " + ", ".join(f"{v:.4f}" for v in outcome.val_losses))
    print(f"learning rate per window: {hypers['lr']}")
    print(f"momentum: {hypers['momentum']}   weight decay: {hypers['weight_decay']}")
    print(f"best validation loss: {outcome.val_loss:.4f}")
    print(f"test accuracy: {outcome.test_accuracy:.4f}")
    outcome.history.plot(args.out)
    print(f"schedule plot written to {args.out}")
    return 0
