"""The training function moopt builds for a ``moopt.problems`` problem, and its optimiser loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from moopt._validation import check_positive
from moopt.frontier._batched import BatchedScalarization
from moopt.frontier._config import PointConfig
from moopt.frontier.run import Run

OPTIMIZERS = ("adam", "sgd")


def cosine_decay(
    optimizer: torch.optim.Optimizer, steps: int, final_lr_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that decays every group's learning rate from its initial value to
    ``final_lr_fraction`` of it along a half cosine over ``steps`` steps:
    ``lr_t = lr_0 · (f + (1 − f) · (1 + cos(π t / steps)) / 2)``, ``f = final_lr_fraction``."""
    floor = final_lr_fraction

    def factor(step: int) -> float:
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_schedule(
    trainable: list[torch.Tensor],
    objective: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    final_lr_fraction: float,
    optimizer: str = "adam",
) -> None:
    """``steps`` steps of Adam (or SGD) on ``objective(step)``, the learning rate decaying
    from ``lr`` to ``lr * final_lr_fraction`` along a half cosine."""
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(trainable, lr=lr)
    schedule = cosine_decay(opt, steps, final_lr_fraction)
    for step in range(steps):
        opt.zero_grad()
        objective(step).backward()
        opt.step()
        schedule.step()


class _Theta(nn.Module):
    """The decision vector of a toy problem as a module, so runs can warm-start it."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(init.detach().clone())


class ProblemTraining:
    """Train the parameters of a toy problem with plain ``torch.optim``.

    A picklable training function for :func:`~moopt.frontier.trace`: the decision vector
    ``θ`` starts at ``problem.sample_init(1, generator)`` (the generator seeded with the
    run's seed), or at the chain neighbour's ``θ`` for warm-started ε runs, and takes
    ``steps`` steps (``warm_steps`` for a warm-started run, which starts one ε step from
    its answer) of Adam (or SGD) with a cosine learning-rate decay from ``lr`` (``warm_lr``
    for a warm-started run) to ``final_lr_fraction`` of it on
    ``run.loss(problem.losses(θ))``. The MDMM multipliers
    share the optimizer (their gradient is negated, so they ascend). The decay matters for
    precision: with a constant Adam step the iterates keep oscillating by about ``lr``.
    Cold runs (the anchors and the weighted runs) have to travel from a random start,
    often far (``θ → ±∞`` where a sigmoid maps it to a box, as on ``Circle``'s angle), and
    an Adam step moves each coordinate by at most about the learning rate; a warm run
    starts next to its answer and needs precision more than reach: hence the separate
    ``warm_lr``.

    Args:
        problem: an object with ``n_params``, ``n_objectives``, ``losses(theta)`` and
            ``sample_init(n, generator)`` (every class of ``moopt.problems``).
        steps: optimizer steps per run.
        warm_steps: optimizer steps of a warm-started run (default: ``steps``).
        lr: initial learning rate of a run from the random start.
        warm_lr: initial learning rate of a warm-started run (default: ``lr``).
        optimizer: ``"adam"`` or ``"sgd"``.
        final_lr_fraction: the learning rate at the last step, as a fraction of ``lr``.
    """

    def __init__(
        self,
        problem: object,
        steps: int = 500,
        warm_steps: int | None = None,
        lr: float = 0.05,
        warm_lr: float | None = None,
        optimizer: str = "adam",
        final_lr_fraction: float = 0.01,
    ) -> None:
        for attribute in ("n_objectives", "losses", "sample_init"):
            if not hasattr(problem, attribute):
                raise TypeError(
                    f"problem must have {attribute!r} like the classes of moopt.problems; "
                    f"got {type(problem).__name__}"
                )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int; got {steps!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}; got {optimizer!r}")
        self.problem = problem
        self.steps = steps
        if warm_steps is None:
            warm_steps = steps
        if isinstance(warm_steps, bool) or not isinstance(warm_steps, int) or warm_steps < 1:
            raise ValueError(f"warm_steps must be a positive int; got {warm_steps!r}")
        self.warm_steps = warm_steps
        self.lr = check_positive(lr, "lr")
        self.warm_lr = self.lr if warm_lr is None else check_positive(warm_lr, "warm_lr")
        self.optimizer = optimizer
        self.final_lr_fraction = check_positive(final_lr_fraction, "final_lr_fraction")
        self.n_objectives = int(problem.n_objectives)

    def __repr__(self) -> str:
        warm_lr = "" if self.warm_lr == self.lr else f"warm_lr={self.warm_lr}, "
        return (
            f"ProblemTraining({self.problem!r}, steps={self.steps}, "
            f"warm_steps={self.warm_steps}, lr={self.lr}, {warm_lr}"
            f"optimizer={self.optimizer!r}, final_lr_fraction={self.final_lr_fraction})"
        )

    def fingerprint(self) -> str:
        """Identifies the training setup in store keys (problem, steps, optimizer)."""
        return repr(self)

    def reference_front(self, n_points: int) -> np.ndarray | None:
        """The problem's analytic Pareto front, when it has one."""
        if not hasattr(self.problem, "pareto_front"):
            return None
        return np.asarray(self.problem.pareto_front(n_points), dtype=float)

    def _init(self, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(seed))
        return torch.as_tensor(self.problem.sample_init(1, generator)).reshape(-1)

    def __call__(self, run: Run) -> torch.Tensor:
        """Train one run and return the final losses ``problem.losses(θ)``."""
        params = _Theta(self._init(run.seed))
        warm = run.warm_start(params)
        cosine_schedule(
            run.parameters(params),
            lambda step: run.loss(self.problem.losses(params.theta)),
            self.warm_steps if warm else self.steps,
            self.warm_lr if warm else self.lr,
            self.final_lr_fraction,
            self.optimizer,
        )
        with torch.no_grad():
            return self.problem.losses(params.theta)

    def train_batch(
        self,
        configs: Sequence[PointConfig],
        init_states: Sequence[dict | None],
        damping: float,
        scales: Sequence[float] | None,
    ) -> list[tuple[torch.Tensor, list[float] | None, dict]]:
        """Train B runs of one method at once: the batched fast path of ``trace``.

        Same initialisation, optimizer, schedule and objective as calling the instance on
        each run, with the B decision vectors stacked into one ``(B, n_params)`` parameter
        (``problem.losses`` is batched) and the B scalarizations computed row-wise by
        ``BatchedScalarization``; the sum over runs is differentiated once. The batch
        takes ``warm_steps`` and ``warm_lr`` when every run in it is warm-started, else
        ``steps`` and ``lr`` (runs one by one differ only in a resumed sweep whose chains
        stopped at different runs).

        Returns:
            Per run: the final losses, the raw MDMM multipliers (``None`` unless ε) and
            the trained state in the layout ``Run.final_state`` uses.
        """
        rows = []
        warm = bool(init_states) and all(s and s.get("modules") for s in init_states)
        for config, state in zip(configs, init_states):
            if state and state.get("modules"):
                rows.append(state["modules"][0]["theta"].reshape(-1))
            else:
                rows.append(self._init(config.seed))
        theta = nn.Parameter(torch.stack(rows).detach().clone())
        combine = BatchedScalarization(configs, damping, scales, dtype=theta.dtype)
        combine.load_multipliers(init_states)
        cosine_schedule(
            [theta, *combine.parameters()],
            lambda step: combine(self.problem.losses(theta)).sum(),
            self.warm_steps if warm else self.steps,
            self.warm_lr if warm else self.lr,
            self.final_lr_fraction,
            self.optimizer,
        )
        with torch.no_grad():
            final = self.problem.losses(theta)
        return [
            (
                final[b],
                combine.raw_multipliers(b),
                {
                    "modules": [{"theta": theta[b].detach().clone()}],
                    "combiner": combine.combiner_state(b),
                },
            )
            for b in range(len(configs))
        ]
