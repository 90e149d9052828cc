"""Are exploding hypergradients informative? FDS at a stable and at a chaotic point.

On the digits MLP (seed 2, T = 1500), run FDS at two hyperparameter settings met by the
outer loop of ``bench_fds_digits.py --seed 2``: a stable one, and one near the edge of
stability whose float32 tangents used to overflow. Each is also run with every learning
rate moved by a relative ±1e-4. The table shows the validation loss, the signs of the
hypergradients (what the sign step uses), ``log|hypergradient|`` and the log of the
largest tangent entry reached during the run (``HypergradResult.log_tangent_peaks``).

At the stable point the three runs agree; at the chaotic point the validation loss, the
signs and the magnitudes (e^100 and more) change with a 1e-4 perturbation: the
hypergradient reflects an exponentially sensitive trajectory, not the trend of the
validation loss, which is why :func:`moopt.hypergrad.tune` does not update from such a run
(``max_log_tangent``).

Run: ``PYTHONPATH=. python benchmarks/bench_fds_chaos.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moopt.hypergrad import SGD, Schedule, fds_hypergradients  # noqa: E402
from moopt.hypergrad._digits import (  # noqa: E402
    LR_RANGE,
    MOMENTUM_RANGE,
    WEIGHT_DECAY_RANGE,
    DigitsSetup,
)

POINTS = {
    "stable": ([0.0] + [0.6] * 9, 0.396, 0.001),
    "chaotic": ([0.15, 0.6, 1.0, 0.3, 0.525, 0.9, 0.6, 0.525, 0.6, 0.6], 0.2475, 0.0),
}


def run(setup: DigitsSetup, lrs: list[float], momentum: float, weight_decay: float):
    steps = setup.steps
    schedules = {
        "lr": Schedule(torch.tensor(lrs), steps=steps, windows=len(lrs), bounds=LR_RANGE),
        "momentum": Schedule(momentum, steps=steps, bounds=MOMENTUM_RANGE),
        "weight_decay": Schedule(weight_decay, steps=steps, bounds=WEIGHT_DECAY_RANGE),
    }
    return fds_hypergradients(
        setup.model(), setup.train_loss, setup.val_loss, SGD(**schedules), setup.batch
    )


def main() -> None:
    torch.set_num_threads(1)
    setup = DigitsSetup.create(steps=1500, seed=2)
    print("point      lr scale  val loss  signs (10 lr windows | momentum | wd)    ", end="")
    print("max log|g|  max log tangent")
    for name, (lrs, momentum, weight_decay) in POINTS.items():
        for scale in (1.0, 1.0 + 1e-4, 1.0 - 1e-4):
            scaled = [min(v * scale, LR_RANGE[1]) for v in lrs]
            result = run(setup, scaled, momentum, weight_decay)
            signs = " ".join(
                "".join("+" if g > 0 else "-" if g < 0 else "0" for g in grad.reshape(-1))
                for grad in result.hypergrads.values()
            )
            log_g = max(float(v.max()) for v in result.log_abs_hypergrads.values())
            log_z = max(float(v.max()) for v in result.log_tangent_peaks.values())
            print(
                f"{name:<10} {scale:<9.4f} {float(result.val_loss):8.4f}  {signs:<40}"
                f"{log_g:10.1f}  {log_z:15.1f}"
            )


if __name__ == "__main__":
    main()
