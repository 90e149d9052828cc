"""FDS: non-greedy hypergradients by forward-mode differentiation through a whole run.

Micaelli & Storkey, "Gradient-based Hyperparameter Optimization Over Long Horizons"
(NeurIPS 2021). Hyperparameters are shared over contiguous windows of inner steps
(:class:`Schedule`); their exact hypergradients are carried forward through T inner steps
(a D×N tangent matrix pushed with ``torch.func.jvp`` under ``torch.func.vmap``), so memory
does not grow with T and any differentiable hyperparameter works: optimizer
hyperparameters and loss weights alike. Usage::

    import torch
    from moopt.hypergrad import SGD, Schedule, SignStep, fds_hypergradients, tune

    T = 1500
    lr = Schedule(0.0, steps=T, windows=10, bounds=(0.0, 1.0))      # 10-window schedule
    momentum = Schedule(0.0, steps=T, bounds=(0.0, 0.99))          # one shared value
    alpha = Schedule(0.5, steps=T, bounds=(0.0, 1.0))              # a loss weight
    optimizer = SGD(lr=lr, momentum=momentum, weight_decay=1e-4)   # numbers stay fixed

    def train_loss(model, batch, hypers):                          # model: functional call
        x, y = batch
        out = model(x)
        return task_loss(out, y) + hypers["alpha"] * penalty(out)

    def val_loss(model):
        return task_loss(model(x_val), y_val)

    result = fds_hypergradients(
        net, train_loss, val_loss, optimizer, batches=lambda t: get_batch(t),
        hypers={"alpha": alpha},
    )
    result.val_loss, result.hypergrads["lr"]         # shape (10,): one per window
    result.params                                    # trained parameters (net is untouched)

    schedules = {"lr": lr, "momentum": momentum, "alpha": alpha}
    history = tune(
        lambda k: fds_hypergradients(net, train_loss, val_loss, optimizer, batches,
                                     hypers={"alpha": alpha}),
        schedules, outer_steps=10, outer=SignStep(), checkpoint="fds.pt",
    )
    history.plot("schedules.png")

Layers:

* :mod:`~moopt.hypergrad.schedule` — :class:`Schedule` (windows, bounds, reparametrisation).
* :mod:`~moopt.hypergrad.optim` — pure inner optimizers :func:`sgd`, :func:`adam` and
  :class:`SGD`, :class:`Adam`, :class:`AdamW` (match ``torch.optim``).
* :mod:`~moopt.hypergrad.engine` — :func:`forward_unroll` on pure functions
  ``step(state, hypers_t, batch) -> state`` and ``val(state) -> scalar``.
* :mod:`~moopt.hypergrad.fds` — :func:`fds_hypergradients` for an ``nn.Module``.
* :mod:`~moopt.hypergrad.losses` — :func:`cross_entropy` without the slow forward-mode path.
* :mod:`~moopt.hypergrad.reverse` — reverse-mode baseline :func:`reverse_unroll`,
  :func:`reverse_hypergradients` (memory linear in T; for checks and short horizons).
* :mod:`~moopt.hypergrad.outer` — :class:`SignStep` (FDS Appendix G), :class:`AdamStep`,
  :class:`CuttingPlaneStep` (one scalar, few outer steps).
* :mod:`~moopt.hypergrad.tune` — :func:`tune`, :class:`History` (checkpoint/resume, plot).
* :mod:`~moopt.hypergrad.hd` — greedy online Hypergradient Descent (Baydin et al. 2018):
  :class:`SGDHD`, :class:`AdamHD` (the one-step-greedy baseline).
* :mod:`~moopt.hypergrad.noisy_quadratic` — Wu et al. (2018)'s noisy quadratic with exact
  expected-loss dynamics: :class:`NoisyQuadratic`, :func:`greedy_step`,
  :func:`greedy_schedule`.

Loss weights of a combiner: build it inside the loss from the traced weights
(``moopt.Linear(hypers["w"])(losses)``: combiners keep tensors that carry ``torch.func``
tangents instead of copying them), or build it once and pass the per-step weights with
``torch.func.functional_call``::

    combiner = moopt.Linear([1.0, 1.0])
    weights = Schedule(torch.tensor([1.0, 0.5]), steps=T, shape=(2,), bounds=(0.0, 1.0))
    # ... fds_hypergradients(..., hypers={"w": weights})

    def train_loss(model, batch, hypers):
        losses = torch.stack([loss_a(model, batch), loss_b(model, batch)])
        return torch.func.functional_call(combiner, {"weights": hypers["w"]}, (losses,))

MDMM constraints: put the model and the :class:`moopt.MDMM` in one module whose forward
returns the Lagrangian; the multipliers ascend in the inner loop as under ``torch.optim``,
and a constraint bound is tuned like a loss weight, by passing it to the MDMM with
``torch.func.functional_call(mdmm, {"constraints.0.bound": hypers["bound"]}, ...)``.

Performance: for small models the per-step cost is dominated by PyTorch's per-operation
dispatch through three ``torch.func`` levels; ``compile=True`` (``torch.compile`` of the
batched tangent step, compiled once and reused across outer steps while shapes stay the
same) removes most of it after a one-off compilation. On a CPU shared by several processes
set ``torch.set_num_threads`` to the cores you really have (oversubscribed threads slow the
batched tangents down by an order of magnitude). A single tuned value (N = 1) runs as
``torch.autograd.forward_ad`` dual tensors instead (about 2.3 plain training steps per
step on the digits MLP, see BENCHMARKS.md). In torch 2.13, ``F.cross_entropy``'s backward
has no forward-mode formula and runs a Python decomposition under FDS;
:func:`~moopt.hypergrad.losses.cross_entropy` computes the same value without it.
"""

from moopt.hypergrad.engine import (
    HypergradResult,
    HyperSpace,
    UnrollDiverged,
    UnrollError,
    forward_unroll,
)
from moopt.hypergrad.fds import fds_hypergradients
from moopt.hypergrad.hd import SGDHD, AdamHD
from moopt.hypergrad.losses import cross_entropy
from moopt.hypergrad.noisy_quadratic import NoisyQuadratic, greedy_schedule, greedy_step
from moopt.hypergrad.optim import SGD, Adam, AdamW, InnerOptimizer, adam, sgd
from moopt.hypergrad.outer import AdamStep, CuttingPlaneStep, OuterOptimizer, SignStep
from moopt.hypergrad.plotting import plot_schedules
from moopt.hypergrad.problem import InnerProblem, check_forward_mode_compatible
from moopt.hypergrad.reverse import reverse_hypergradients, reverse_unroll
from moopt.hypergrad.schedule import Schedule, window_index
from moopt.hypergrad.tune import History, tune

__all__ = [
    "SGD",
    "SGDHD",
    "Adam",
    "AdamHD",
    "AdamStep",
    "AdamW",
    "CuttingPlaneStep",
    "History",
    "HyperSpace",
    "HypergradResult",
    "InnerOptimizer",
    "InnerProblem",
    "NoisyQuadratic",
    "OuterOptimizer",
    "Schedule",
    "SignStep",
    "UnrollDiverged",
    "UnrollError",
    "adam",
    "check_forward_mode_compatible",
    "cross_entropy",
    "fds_hypergradients",
    "forward_unroll",
    "greedy_schedule",
    "greedy_step",
    "plot_schedules",
    "reverse_hypergradients",
    "reverse_unroll",
    "sgd",
    "tune",
    "window_index",
]
