"""Reverse-mode hypergradients through the unrolled inner loop (the baseline for checks).

The same pure inner step as FDS is unrolled for T steps inside ``torch.func.grad`` with
respect to the flat vector of raw hyperparameters, so reverse-mode autograd records (and
keeps) every step: memory grows linearly with T (Maclaurin et al. 2015 reduce it with
exact reversible arithmetic; we do not). Use it for short horizons and to check FDS: both
compute the same derivative of the same computation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import grad

from moopt.hypergrad.engine import (
    Batches,
    HypergradResult,
    HyperSpace,
    StepFn,
    ValFn,
    batch_source,
    check_state,
    make_result,
)
from moopt.hypergrad.optim import InnerOptimizer
from moopt.hypergrad.problem import InnerProblem, TrainLoss, ValLoss
from moopt.hypergrad.schedule import Schedule


def reverse_unroll(
    step: StepFn,
    val: ValFn,
    state: Any,
    schedules: Mapping[str, Schedule],
    batches: Batches,
    *,
    steps: int | None = None,
    has_aux: bool = False,
) -> HypergradResult:
    """Hypergradients of ``val(state_T)`` by reverse mode through T pure inner steps.

    Same arguments and result as :func:`moopt.hypergrad.engine.forward_unroll` (without
    the forward-mode options); the whole unroll is kept in memory.
    """
    space = HyperSpace(schedules, steps)
    horizon = space.steps
    first = check_state(state)[0][0]
    h = space.flat(first.dtype, first.device)
    get_batch = batch_source(batches, horizon)
    data = [get_batch(t) for t in range(horizon)]

    def objective(hh: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, Any, Any]]:
        current = state
        losses = []
        for t in range(horizon):
            out = step(current, space.values_at(hh, t), data[t])
            if has_aux:
                current, loss = out
                losses.append(loss)
            else:
                current = out
        value = val(current)
        stacked = torch.stack(losses) if losses else None
        return value, (value, current, stacked)

    flat_grad, (value, final, losses) = grad(objective, has_aux=True)(h)
    return make_result(space, value, flat_grad, final, None if losses is None else losses.detach())


def reverse_hypergradients(
    model: nn.Module,
    train_loss: TrainLoss,
    val_loss: ValLoss,
    optimizer: InnerOptimizer,
    batches: Batches,
    *,
    hypers: Mapping[str, Schedule] | None = None,
    steps: int | None = None,
) -> HypergradResult:
    """Reverse-mode counterpart of :func:`moopt.hypergrad.fds_hypergradients` (same
    arguments and result); memory grows linearly with the horizon."""
    problem = InnerProblem(model, train_loss, val_loss, optimizer, hypers)
    state = problem.initial_state()
    step, val = problem.make_step()
    result = reverse_unroll(step, val, state, problem.schedules, batches, steps=steps, has_aux=True)
    result.state = problem.finish(result.state)
    return result
