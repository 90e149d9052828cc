"""Workload (a) of issue 3: each aggregator alone on a random K×D Jacobian.

For K ∈ {2, 4, 8, 32, 128} and D ∈ {1e4, 1e6}, times moopt's ``aggregate(J)`` beside
TorchJD 0.18's aggregator for the same method, and the floor of every Gramian method:
``G = J Jᵀ`` plus the final combination ``w @ J``, timed alternately with each method so
both see the same load. Prints one table of median CPU milliseconds of the repeats with
the ratios moopt/floor (the median of the ratios of the calls made back to back) and
TorchJD/moopt. The column
``w(G)`` is each Gramian method's fixed cost: its ``weights`` alone on the precomputed
Gramian (the K×K work, independent of D; timed hot, right after itself). The row
``UPGrad w(G)`` compares UPGrad's weights with TorchJD's ``UPGradWeighting``.

    PYTHONPATH=. python benchmarks/bench_aggregators.py          # all sizes that fit
    PYTHONPATH=. python benchmarks/bench_aggregators.py --quick  # D = 1e6 only for K ≤ 8

Skipped, and printed as such: K = 128 at D = 1e6 (a 512 MB Jacobian and ~33 GFLOP per
Gramian: seconds per call on 2 cores); with ``--quick`` also K ≥ 32 at D = 1e6. A TorchJD
aggregator whose optional solver is not installed (quadprog for UPGrad/DualProj, ecos for
Nash-MTL) shows ``n/a``; one whose single call exceeds ``--budget`` seconds is timed once.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import torch

from moopt import gradsurgery as gs

GRAMIAN_METHODS = {
    "PCGrad": (gs.PCGrad, "PCGrad", {}),
    "MGDA": (gs.MGDA, "MGDA", {}),
    "CAGrad": (lambda: gs.CAGrad(c=0.5, rescale=0), "CAGrad", {"c": 0.5}),
    "NashMTL": (lambda: gs.NashMTL(max_norm=0.0), "NashMTL", {"max_norm": 0.0}),
    "IMTLG": (gs.IMTLG, "IMTLG", {}),
    "GradVac": (gs.GradVac, "GradVac", {}),
    "AlignedMTL": (gs.AlignedMTL, "AlignedMTL", {}),
    "UPGrad": (gs.UPGrad, "UPGrad", {}),
    "DualProj": (gs.DualProj, "DualProj", {}),
    "ConFIG": (gs.ConFIG, "ConFIG", {}),
    "FairGrad": (lambda: gs.FairGrad(alpha=1.0), "FairGrad", {"alpha": 1.0}),
}
OTHER_METHODS = {"GradDrop": (gs.GradDrop, "GradDrop", {})}


def median_ms(
    function: Callable[..., object],
    *args: object,
    repeats: int,
    budget: float,
    reference: Callable[..., object] | None = None,
) -> tuple[float, float, float]:
    """Median CPU times in ms of ``function(*args)`` and, alternating with it in the same
    loop, of ``reference(*args)`` (0 when None), and the median of the paired ratios
    ``function / reference`` of the calls made back to back (nan when None): on a loaded
    machine the pairs share the load, so the paired ratio is steadier than the ratio of the
    medians. One warm-up; timed once when the warm-up exceeds ``budget`` seconds.

    CPU time of the process (``time.process_time``), not wall time: on a shared machine the
    process gets a fraction of a core and wall times are inflated and noisy. With one
    torch thread (``--threads 1``) CPU time is what the call costs on an idle core.
    """
    functions = [function] if reference is None else [function, reference]
    first = []
    for f in functions:
        start = time.process_time()
        f(*args)
        first.append(time.process_time() - start)
    over_budget = max(first) > budget
    times: list[list[float]] = [[t] for t in first] if over_budget else [[] for _ in first]
    for _ in range(0 if over_budget else repeats):
        for f, record in zip(functions, times):
            start = time.process_time()
            f(*args)
            record.append(time.process_time() - start)
    medians = [1e3 * statistics.median(record) for record in times]
    if reference is None:
        return medians[0], 0.0, math.nan
    paired = [a / b for a, b in zip(*times) if b > 0]
    return medians[0], medians[1], statistics.median(paired) if paired else math.nan


def gramian_floor(jacobian: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The floor of every Gramian method: ``G = J Jᵀ`` and the combination ``w @ J``."""
    gramian = jacobian @ jacobian.T
    return (weights + 0.0 * gramian[0, 0]) @ jacobian


def torchjd_aggregator(name: str, n_tasks: int, kwargs: dict) -> Callable | None:
    """TorchJD's aggregator for ``name``, or None when its optional solver is missing."""
    try:
        from torchjd import aggregation
    except ImportError:
        return None
    if name == "NashMTL":
        kwargs = {**kwargs, "n_tasks": n_tasks}
    try:
        aggregator = getattr(aggregation, name)(**kwargs)
        probe = torch.randn(n_tasks, 3)
        aggregator(probe)
    except ImportError:
        return None
    return aggregator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per cell")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds: above, time once")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--tasks", type=int, nargs="*", default=[2, 4, 8, 32, 128])
    parser.add_argument("--dims", type=int, nargs="*", default=[10_000, 1_000_000])
    parser.add_argument("--methods", nargs="*", default=None, help="subset of method names")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # cvxpy's DPP/accuracy notes
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 11)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU ms (median)")
    header = f"{'K':>4} {'D':>8} {'method':<11} {'floor':>9} {'moopt':>9} {'w(G)':>7}"
    header += f" {'torchjd':>9}"
    print(header + f" {'moopt/floor':>11} {'torchjd/moopt':>13}")
    methods = {**GRAMIAN_METHODS, **OTHER_METHODS}
    if args.methods is not None:
        unknown = sorted(set(args.methods) - set(methods) - {"UPGrad-w"})
        if unknown:
            parser.error(f"unknown methods {unknown}; choose from {sorted(methods)} or UPGrad-w")
        methods = {name: methods[name] for name in methods if name in args.methods}
    generator = torch.Generator().manual_seed(0)
    for dim in args.dims:
        for n_tasks in args.tasks:
            if dim >= 1_000_000 and (n_tasks >= 128 or (args.quick and n_tasks >= 32)):
                print(f"{n_tasks:>4} {dim:>8} skipped (too long on 2 cores)")
                continue
            jacobian = torch.randn(n_tasks, dim, generator=generator)
            gramian = jacobian @ jacobian.T
            weights = torch.full((n_tasks,), 1.0 / n_tasks)
            timing = {"repeats": repeats, "budget": args.budget}
            for name, (factory, jd_name, jd_kwargs) in methods.items():
                gramian_method = name in GRAMIAN_METHODS
                floor = partial(gramian_floor, weights=weights) if gramian_method else None
                ours_ms, floor_ms, over_floor = median_ms(
                    factory().aggregate, jacobian, reference=floor, **timing
                )
                theirs = torchjd_aggregator(jd_name, n_tasks, jd_kwargs)
                if theirs is None:
                    theirs_text, ratio_text = "n/a", "n/a"
                else:
                    theirs_ms, *_ = median_ms(theirs, jacobian, **timing)
                    theirs_text, ratio_text = f"{theirs_ms:9.2f}", f"{theirs_ms / ours_ms:13.2f}"
                floor_text = f"{floor_ms:9.2f}" if gramian_method else f"{'-':>9}"
                fixed_text = f"{'-':>7}"
                if gramian_method:
                    fixed_ms, *_ = median_ms(factory().weights, gramian, **timing)
                    fixed_text = f"{fixed_ms:7.3f}"
                over = f"{over_floor:11.2f}" if gramian_method else f"{'-':>11}"
                print(
                    f"{n_tasks:>4} {dim:>8} {name:<11} {floor_text} {ours_ms:9.2f} "
                    f"{fixed_text} {theirs_text:>9} {over} {ratio_text:>13}",
                    flush=True,
                )
            if args.methods is not None and "UPGrad-w" not in args.methods:
                continue
            ours_ms, *_ = median_ms(gs.UPGrad().weights, gramian, **timing)
            theirs = torchjd_aggregator("UPGrad", n_tasks, {})
            theirs_text, ratio_text = "n/a", "n/a"
            if theirs is not None:
                theirs_ms, *_ = median_ms(theirs.gramian_weighting, gramian, **timing)
                theirs_text, ratio_text = f"{theirs_ms:9.2f}", f"{theirs_ms / ours_ms:13.2f}"
            print(
                f"{n_tasks:>4} {dim:>8} {'UPGrad w(G)':<11} {'-':>9} {ours_ms:9.2f} {'-':>7} "
                f"{theirs_text:>9} {'-':>11} {ratio_text:>13}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
