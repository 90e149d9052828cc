"""FDS tunes the loss weights of ``moopt.Linear`` for a validation criterion you choose.

A two-task MultiDigits model (two overlapped digits, one classification head per digit,
see :func:`moopt.data.multi_digits`) is trained on ``(1 − α)·L_left + α·L_right`` through
``moopt.Linear``. What we want at the end is not that weighted sum but a criterion of
the *validation* losses — here by default the worse of the two task losses (``--criterion
worst``; ``mean`` is the other choice). FDS differentiates that criterion after the whole
training run with respect to a schedule of α over ``--windows`` windows, and is compared
with the usual grid of 11 fixed weights α ∈ {0, 0.1, …, 1} given the same number of
training runs (11). Both pick their run by the validation criterion; the table reports
it and the same criterion on the test set.

Run: ``MPLBACKEND=Agg PYTHONPATH=. python examples/fds_loss_weights.py``
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import moopt
from moopt.data import multi_digits
from moopt.hypergrad import SGD, Schedule, SignStep, fds_hypergradients, tune

CRITERIA = {"worst": lambda losses: losses.max(), "mean": lambda losses: losses.mean()}


class TwoTaskSetup:
    """MultiDigits data (validation carved from training), minibatches, model, losses."""

    def __init__(self, steps: int, batch_size: int = 64, hidden: int = 64, seed: int = 0):
        train, test = multi_digits(n_train=2500, n_test=1000, seed=seed)
        n_val = 500
        self.x, self.y = train.x[n_val:], torch.stack([train.y_left, train.y_right], 1)[n_val:]
        self.x_val = train.x[:n_val]
        self.y_val = torch.stack([train.y_left, train.y_right], 1)[:n_val]
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
            [F.cross_entropy(logits[:, :10], y[:, 0]), F.cross_entropy(logits[:, 10:], y[:, 1])]
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


def grid_search(setup: TwoTaskSetup, lr: float, momentum: float, criterion) -> dict:
    """11 plain runs with fixed α ∈ {0, 0.1, …, 1}; the best by the validation criterion."""
    best = {"val": float("inf")}
    for alpha in torch.linspace(0, 1, 11).tolist():
        model = setup.model()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        for t in range(setup.steps):
            optimizer.zero_grad()
            x, y = setup.batch(t)
            setup.weighted(setup.task_losses(model(x), y), torch.tensor(alpha)).backward()
            optimizer.step()
        val, test = setup.evaluate(model)
        if float(criterion(val)) < best["val"]:
            best = {"val": float(criterion(val)), "test": float(criterion(test)), "alpha": alpha}
            best.update(val_losses=val.tolist(), test_losses=test.tolist())
    return best


def fds_search(
    setup: TwoTaskSetup, lr: float, momentum: float, criterion, windows: int, runs: int
) -> tuple[dict, Schedule, object]:
    """FDS over a ``windows``-window schedule of α from 0.5, ``runs`` outer steps."""
    alpha = Schedule(0.5, steps=setup.steps, windows=windows, bounds=(0.0, 1.0))
    model = setup.model()

    def train_loss(model_fn, batch, hypers):
        x, y = batch
        return setup.weighted(setup.task_losses(model_fn(x), y), hypers["alpha"])

    def val_loss(model_fn):
        return criterion(setup.task_losses(model_fn(setup.x_val), setup.y_val))

    optimizer = SGD(lr=lr, momentum=momentum)
    best = {"val": float("inf")}

    def objective(k: int):
        return fds_hypergradients(
            model, train_loss, val_loss, optimizer, setup.batch, hypers={"alpha": alpha}
        )

    def keep(k, result, history):
        if float(result.val_loss) < best["val"]:
            val, test = setup.evaluate(model, result.params)
            best.update(val=float(result.val_loss), test=float(criterion(test)))
            best.update(alpha=history.values["alpha"][-1].tolist(), val_losses=val.tolist())
            best.update(test_losses=test.tolist())

    history = tune(objective, {"alpha": alpha}, runs, outer=SignStep(fraction=0.1), callback=keep)
    return best, alpha, history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="fds_loss_weights.png", help="figure path")
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default="worst")
    parser.add_argument("--steps", type=int, default=300, help="inner steps T")
    parser.add_argument("--windows", type=int, default=4, help="windows of the α schedule")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args(argv)
    criterion = CRITERIA[args.criterion]
    setup = TwoTaskSetup(args.steps)

    start = time.perf_counter()
    grid = grid_search(setup, args.lr, args.momentum, criterion)
    grid_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fds, alpha, history = fds_search(setup, args.lr, args.momentum, criterion, args.windows, 11)
    fds_seconds = time.perf_counter() - start

    print(f"criterion: {args.criterion} of the two task losses; T = {args.steps}; 11 runs each")
    print(f"{'method':<34}{'val':>8}{'test':>8}{'seconds':>9}  weights α (right task)")
    for name, row, seconds in (
        ("grid of 11 fixed α", grid, grid_seconds),
        (f"FDS, {args.windows}-window α schedule", fds, fds_seconds),
    ):
        alphas = row["alpha"] if isinstance(row["alpha"], list) else [row["alpha"]]
        shown = ", ".join(f"{a:.3f}" for a in alphas)
        print(f"{name:<34}{row['val']:>8.4f}{row['test']:>8.4f}{seconds:>9.1f}  [{shown}]")
    print(f"task losses (val)  grid {grid['val_losses']}  FDS {fds['val_losses']}")
    print(f"task losses (test) grid {grid['test_losses']}  FDS {fds['test_losses']}")
    history.plot(args.out)
    print(f"figure written to {args.out}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # one thread: steadier timings on a shared machine
    raise SystemExit(main())
