"""``moopt trace``: trace a Pareto front from the command line.

Examples::

    moopt trace circle                              # linear vs ε on the concave circle
    moopt trace fonseca --methods linear,chebyshev,epsilon --points 21 --seeds 2
    moopt trace sphere --methods linear,epsilon --points 6
    moopt trace circle --methods epsilon --points 21 --epsilon-spacing arc --damping 1000
    moopt trace multidigits --workers 2 --out runs/multidigits
    moopt trace circle --dask tcp://scheduler:8786 --out /shared/circle

The sweep is stored point by point under ``OUT/store`` (re-running the same command
resumes it and skips finished points); the front is saved to ``OUT/front.json`` and
plotted to ``OUT/front.png``. The table of points, the indicators (for problems with an
analytic front) and the diagnosis are printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
from collections.abc import Iterator, Sequence

PROBLEMS = ("circle", "circle-convex", "fonseca", "sphere", "multidigits")
"""Targets ``moopt trace`` knows."""

REF_POINT = {
    "circle": (1.1, 1.1),
    "circle-convex": (1.1, 1.1),
    "fonseca": (1.1, 1.1),
    "sphere": (1.1, 1.1, 1.1),
}

MULTIDIGITS_DAMPING = 10.0
"""MDMM damping for MultiDigits (see ``examples/multidigits.py``): a stiffer penalty lets
the constrained digit take the whole bottleneck in the first steps."""


def _parser() -> argparse.ArgumentParser:
    from moopt.frontier import METHODS
    from moopt.frontier._spacing import SPACINGS

    parser = argparse.ArgumentParser(
        prog="moopt trace",
        description="Trace the Pareto front of a built-in problem or the MultiDigits model, "
        "print a table and the diagnosis, and write a figure.",
    )
    parser.add_argument(
        "problem",
        nargs="?",
        default="circle",
        choices=PROBLEMS,
        help="circle (concave quarter circle), circle-convex, fonseca (Fonseca-Fleming, "
        "n=2), sphere (3 losses on the unit-sphere octant), multidigits (two-digit "
        "classifier with a 2-unit bottleneck). Default: circle.",
    )
    parser.add_argument(
        "--methods",
        default="linear,epsilon",
        help=f"comma-separated subset of {','.join(METHODS)} (default: linear,epsilon)",
    )
    parser.add_argument(
        "--points", type=int, default=None, help="points per method (default 11; 5 for multidigits)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per point (default 1)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps per run (default: ProblemTraining's for the toys, 600 for "
        "multidigits)",
    )
    parser.add_argument(
        "--damping",
        type=float,
        default=None,
        help="MDMM damping of the epsilon constraints (default: trace's; 10 for multidigits)",
    )
    parser.add_argument(
        "--epsilon-spacing",
        default="even",
        choices=SPACINGS,
        help="where the epsilon bounds go: evenly in the bound (default) or evenly along "
        "the front, read off a short pilot chain (two losses only)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output directory: store, front.json, front.png (default trace-PROBLEM)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run on a process pool of N workers (default: in-process)",
    )
    parser.add_argument(
        "--dask", default=None, metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write front.png")
    return parser


def _methods(text: str, parser: argparse.ArgumentParser) -> list[str]:
    from moopt.frontier import METHODS

    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if not chosen or unknown:
        parser.error(
            f"--methods must be a comma-separated subset of {','.join(METHODS)}; got {text!r}"
        )
    return chosen


def _target(problem: str, steps: int | None) -> object:
    from moopt.frontier import ProblemTraining

    if problem == "multidigits":
        from moopt._digits_models import MultiDigitsTraining

        return MultiDigitsTraining() if steps is None else MultiDigitsTraining(steps=steps)
    from moopt.problems import Circle, FonsecaFleming, SphereOctant

    instance = {
        "circle": Circle(),
        "circle-convex": Circle(convex=True),
        "fonseca": FonsecaFleming(),
        "sphere": SphereOctant(),
    }[problem]
    return ProblemTraining(instance) if steps is None else ProblemTraining(instance, steps=steps)


@contextlib.contextmanager
def _executor(
    workers: int, dask_address: str | None
) -> Iterator[concurrent.futures.Executor | None]:
    if dask_address is not None:
        try:
            from dask.distributed import Client
        except ImportError as error:
            raise ImportError("--dask needs dask.distributed: pip install 'moopt[dist]'") from error
        with Client(dask_address) as client:
            yield client.get_executor()
    elif workers > 0:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            yield pool
    else:
        yield None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``moopt trace`` with the arguments ``argv``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    methods = _methods(args.methods, parser)
    points = (
        args.points if args.points is not None else (5 if args.problem == "multidigits" else 11)
    )
    for name, value, minimum in (("--points", points, 2), ("--seeds", args.seeds, 1)):
        if value < minimum:
            parser.error(f"{name} must be at least {minimum}; got {value}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be positive; got {args.steps}")
    if args.damping is not None and not args.damping >= 0:
        parser.error(f"--damping must be non-negative; got {args.damping}")
    if args.workers < 0:
        parser.error(f"--workers must be non-negative; got {args.workers}")
    if args.workers and args.dask:
        parser.error("give --workers or --dask, not both")

    from moopt.frontier import trace

    out = args.out if args.out is not None else f"trace-{args.problem}"
    os.makedirs(out, exist_ok=True)
    target = _target(args.problem, args.steps)
    options = {}
    if args.problem == "multidigits":
        import torch

        torch.set_num_threads(1)  # small batches: one intra-op thread is several times faster
        options["loss_names"] = ("CE left digit", "CE right digit")
        options["damping"] = MULTIDIGITS_DAMPING
    if args.damping is not None:
        options["damping"] = args.damping
    with _executor(args.workers, args.dask) as executor:
        front = trace(
            target,
            methods=methods,
            n_points=points,
            seeds=args.seeds,
            executor=executor,
            store=os.path.join(out, "store"),
            epsilon_spacing=args.epsilon_spacing,
            **options,
        )
    front.save(os.path.join(out, "front.json"))
    print(front.table())
    print()
    if args.problem in REF_POINT:
        ref = REF_POINT[args.problem]
        for method in [m for m in front.method_names() if m != "anchor"]:
            part = front.select(method=method)
            print(
                f"{method:<17} hypervolume (ref {ref}) {part.hypervolume(ref):.4f}   "
                f"IGD {part.igd():.4f}"
            )
        print()
    print(front.diagnose())
    if not args.no_plot:
        figure = front.plot()
        path = os.path.join(out, "front.png")
        figure.savefig(path, dpi=120, bbox_inches="tight")
        print(f"\nfigure: {path}")
    print(f"front:  {os.path.join(out, 'front.json')}  (store: {os.path.join(out, 'store')})")
    return 0
