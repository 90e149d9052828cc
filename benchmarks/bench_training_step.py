"""Workload (b) of issue 3: one full multi-task training step, moopt vs torchjd.

A shared MLP trunk (input 256, three hidden layers of 512, ReLU: 656,896 shared
parameters) with K linear regression heads, batch 128, K in {2, 4, 8}. Every row times one
step: zero the gradients, forward, and the backward of the method. Rows:

* ``sum backward``: ``losses.sum().backward()``, the cost of ordinary training;
* ``K backward (floor)``: K separate ``autograd.grad`` calls, the floor for exact
  per-task gradients (no aggregation);
* moopt in parameter mode (exact per-task gradients of all parameters), with a mean
  (generic ``aggregate(J)`` path), a min-norm (MGDA) Gramian weighting (``w @ J`` update)
  and the same weighting updated by a second backward of ``Σ w_k L_k``, or with the
  per-task gradients from vmap's batched backward instead of the loop the engine uses on
  CPU (both alternatives measured here to justify the engine's choices);
* moopt with ``watch`` (``combiner.watch(trunk)``, ``combiner.watch(heads)``): the
  Gramian and the update of every linear layer from its recorded inputs and the K tasks'
  output gradients, without the K×D Jacobian (each of these rows runs on its own copy
  of the model, because watch hooks record every forward of the model they watch);
* moopt ``features=`` mode (per-task gradients only down to the trunk output, then one
  trunk backward; MGDA-UB with the min-norm weighting);
* torchjd (``autojac.backward`` + ``jac_to_grad``, and ``mtl_backward`` + ``jac_to_grad``)
  with its Mean, MGDA and PCGrad aggregators (its UPGrad needs the optional quadprog
  package, which is not installed here).

The rows "moopt Mean" and "moopt MinNorm" use private stand-ins written for this
benchmark (a mean through the generic ``aggregate(J)`` path, and MGDA's min-norm weights
by 25 Frank-Wolfe steps), which isolate the engine; the rows "moopt.MGDA",
"moopt.UPGrad", "moopt.PCGrad" (and their "watch" rows) use the library's aggregators,
and "moopt.MGDA features=" is the library's MGDA-UB.
Time is the CPU time of this process (``time.process_time``) with one torch thread,
which on an idle machine equals the wall-clock time of the step and on a shared one is
not inflated by the time other processes hold the core. After a warm-up the methods
take turns, round after round (each runs an untimed step, then the timed one), so that
they share the same load; the median and the minimum over rounds are reported.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_training_step.py [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from moopt import MGDA, GradientCombiner, GramianWeighting, PCGrad, UPGrad
from moopt._jacobian import memo_of, task_gradients

BATCH, N_IN, HIDDEN = 128, 256, 512


class Mean(GradientCombiner):
    """``mean_k g_k`` through the generic ``aggregate(J)`` path."""

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        return jacobian.mean(0)


class MinNorm(GramianWeighting):
    """Min-norm point of the convex hull of the gradients (MGDA) by 25 Frank-Wolfe steps
    with exact line search on G (a stand-in: the real MGDA is in moopt.gradsurgery)."""

    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        n_tasks = gramian.shape[0]
        w = torch.full((n_tasks,), 1.0 / n_tasks, dtype=gramian.dtype)
        for _ in range(25):
            gw = gramian @ w
            t = int(gw.argmin())
            direction = -w
            direction[t] += 1.0
            curvature = direction @ gramian @ direction
            if curvature <= 0:
                break
            step = float((-(direction @ gw) / curvature).clamp(0.0, 1.0))
            if step < 1e-10:
                break
            w = w + step * direction
        return w


def make_model(n_tasks: int) -> tuple[nn.Module, nn.ModuleList]:
    trunk = nn.Sequential(
        nn.Linear(N_IN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
    )
    heads = nn.ModuleList(nn.Linear(HIDDEN, 1) for _ in range(n_tasks))
    return trunk, heads


def make_forward(
    trunk: nn.Module, heads: nn.ModuleList, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], tuple[list[torch.Tensor], torch.Tensor]]:
    """One step's zeroing of the gradients and forward: the K losses and the trunk output."""
    params = [*trunk.parameters(), *heads.parameters()]

    def forward() -> tuple[list[torch.Tensor], torch.Tensor]:
        for p in params:
            p.grad = None
        h = trunk(x)
        return [((head(h)[:, 0] - y[:, k]) ** 2).mean() for k, head in enumerate(heads)], h

    return forward


def build_methods(n_tasks: int) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    trunk, heads = make_model(n_tasks)
    params = [*trunk.parameters(), *heads.parameters()]
    x, y = torch.randn(BATCH, N_IN), torch.randn(BATCH, n_tasks)
    forward = make_forward(trunk, heads, x, y)

    def summed() -> None:
        sum(forward()[0]).backward()

    def k_backward() -> None:
        losses = forward()[0]
        for k in range(n_tasks):
            torch.autograd.grad(losses[k], params, retain_graph=k < n_tasks - 1, allow_unused=True)

    def moopt_param(combiner: GradientCombiner) -> Callable[[], None]:
        return lambda: combiner.backward(forward()[0])

    def moopt_watch(combiner: GramianWeighting) -> Callable[[], None]:
        # A model of its own (same weights): watch hooks record every forward of a model.
        own_trunk, own_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
        combiner.watch(own_trunk)
        combiner.watch(own_heads)
        own_forward = make_forward(own_trunk, own_heads, x, y)
        return lambda: combiner.backward(own_forward()[0])

    def moopt_features(combiner: GradientCombiner) -> Callable[[], None]:
        def step() -> None:
            losses, h = forward()
            combiner.backward(losses, features=h)

        return step

    min_norm = MinNorm()

    def gramian_then_second_backward() -> None:
        losses = forward()[0]
        grads = task_gradients(losses, params, retain_graph=True)
        gramian = sum(g.reshape(n_tasks, -1) @ g.reshape(n_tasks, -1).T for g in grads)
        del grads
        (min_norm.weights(gramian).detach() * torch.stack(losses)).sum().backward()

    batched = MinNorm()
    memo_of(batched).strategy = "batched"
    methods = {
        "sum backward": summed,
        "K backward (floor)": k_backward,
        "moopt Mean": moopt_param(Mean()),
        "moopt MinNorm (w @ J)": moopt_param(MinNorm()),
        "moopt MinNorm, vmap batched backward": moopt_param(batched),
        "moopt MinNorm (2nd backward)": gramian_then_second_backward,
        "moopt Mean features=": moopt_features(Mean()),
        "moopt MinNorm features= (MGDA-UB)": moopt_features(MinNorm()),
        "moopt.MGDA": moopt_param(MGDA()),
        "moopt.UPGrad": moopt_param(UPGrad()),
        "moopt.PCGrad": moopt_param(PCGrad(generator=torch.Generator().manual_seed(0))),
        "moopt.MGDA watch": moopt_watch(MGDA()),
        "moopt.UPGrad watch": moopt_watch(UPGrad()),
        "moopt.PCGrad watch": moopt_watch(PCGrad(generator=torch.Generator().manual_seed(0))),
        "moopt.UPGrad features=": moopt_features(UPGrad()),
        "moopt.MGDA features= (MGDA-UB)": moopt_features(MGDA()),
    }
    methods.update(torchjd_methods(forward, params, list(trunk.parameters())))
    return methods


def torchjd_methods(forward, params, shared) -> dict[str, Callable[[], None]]:
    try:
        from torchjd.aggregation import MGDA, PCGrad
        from torchjd.aggregation import Mean as JDMean
        from torchjd.autojac import backward, jac_to_grad, mtl_backward
    except ImportError as error:
        raise ImportError("the benchmark needs torchjd: pip install 'moopt[bench]'") from error

    def full(aggregator) -> Callable[[], None]:
        def step() -> None:
            backward(forward()[0], inputs=params)
            jac_to_grad(params, aggregator)

        return step

    def mtl(aggregator) -> Callable[[], None]:
        def step() -> None:
            losses, h = forward()
            mtl_backward(losses, features=h, shared_params=shared)
            jac_to_grad(shared, aggregator)

        return step

    return {
        "torchjd Mean": full(JDMean()),
        "torchjd MGDA": full(MGDA()),
        "torchjd PCGrad": full(PCGrad()),
        "torchjd mtl_backward MGDA": mtl(MGDA()),
    }


def time_methods(
    methods: dict[str, Callable[[], None]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Median and minimum CPU milliseconds per step of each method.

    The methods take turns: every round runs each method twice in a row and times the
    second step (the first lets the memory allocator settle back into that method's
    pattern, as it is in a training loop), so all methods see the same load from other
    processes over the run.
    """
    for step in methods.values():
        for _ in range(3):  # warm-up (allocator, vmap tracing)
            step()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, step in methods.items():
            step()
            start = time.process_time()
            step()
            times[name].append(time.process_time() - start)
    return {
        name: (statistics.median(record) * 1e3, min(record) * 1e3) for name, record in times.items()
    }


def print_table(results: dict[int, dict[str, tuple[float, float]]], which: int) -> None:
    tasks = list(results)
    header = " | ".join(f"K={k} ms | /floor | /sum" for k in tasks)
    print(f"| method | {header} |")
    print("|" + "---|" * (1 + 3 * len(tasks)))
    for name in results[tasks[0]]:
        cells = []
        for k in tasks:
            row = {method: times[which] for method, times in results[k].items()}
            floor, plain = row["K backward (floor)"], row["sum backward"]
            cells.append(f"{row[name]:.1f} | {row[name] / floor:.2f} | {row[name] / plain:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), batch {BATCH}, {args.rounds} rounds, CPU time per step"
    )
    results = {k: time_methods(build_methods(k), args.rounds) for k in args.tasks}
    print("\nMedian over rounds (ratios of medians):\n")
    print_table(results, 0)
    print("\nMinimum over rounds (ratios of minima; least disturbed by other processes):\n")
    print_table(results, 1)


if __name__ == "__main__":
    main()
