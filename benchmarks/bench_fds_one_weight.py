"""Cost of one FDS run with a single tuned loss weight, in plain training runs.

The setup of ``examples/fds_loss_weights.py`` (MultiDigits, MLP 144-64-20, T = 300 SGD
steps with momentum, batch 64, ``moopt.Linear([1 − α, α])`` of the two task losses): CPU
time of one ``fds_hypergradients`` run (N = 1 tangent: α) against one plain
``torch.optim.SGD`` run with the same loss, for the two ways of writing the cross-entropy
(``F.cross_entropy``, and ``logsumexp(z) − z[y]``). Best and median of ``--repeat``
alternating pairs, one thread. It imports :func:`moopt.hypergrad.cross_entropy`, so it
runs only on a checkout that has it (not on one from before the single-column dual path).

Run: ``PYTHONPATH=. python benchmarks/bench_fds_one_weight.py``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import moopt
from moopt.data import multi_digits
from moopt.hypergrad import SGD, Schedule, cross_entropy, fds_hypergradients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train, _ = multi_digits(n_train=2500, n_test=10, seed=0)
    x, y = train.x, torch.stack([train.y_left, train.y_right], 1)
    indices = torch.randint(len(x), (args.steps, 64), generator=torch.Generator().manual_seed(0))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(144, 64), torch.nn.Tanh(), torch.nn.Linear(64, 20)
        )

    def losses(ce, logits, labels):
        return torch.stack([ce(logits[:, :10], labels[:, 0]), ce(logits[:, 10:], labels[:, 1])])

    def weighted(ls, alpha):
        return moopt.Linear(torch.stack([1 - alpha, alpha]))(ls)

    def plain(ce) -> None:
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for t in range(args.steps):
            optimizer.zero_grad()
            idx = indices[t]
            weighted(losses(ce, net(x[idx]), y[idx]), torch.tensor(0.5)).backward()
            optimizer.step()

    def fds(ce) -> float:
        def train_loss(model_fn, batch, hypers):
            return weighted(losses(ce, model_fn(x[batch]), y[batch]), hypers["alpha"])

        def val_loss(model_fn):
            return losses(ce, model_fn(x[:500]), y[:500]).max()

        alpha = Schedule(0.5, steps=args.steps, bounds=(0.0, 1.0))
        result = fds_hypergradients(
            model(),
            train_loss,
            val_loss,
            SGD(lr=0.1, momentum=0.9),
            indices.__getitem__,
            hypers={"alpha": alpha},
        )
        return float(result.hypergrads["alpha"])

    def cpu(fn) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start

    print(f"torch {torch.__version__}, 1 thread, T = {args.steps}, {args.repeat} pairs")
    print(f"{'cross-entropy':<22}{'plain s':>9}{'FDS s':>9}{'FDS / plain (median, min-max)':>32}")
    for name, ce in (
        ("F.cross_entropy", F.cross_entropy),
        ("logsumexp - gather", cross_entropy),
    ):
        plain(ce)
        fds(ce)
        pairs = [
            (cpu(lambda ce=ce: plain(ce)), cpu(lambda ce=ce: fds(ce))) for _ in range(args.repeat)
        ]
        ratios = [q / p for p, q in pairs]
        print(
            f"{name:<22}{min(p for p, _ in pairs):>9.3f}{min(q for _, q in pairs):>9.3f}"
            f"{statistics.median(ratios):>14.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
