"""Adaptive loss weighting on a two-task MultiDigits model.

One shared MLP trunk with two heads is trained on MultiDigits (two digits overlapped on a
12×12 canvas, from scikit-learn's embedded digits, no download): task 1 classifies the
left digit (cross-entropy, about 2.3 at the start), task 2 reconstructs the canvas
(mean squared error, about 0.2 at the start), so the two losses live on different scales.
The same model, data order and optimizer are trained once per weighting method:

* ``sum`` — plain ``L1 + L2`` (``moopt.Linear([1, 1])``);
* ``uncertainty`` — ``moopt.UncertaintyWeighting`` (learned log-variances);
* ``RLW``, ``DWA``, ``FAMO``, ``GeometricMean``, ``ScaleInvariant`` — ``moopt.adaptive``.

It prints a table of the final test losses (and the left-digit test accuracy) and writes
a figure of the two test losses against each other, epoch by epoch, for every method.

    MPLBACKEND=Agg PYTHONPATH=. python examples/adaptive_weighting.py --epochs 20 --out adaptive.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from moopt import DWA, FAMO, RLW, GeometricMean, Linear, LossCombiner, ScaleInvariant
from moopt import UncertaintyWeighting as Uncertainty
from moopt.data import MultiSplit, multi_digits

METHODS: dict[str, Callable[[], LossCombiner]] = {
    "sum": lambda: Linear([1.0, 1.0]),
    "uncertainty": lambda: Uncertainty(2, kinds=["classification", "regression"]),
    "RLW": lambda: RLW(n_tasks=2, generator=0),
    "DWA": lambda: DWA(n_tasks=2, temperature=2.0),
    "FAMO": lambda: FAMO(n_tasks=2),
    "GeometricMean": lambda: GeometricMean(n_tasks=2),
    "ScaleInvariant": lambda: ScaleInvariant(n_tasks=2),
}


class TwoTaskNet(nn.Module):
    """Shared trunk 144 → 128 → 128, a 10-way classifier head and a 144-pixel decoder head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.classify = nn.Linear(128, 10)
        self.reconstruct = nn.Sequential(nn.Linear(128, 144), nn.Sigmoid())

    def task_losses(self, data: MultiSplit, index: torch.Tensor | slice) -> torch.Tensor:
        """``[cross-entropy of the left digit, reconstruction MSE]`` on ``data[index]``."""
        x = data.x[index]
        features = self.trunk(x)
        classification = nn.functional.cross_entropy(self.classify(features), data.y_left[index])
        reconstruction = nn.functional.mse_loss(self.reconstruct(features), x)
        return torch.stack([classification, reconstruction])

    @torch.no_grad()
    def left_accuracy(self, data: MultiSplit) -> float:
        predicted = self.classify(self.trunk(data.x)).argmax(dim=1)
        return float((predicted == data.y_left).float().mean())


@dataclass
class RunResult:
    """Test losses after every epoch (``[epochs + 1, 2]``), accuracy and wall time."""

    test_losses: torch.Tensor
    left_accuracy: float
    seconds: float


def train(
    combiner: LossCombiner,
    train_set: MultiSplit,
    test_set: MultiSplit,
    epochs: int,
    batch_size: int,
    seed: int,
) -> RunResult:
    """Train a fresh :class:`TwoTaskNet` with ``combiner`` (same init and batches for all)."""
    torch.manual_seed(seed)
    model = TwoTaskNet()
    trainable = [p for p in combiner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([*model.parameters(), *trainable], lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    n_train = train_set.x.shape[0]
    history = []
    start = time.perf_counter()
    with torch.no_grad():
        history.append(model.task_losses(test_set, slice(None)))
    for _ in range(epochs):
        for batch in torch.randperm(n_train, generator=order).split(batch_size):
            optimizer.zero_grad()
            combiner.backward(model.task_losses(train_set, batch))
            optimizer.step()
            if isinstance(combiner, FAMO):
                with torch.no_grad():
                    combiner.update(model.task_losses(train_set, batch))
        if isinstance(combiner, DWA):
            combiner.end_epoch()
        with torch.no_grad():
            history.append(model.task_losses(test_set, slice(None)))
    seconds = time.perf_counter() - start
    return RunResult(torch.stack(history), model.left_accuracy(test_set), seconds)


def plot(results: dict[str, RunResult], path: str) -> None:
    """Test loss of task 2 against task 1, one line per method, start and end marked."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 5))
    for name, result in results.items():
        losses = result.test_losses.numpy()
        (line,) = axes.plot(losses[:, 0], losses[:, 1], marker=".", label=name)
        axes.plot(losses[-1, 0], losses[-1, 1], marker="o", color=line.get_color())
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("test cross-entropy, left digit (task 1)")
    axes.set_ylabel("test reconstruction MSE (task 2)")
    axes.set_title("MultiDigits: adaptive loss weighting, one point per epoch")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default="adaptive_weighting.png", help="figure path ('' for none)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    train_set, test_set = multi_digits(n_train=args.n_train, n_test=1000, seed=args.seed)
    results = {}
    for name in args.methods:
        results[name] = train(
            METHODS[name](), train_set, test_set, args.epochs, args.batch_size, args.seed
        )

    print(f"MultiDigits, {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}")
    print(f"{'method':<16}{'test CE (1)':>12}{'test MSE (2)':>14}{'left acc':>10}{'time s':>8}")
    for name, result in results.items():
        ce, mse = result.test_losses[-1].tolist()
        print(
            f"{name:<16}{ce:>12.4f}{mse:>14.5f}{result.left_accuracy:>10.3f}{result.seconds:>8.1f}"
        )
    if args.out:
        plot(results, args.out)
        print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
