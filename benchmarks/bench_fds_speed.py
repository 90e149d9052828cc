"""Per-inner-step cost of FDS against a plain training step, batched vs column-at-a-time.

For N ∈ {1, 4, 12, 32} tuned hyperparameters on the digits MLP: the learning rate (one
shared value) and, for N > 1, N − 1 data weights ``w_k`` of a minibatch split into N − 1
chunks (training loss ``Σ_k w_k · CE(chunk k) / (N − 1)``). Every hyperparameter acts from
the first step, so all N tangent columns are pushed at every step (with a windowed
schedule the engine pushes only the columns of windows already reached, which would
understate the cost per column).

* plain: one ``torch.optim.SGD`` training step (forward, backward, update);
* FDS batched: one inner step of :func:`moopt.hypergrad.fds_hypergradients` pushing all N
  tangent columns at once (``torch.func.jvp`` under ``vmap``: forward-over-reverse);
* FDS columns: the same with ``tangents="columns"``, one Hessian-vector product (jvp)
  per column and the primal recomputed each time — the cost profile of the reference FDS
  code, which forms H·Z column by column;
* unscaled: FDS batched with ``rescale_tangents=False`` (no look at the tangents'
  magnitudes every 8 steps), to show what the rescaling costs.

Each is timed over ``--steps`` inner steps after a warm-up run, in CPU time of this process
(``time.process_time``, one torch thread: on a machine shared with other busy processes,
wall-clock time mostly measures the others), best of ``--repeat``.

Run: ``PYTHONPATH=. python benchmarks/bench_fds_speed.py [--steps 20] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moopt.hypergrad import SGD, Schedule, fds_hypergradients  # noqa: E402
from moopt.hypergrad._digits import DigitsSetup  # noqa: E402


def problem_for(n: int, setup: DigitsSetup, steps: int):
    """Optimizer, extra hyperparameters and training loss with N tuned hyperparameters."""
    optimizer = SGD(lr=Schedule(0.05, steps=steps), momentum=0.5)
    if n == 1:
        return optimizer, {}, setup.train_loss
    chunks = n - 1

    def weighted_loss(model_fn, batch, hypers):
        x, y = batch
        losses = F.cross_entropy(model_fn(x), y, reduction="none")
        per_chunk = torch.stack([part.mean() for part in losses.tensor_split(chunks)])
        return (hypers["w"] * per_chunk).sum() / chunks

    weights = Schedule(torch.ones(chunks), steps=steps, shape=(chunks,))
    return optimizer, {"w": weights}, weighted_loss


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 12, 32])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps
    setup = DigitsSetup.create(steps=steps, hidden=args.hidden)
    model = setup.model()

    def plain() -> None:
        net = setup.model()
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5)
        for t in range(steps):
            opt.zero_grad()
            x, y = setup.batch(t)
            F.cross_entropy(net(x), y).backward()
            opt.step()

    def fds(n: int, mode: str, rescale: bool = True):
        optimizer, hypers, train_loss = problem_for(n, setup, steps)

        def run() -> None:
            fds_hypergradients(
                model,
                train_loss,
                setup.val_loss,
                optimizer,
                setup.batch,
                hypers=hypers,
                tangents=mode,
                rescale_tangents=rescale,
            )

        return run

    plain()
    plain_ms = best_of(args.repeat, plain) / steps * 1e3
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"digits MLP 64-{args.hidden}-{args.hidden}-10 (D = {n_params}), batch "
        f"{setup.batch_size}, {steps} steps, CPU time, best of {args.repeat}, "
        f"torch threads = {args.threads}"
    )
    print(f"plain torch.optim.SGD step: {plain_ms:.2f} ms\n")
    header = f"{'N':>4}{'batched ms':>12}{'x plain':>9}{'columns ms':>12}{'x plain':>9}"
    print(header + f"{'columns / batched':>19}{'unscaled ms':>13}{'rescaled / unscaled':>21}")
    for n in args.ns:
        fds(n, "batched")()
        batched_ms = best_of(args.repeat, fds(n, "batched")) / steps * 1e3
        columns_ms = best_of(args.repeat, fds(n, "columns")) / steps * 1e3
        unscaled_ms = best_of(args.repeat, fds(n, "batched", rescale=False)) / steps * 1e3
        print(
            f"{n:>4}{batched_ms:>12.2f}{batched_ms / plain_ms:>9.1f}{columns_ms:>12.2f}"
            f"{columns_ms / plain_ms:>9.1f}{columns_ms / batched_ms:>19.2f}"
            f"{unscaled_ms:>13.2f}{batched_ms / unscaled_ms:>21.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
