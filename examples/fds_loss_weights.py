"""FDS tunes the loss weight of ``moopt.Linear`` for a validation criterion you choose,
within the compute of a grid of 11 fixed weights.

A two-task MultiDigits model (two overlapped digits, one classification head per digit,
see :func:`moopt.data.multi_digits`) is trained on ``(1 − α)·L_left + α·L_right`` through
``moopt.Linear``. What we want at the end is not that weighted sum but a criterion of the
*validation* losses: by default the worse of the two task losses (``--criterion worst``;
``mean`` is the other choice). The usual answer is a grid of 11 fixed weights
α ∈ {0, 0.1, …, 1}, one plain ``torch.optim`` training run each, keeping the run with the
best validation criterion. FDS differentiates the criterion after the whole training run
with respect to α (one shared value, N = 1 tangent) and moves α between runs.

Equal compute: the grid runs first and its CPU time (this process, one thread) is FDS's
budget; FDS starts another run only while the time spent plus 1.1 times its most
expensive run so far stays within it, so it gets as many runs as fit (an FDS run costs
about 2.3 plain runs here; the number of runs, hence the result, can change with the
machine's load). Two outer rules share that budget: ``CuttingPlaneStep`` (sign steps until
the hypergradient's sign brackets the minimum, then the intersection of the tangents) and
the FDS paper's ``SignStep`` (halving on sign flips), both with a first step of 0.15 of
α's range (``--fraction``): from α = 0.5 a step of 0.1 lands on the grid's own points,
where FDS can at best tie the grid. Every method keeps its run with the best validation
criterion; the table also gives the same criterion on the test set (see BENCHMARKS.md:
the validation gain does not carry over to it on this split).

The task losses are written as ``logsumexp(z) − z[y]`` (the cross-entropy, for both the
grid and FDS): ``F.cross_entropy``'s backward has no forward-mode formula in torch 2.13
and runs a Python decomposition under FDS, several times slower.

Run: ``MPLBACKEND=Agg PYTHONPATH=. python examples/fds_loss_weights.py [--seed 1]``
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.func import functional_call

import moopt
from moopt.data import multi_digits
from moopt.hypergrad import (
    SGD,
    CuttingPlaneStep,
    History,
    OuterOptimizer,
    Schedule,
    SignStep,
    cross_entropy,
    fds_hypergradients,
)

CRITERIA = {"worst": lambda losses: losses.max(), "mean": lambda losses: losses.mean()}
GRID = 11
MARGIN = 1.1  # a run may take longer than the longest so far: start one only with 10 % to spare


class TwoTaskSetup:
    """MultiDigits data (validation carved from training), minibatches, model, losses."""

    def __init__(self, steps: int, batch_size: int = 64, hidden: int = 64, seed: int = 0):
        train, test = multi_digits(n_train=2500, n_test=1000, seed=seed)
        n_val = 500
        labels = torch.stack([train.y_left, train.y_right], 1)
        self.x, self.y = train.x[n_val:], labels[n_val:]
        self.x_val, self.y_val = train.x[:n_val], labels[:n_val]
        self.x_test, self.y_test = test.x, torch.stack([test.y_left, test.y_right], 1)
        generator = torch.Generator().manual_seed(seed)
        self.indices = torch.randint(len(self.x), (steps, batch_size), generator=generator)
        self.steps, self.hidden, self.seed = steps, hidden, seed

    def model(self) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Linear(144, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 20))

    @staticmethod
    def task_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [cross_entropy(logits[:, :10], y[:, 0]), cross_entropy(logits[:, 10:], y[:, 1])]
        )

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices[t]
        return self.x[idx], self.y[idx]

    @staticmethod
    def weighted(losses: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``moopt.Linear([1 − α, α])(losses)``, differentiable in α (also in forward mode)."""
        return moopt.Linear(torch.stack([1 - alpha, alpha]))(losses)

    def evaluate(self, model: nn.Module, params=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Task losses on the validation and on the test set."""
        with torch.no_grad():

            def run(x):
                return model(x) if params is None else functional_call(model, params, (x,))

            val = self.task_losses(run(self.x_val), self.y_val)
            test = self.task_losses(run(self.x_test), self.y_test)
        return val, test


def plain_run(setup: TwoTaskSetup, alpha: float, lr: float, momentum: float, steps: int):
    """One ordinary training run with a fixed α (``torch.optim.SGD``)."""
    model = setup.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    weight = torch.tensor(alpha)
    for t in range(steps):
        optimizer.zero_grad()
        x, y = setup.batch(t)
        setup.weighted(setup.task_losses(model(x), y), weight).backward()
        optimizer.step()
    return model


def grid_search(setup: TwoTaskSetup, lr: float, momentum: float, criterion) -> dict:
    """11 plain runs with fixed α ∈ {0, 0.1, …, 1}; the best by the validation criterion."""
    best = {"val": float("inf"), "visited": []}
    for alpha in torch.linspace(0, 1, GRID).tolist():
        val, test = setup.evaluate(plain_run(setup, alpha, lr, momentum, setup.steps))
        best["visited"].append((alpha, float(criterion(val))))
        if float(criterion(val)) < best["val"]:
            best.update(val=float(criterion(val)), test=float(criterion(test)), alpha=alpha)
            best.update(val_losses=val.tolist(), test_losses=test.tolist())
    best["runs"] = GRID
    return best


def fds_search(
    setup: TwoTaskSetup,
    lr: float,
    momentum: float,
    criterion,
    outer: OuterOptimizer,
    budget: float,
    steps: int | None = None,
) -> tuple[dict, History]:
    """FDS on one shared α from 0.5: outer steps while the next one fits in ``budget`` CPU
    seconds with a margin (at least one); the run with the best validation criterion is
    kept."""
    steps = setup.steps if steps is None else steps
    alpha = Schedule(0.5, steps=steps, bounds=(0.0, 1.0))
    schedules = {"alpha": alpha}
    outer.validate(schedules)
    model = setup.model()

    def train_loss(model_fn, batch, hypers):
        x, y = batch
        return setup.weighted(setup.task_losses(model_fn(x), y), hypers["alpha"])

    def val_loss(model_fn):
        return criterion(setup.task_losses(model_fn(setup.x_val), setup.y_val))

    optimizer = SGD(lr=lr, momentum=momentum)
    history = History()
    best = {"val": float("inf"), "visited": []}
    spent = longest = 0.0
    while not history.val_losses or spent + MARGIN * longest <= budget:
        start = time.process_time()
        result = fds_hypergradients(
            model, train_loss, val_loss, optimizer, setup.batch, hypers=schedules, steps=steps
        )
        history.record(schedules, result)
        used = float(alpha.values())
        outer.step(schedules, result.hypergrads, val_loss=float(result.val_loss))
        run_seconds = time.process_time() - start
        spent, longest = spent + run_seconds, max(longest, run_seconds)
        best["visited"].append((used, float(result.val_loss)))
        if float(result.val_loss) < best["val"]:
            val, test = setup.evaluate(model, result.params)
            best.update(val=float(result.val_loss), test=float(criterion(test)), alpha=used)
            best.update(val_losses=val.tolist(), test_losses=test.tolist())
    history.final_values = {"alpha": alpha.values().clone()}
    best.update(runs=history.outer_steps, cpu=spent)
    return best, history


def plot(rows: dict[str, dict], path: str, title: str):
    """Validation criterion against α: the grid's points and each FDS rule's runs (numbered
    in the zoom around the grid's best α)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    centre = rows["grid of 11 fixed α"]["alpha"]
    for axis, zoom in zip(axes, (False, True)):
        for (name, row), marker in zip(rows.items(), ["o", "s", "^", "D"]):
            points = [(a, v) for a, v in row["visited"] if not zoom or abs(a - centre) <= 0.15]
            xs, ys = zip(*points)
            style = "" if "grid" in name else ":"
            axis.plot(xs, ys, marker=marker, linestyle=style, label=name, alpha=0.8)
            if zoom and "grid" not in name:
                for k, (x, y) in enumerate(row["visited"], 1):
                    axis.annotate(str(k), (x, y), xytext=(4, 4), textcoords="offset points")
        axis.set_xlabel("α (weight of the right-digit loss)")
        axis.set_ylabel("validation criterion")
    axes[0].set_yscale("log")
    axes[0].set_title(title, fontsize=10)
    axes[1].set_title("around the grid's best α; FDS runs numbered in order", fontsize=10)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fds_loss_weights.png", help="figure path")
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default="worst")
    parser.add_argument("--seed", type=int, default=0, help="data split, minibatches, init")
    parser.add_argument("--steps", type=int, default=300, help="inner steps T")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.15,
        help="FDS sign step, fraction of α's range (0.15: off the grid's 0.1 lattice)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time = compute)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        compare(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def compare(args: argparse.Namespace) -> None:
    """Run the grid and both FDS rules on the same budget; print the table, draw the figure."""
    criterion = CRITERIA[args.criterion]
    setup = TwoTaskSetup(args.steps, seed=args.seed)
    # Warm-up (untimed): the first calls of either method pay one-off start-up costs.
    plain_run(setup, 0.5, args.lr, args.momentum, min(3, args.steps))
    fds_search(setup, args.lr, args.momentum, criterion, SignStep(), 0.0, min(3, args.steps))

    wall, cpu = time.perf_counter(), time.process_time()
    grid = grid_search(setup, args.lr, args.momentum, criterion)
    grid.update(cpu=time.process_time() - cpu, wall=time.perf_counter() - wall)
    rows = {"grid of 11 fixed α": grid}
    for name, outer in (
        ("FDS α, cutting-plane step", CuttingPlaneStep(fraction=args.fraction)),
        ("FDS α, sign step", SignStep(fraction=args.fraction)),
    ):
        wall = time.perf_counter()
        row, history = fds_search(setup, args.lr, args.momentum, criterion, outer, grid["cpu"])
        rows[name] = {**row, "wall": time.perf_counter() - wall}

    plain = grid["cpu"] / GRID
    print(
        f"criterion: {args.criterion} of the two task losses; seed {args.seed}; "
        f"T = {args.steps}; budget = the grid's CPU time, {grid['cpu']:.2f} s "
        f"(one plain run = {plain:.3f} s)"
    )
    header = f"{'method':<28}{'runs':>5}{'CPU s':>8}{'× grid':>8}{'plain runs':>11}"
    print(f"{header}{'wall s':>8}{'val':>9}{'test':>9}  α")
    for name, row in rows.items():
        print(
            f"{name:<28}{row['runs']:>5}{row['cpu']:>8.2f}{row['cpu'] / grid['cpu']:>8.2f}"
            f"{row['cpu'] / plain:>11.1f}{row['wall']:>8.2f}{row['val']:>9.4f}{row['test']:>9.4f}"
            f"  {row['alpha']:.4f}"
        )
    for name, row in rows.items():
        visited = ", ".join(f"{a:.3f}" for a, _ in row["visited"])
        val = ", ".join(f"{v:.4f}" for v in row["val_losses"])
        print(f"{name}: task losses (val) [{val}]; α visited [{visited}]")
    plot(rows, args.out, f"{args.criterion} of the two validation losses, seed {args.seed}")
    print(f"figure written to {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
