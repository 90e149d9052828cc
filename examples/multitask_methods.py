"""Several multi-task methods on the same two-task MultiDigits model, losses plotted.

MultiDigits overlaps two digits from scikit-learn's embedded digits on a 12×12 canvas (no
download). Task 1 classifies the left digit (cross-entropy, about 2.3 at the start);
task 2 regresses the value of the right digit, 0 to 9, as a number (squared error, about
28 at the start), so the plain sum is dominated by task 2 at first. The same model
initialisation, data order and optimizer are trained once per method:

* ``sum`` — ``moopt.Linear([1, 1])``: the plain ``L1 + L2`` baseline;
* ``GradNorm`` — ``moopt.GradNorm`` (Chen et al. 2018) balancing the gradient norms at
  the weight matrix of the last shared layer, ``alpha = 1.5``; its task weights train
  with the model (Adam, learning rate 0.025 for the weights);
* ``PCGrad``, ``MGDA``, ``UPGrad``, ``IMTL-G`` — gradient-level combiners from
  ``moopt.gradsurgery``, on the exact per-task gradients of all parameters;
* ``UPGrad features=`` — UPGrad on the gradients of the trunk's output only, then one
  backward through the trunk (the ``features=`` mode).

Every method is a one-line change of ``combiner.backward(losses)``. The script prints the
final test losses and accuracies and writes a figure of the two test losses against each
other, epoch by epoch, one curve per method (lower-left is better for both tasks).

    MPLBACKEND=Agg PYTHONPATH=. python examples/multitask_methods.py --out multitask.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from moopt import IMTLG, MGDA, Combiner, GradNorm, Linear, PCGrad, UPGrad
from moopt.data import MultiSplit, multi_digits


class TwoDigitNet(nn.Module):
    """Shared trunk 144 → 128 → 128 (ReLU), a 10-way head for the left digit and a
    scalar head for the value of the right digit."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.left = nn.Linear(128, 10)
        self.right = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.left(features), self.right(features)[:, 0], features


def task_losses(
    net: TwoDigitNet, data: MultiSplit, index: torch.Tensor | slice
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``[cross-entropy of the left digit, squared error of the right digit's value]`` and
    the trunk's output."""
    left, right, features = net(data.x[index])
    losses = [
        nn.functional.cross_entropy(left, data.y_left[index]),
        nn.functional.mse_loss(right, data.y_right[index].to(right.dtype)),
    ]
    return losses, features


METHODS: dict[str, Callable[[TwoDigitNet], Combiner]] = {
    "sum": lambda net: Linear([1.0, 1.0]),
    "GradNorm": lambda net: GradNorm(n_tasks=2, shared=net.trunk[2].weight, alpha=1.5),
    "PCGrad": lambda net: PCGrad(generator=torch.Generator().manual_seed(0)),
    "MGDA": lambda net: MGDA(),
    "UPGrad": lambda net: UPGrad(),
    "IMTL-G": lambda net: IMTLG(),
    "UPGrad features=": lambda net: UPGrad(),
}
FEATURE_MODE = {"UPGrad features="}


@dataclass
class History:
    """Test losses after every epoch, final test accuracies (the right digit's value
    rounded to the nearest integer) and the training time."""

    losses: list[tuple[float, float]]
    accuracy: tuple[float, float]
    seconds: float


def evaluate(net: TwoDigitNet, data: MultiSplit) -> tuple[tuple[float, float], tuple[float, float]]:
    with torch.no_grad():
        left, right, _ = net(data.x)
        losses = tuple(float(loss) for loss in task_losses(net, data, slice(None))[0])
        accuracy = (
            float((left.argmax(1) == data.y_left).float().mean()),
            float((right.round() == data.y_right).float().mean()),
        )
    return losses, accuracy


def train(
    method: str, train_set: MultiSplit, test_set: MultiSplit, epochs: int, seed: int
) -> History:
    """Train a fresh model (same initialisation for every method) with ``method``."""
    torch.manual_seed(seed)
    net = TwoDigitNet()
    combiner = METHODS[method](net)
    groups = [{"params": list(net.parameters())}]
    if list(combiner.parameters()):
        groups.append({"params": list(combiner.parameters()), "lr": 0.025})
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    history = [evaluate(net, test_set)[0]]
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(train_set.x), generator=order).split(128):
            optimizer.zero_grad()
            losses, features = task_losses(net, train_set, batch)
            if method in FEATURE_MODE:
                combiner.backward(losses, params=net.parameters(), features=features)
            else:
                combiner.backward(losses, params=net.parameters())
            optimizer.step()
        history.append(evaluate(net, test_set)[0])
    seconds = time.perf_counter() - start
    return History(history, evaluate(net, test_set)[1], seconds)


def plot(results: dict[str, History], path: str) -> None:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the figure needs matplotlib: pip install 'moopt[examples]'") from error
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for name, history in results.items():
        left, right = zip(*history.losses)
        axes.plot(left, right, marker="o", markersize=3, label=name)
    axes.annotate("start", history.losses[0], fontsize=8)
    axes.set_xlabel("test cross-entropy, left digit")
    axes.set_ylabel("test squared error, right digit's value")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    axes.set_title("MultiDigits: task losses during training")
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, History]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default="multitask_methods.png")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # a model this small gains nothing from more
    train_set, test_set = multi_digits(n_train=args.n_train, n_test=1000, seed=args.seed)
    results = {m: train(m, train_set, test_set, args.epochs, args.seed) for m in args.methods}
    print("| method | test loss left | test loss right | accuracy left | accuracy right | s |")
    print("|---|---|---|---|---|---|")
    for name, history in results.items():
        (left, right), (acc_left, acc_right) = history.losses[-1], history.accuracy
        print(
            f"| {name} | {left:.3f} | {right:.3f} | {acc_left:.3f} | {acc_right:.3f} "
            f"| {history.seconds:.1f} |"
        )
    plot(results, args.out)
    print(f"figure written to {args.out}")
    return results


if __name__ == "__main__":
    main()
