"""Peak memory of FDS (forward mode) against reverse mode as the horizon T grows.

Method: every configuration runs in a fresh Python process (so that no allocation of an
earlier run is cached) which builds the digits MLP problem, runs one hypergradient
computation of T inner steps, and reports its peak resident set size (``VmHWM`` from
``/proc/self/status``: the high-water mark of physical memory of the whole process, torch's
CPU allocator included — ``tracemalloc`` would miss torch's allocations, which do not go
through Python's allocator). A process that only builds the problem gives the baseline
(interpreter, torch, data); "above baseline" is the memory the unroll itself needs.

FDS keeps the state and its D×N tangents: flat in T. Reverse mode keeps every step's
graph: linear in T.

Run: ``python benchmarks/bench_fds_memory.py [--hidden 128] [--fds-steps 50 5000]
[--reverse-steps 50 200 400]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mib() -> float:
    """High-water mark of the resident set size of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def child(mode: str, steps: int, hidden: int) -> None:
    import torch

    torch.set_num_threads(1)
    from moopt.hypergrad import SGD, Schedule, fds_hypergradients, reverse_hypergradients
    from moopt.hypergrad._digits import DigitsSetup

    horizon = max(steps, 1)
    setup = DigitsSetup.create(steps=horizon, hidden=hidden)
    model = setup.model()
    windows = min(10, horizon)
    optimizer = SGD(
        lr=Schedule(0.05, steps=horizon, windows=windows),
        momentum=Schedule(0.5, steps=horizon),
        weight_decay=Schedule(1e-4, steps=horizon),
    )
    args = (model, setup.train_loss, setup.val_loss, optimizer, setup.batch)
    if mode == "fds":
        result = fds_hypergradients(*args)
    elif mode == "reverse":
        result = reverse_hypergradients(*args)
    else:
        result = None
    n_params = sum(p.numel() for p in model.parameters())
    value = None if result is None else float(result.val_loss)
    print(json.dumps({"peak_mib": peak_rss_mib(), "params": n_params, "val": value}))


def measure(mode: str, steps: int, hidden: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(steps), "--hidden", str(hidden)]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--fds-steps", type=int, nargs="+", default=[50, 5000])
    parser.add_argument("--reverse-steps", type=int, nargs="+", default=[50, 200, 400])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.hidden)
        return
    base = measure("none", 0, args.hidden)
    print(
        f"digits MLP 64-{args.hidden}-{args.hidden}-10, D = {base['params']} parameters, "
        "N = 12 hyperparameters (10 lr windows, momentum, weight decay)"
    )
    print(f"baseline (problem built, no unroll): peak RSS {base['peak_mib']:.1f} MiB\n")
    print(f"{'mode':<8}{'T':>7}{'peak RSS MiB':>15}{'above baseline MiB':>21}")
    rows = {}
    for mode, horizons in (("fds", args.fds_steps), ("reverse", args.reverse_steps)):
        for steps in horizons:
            peak = measure(mode, steps, args.hidden)["peak_mib"]
            rows[(mode, steps)] = peak
            print(f"{mode:<8}{steps:>7}{peak:>15.1f}{peak - base['peak_mib']:>21.1f}", flush=True)
    lo, hi = min(args.fds_steps), max(args.fds_steps)
    ratio = rows[("fds", hi)] / rows[("fds", lo)]
    print(f"\nFDS peak at T = {hi} / at T = {lo}: {ratio:.3f} (goal: within 5 %, i.e. <= 1.05)")
    rev = sorted(args.reverse_steps)
    if len(rev) >= 2:
        slope = (rows[("reverse", rev[-1])] - rows[("reverse", rev[0])]) / (rev[-1] - rev[0])
        print(f"reverse mode: {slope * 1024:.1f} KiB more peak memory per inner step")


if __name__ == "__main__":
    main()
