"""FDS hypergradients of an ``nn.Module`` training run (Micaelli & Storkey 2021).

:func:`fds_hypergradients` trains the model for T inner steps with a functional inner
optimizer whose hyperparameters are shared over windows (:class:`Schedule`), and returns
the validation loss at the end together with its exact derivative with respect to every
shared hyperparameter, by forward-mode differentiation through the whole run
(:func:`moopt.hypergrad.engine.forward_unroll`). The model itself is not modified: the
trained parameters are in ``result.params``.

Deviations from the official FDS code (github.com/polo5/FDS):

* no hand-derived recursions: the tangents of all hyperparameters are pushed through the
  whole inner step (loss, gradient, optimizer update) by batched forward-mode AD, so any
  differentiable hyperparameter works (SGD and Adam hyperparameters, loss weights...) and
  the result is the exact derivative of the computation that is run;
* no clamping of Hessian-vector products, gradients or hypergradients (the reference clips
  them for stability); tangents that grow exponentially are instead carried as a mantissa
  times a power of two (exact), and NaN/inf in the run stops it with an error naming the
  step;
* windows need not divide the horizon (sizes then differ by at most one, see
  :class:`~moopt.hypergrad.schedule.Schedule`);
* the reference forms ``H·Z`` one column at a time (one double-backward product per
  column on the step's gradient graph); here all N columns go through one vmapped jvp
  per step (``tangents="columns"`` runs one jvp of the whole step per column, which
  costs more than the reference's loop; see :mod:`moopt.hypergrad.engine`); a single
  hyperparameter (N = 1) is carried as ``torch.autograd.forward_ad`` dual tensors after
  the first step, with the gradient of each step by ``torch.autograd``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from moopt.hypergrad.engine import Batches, HypergradResult, forward_unroll
from moopt.hypergrad.optim import InnerOptimizer
from moopt.hypergrad.problem import InnerProblem, TrainLoss, ValLoss
from moopt.hypergrad.schedule import Schedule


def fds_hypergradients(
    model: nn.Module,
    train_loss: TrainLoss,
    val_loss: ValLoss,
    optimizer: InnerOptimizer,
    batches: Batches,
    *,
    hypers: Mapping[str, Schedule] | None = None,
    steps: int | None = None,
    tangents: str = "batched",
    check_finite: bool = True,
    check_every: int | None = None,
    compile: bool = False,
    progress: bool = False,
    rescale_tangents: bool = True,
) -> HypergradResult:
    """Validation loss after T inner steps and its FDS hypergradients.

    Args:
        model: the ``nn.Module`` to train (parameters with ``requires_grad`` are trained
            from their current values; buffers and frozen parameters stay constant). Its
            device is the device of the computation.
        train_loss: ``train_loss(model_fn, batch, hypers) -> scalar``; ``model_fn(*args)``
            runs the model with the current inner parameters, ``hypers`` holds the values
            of ``hypers`` (below) at this step, e.g. ``moopt.Linear(hypers["w"])(losses)``.
        val_loss: ``val_loss(model_fn) -> scalar``, evaluated after the last step with the
            model in eval mode (dropout off; every module's mode is restored afterwards).
        optimizer: :class:`SGD`, :class:`Adam` or :class:`AdamW` with fixed numbers and
            :class:`Schedule` hyperparameters.
        batches: a callable ``t -> batch``, a sequence of at least T batches, or an
            iterable yielding them; each batch is passed to ``train_loss`` unchanged.
        hypers: extra tuned hyperparameters entering the training loss (loss weights...).
        steps: the horizon T (default: the schedules' ``steps``; all must agree).
        tangents: ``"batched"`` (default) or ``"columns"`` (see :func:`forward_unroll`).
        check_finite: stop with an ``UnrollError`` naming the step on NaN/inf.
        check_every: steps between finiteness checks (host syncs); default 1 on CPU, 100
            on accelerators (see :func:`forward_unroll`).
        compile: run the inner steps after the first through ``torch.compile`` (see
            :func:`forward_unroll`): a one-off compilation, then much less overhead per step.
        progress: tqdm progress bar over the inner steps.
        rescale_tangents: carry every tangent column as a mantissa times a power of two,
            so that tangents growing exponentially (near the edge of stability) do not
            overflow; exact (see :mod:`moopt.hypergrad.engine`). ``False``: plain
            tangents, which stop the run with ``UnrollDiverged`` when they overflow.

    Returns:
        :class:`HypergradResult`: ``val_loss``, ``hypergrads`` (by schedule name, shaped
        like each ``Schedule.raw``), ``value_hypergrads``, the final ``state``
        (``result.params`` are the trained parameters) and ``train_losses``.

    Raises:
        ValueError: schedule length differs from the horizon, a BatchNorm in training
            mode, too few batches.
        TypeError: ``rescale_tangents`` is not a bool.
        UnrollError: an inner step fails (the message names the step and the module) or
            produces NaN/inf.
    """
    problem = InnerProblem(model, train_loss, val_loss, optimizer, hypers)
    state = problem.initial_state()
    step, val = problem.make_step()
    problem.start_tracking()
    try:
        result = forward_unroll(
            step,
            val,
            state,
            problem.schedules,
            batches,
            steps=steps,
            has_aux=True,
            tangents=tangents,
            check_finite=check_finite,
            check_every=check_every,
            compile=compile,
            progress=progress,
            rescale_tangents=rescale_tangents,
            on_error=problem.describe_error,
        )
    finally:
        problem.stop_tracking()
    _warn_unused(problem.hypers, result)
    result.state = problem.finish(result.state)
    return result


def _warn_unused(hypers: Mapping[str, Schedule], result: HypergradResult) -> None:
    """Warn about loss hyperparameters whose tangent stayed exactly zero for the whole run:
    the training loss ignored them or cut them off the derivative, and their hypergradient
    is exactly zero (an optimizer's own hyperparameters cannot be misused that way)."""
    peaks = result.log_tangent_peaks or {}
    for name in hypers:
        if name in peaks and bool(torch.isneginf(peaks[name]).all()):
            warnings.warn(
                f"hypers[{name!r}] did not change the inner run (its tangent stayed exactly "
                "zero), so its hypergradient is 0: train_loss does not use it, or cuts it "
                "off the derivative (float(), .item(), .detach(), .numpy()). Use it as a "
                "tensor, e.g. hypers[name] * loss. (It can also happen legitimately: every "
                "learning rate 0 and no momentum, or a loss whose gradient is zero.)",
                UserWarning,
                stacklevel=3,
            )
