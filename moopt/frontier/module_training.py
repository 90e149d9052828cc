"""``ModuleTraining``: a ready training function for small ``nn.Module`` models, with a
vmapped fast path that trains many runs of a sweep as one stacked model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from moopt._validation import check_positive
from moopt.frontier._batched import BatchedScalarization
from moopt.frontier._config import PointConfig
from moopt.frontier.run import Run
from moopt.frontier.training import cosine_schedule

Forward = Callable[..., torch.Tensor]


class ModuleTraining:
    """Train a small model with Adam for :func:`~moopt.frontier.trace`.

    Each run builds ``make_model()`` (after ``torch.manual_seed(run.seed)``), warm-starts
    it in ε chains, and takes ``steps`` Adam steps (``warm_steps`` when warm-started) with a
    cosine learning-rate decay on ``run.loss(losses(model, step))``; it returns
    ``eval_losses(model)`` (default: ``losses(model, steps)`` without gradients).

    ``losses(forward, step)`` gets a callable ``forward(*inputs)`` that runs the model and
    the step index (to pick a mini-batch), and returns the K task losses as a 1-D tensor.
    Use the same data for every run at a given step, and only operations that
    ``torch.func.vmap`` supports (no ``.item()``, no data-dependent Python branches): then
    :meth:`train_batch`, the fast path ``trace`` takes by default, trains the runs of a
    task as one model whose parameters are stacked along a leading run dimension
    (``torch.func.stack_module_state`` and ``vmap`` over ``functional_call``; Adam acts
    elementwise, so each run follows its own iterates). Pass ``batched=False`` to
    ``trace`` for models or losses that ``vmap`` cannot run.

    Args:
        make_model: builds a fresh model (parameters initialised from torch's RNG).
        losses: ``losses(forward, step) -> (K,) tensor`` (see above).
        n_objectives: K.
        steps, warm_steps: Adam steps of a cold and of a warm-started run.
        lr, final_lr_fraction: the learning-rate schedule.
        eval_losses: ``eval_losses(forward) -> K losses`` for the returned point (e.g. on
            validation data); default ``losses(forward, steps)``.
        name: identifies the setup in store keys (default: the functions' names).
    """

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        losses: Callable[[Forward, int], torch.Tensor],
        n_objectives: int,
        steps: int = 500,
        lr: float = 1e-2,
        warm_steps: int | None = None,
        final_lr_fraction: float = 0.01,
        eval_losses: Callable[[Forward], torch.Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        for label, fn in (("make_model", make_model), ("losses", losses)):
            if not callable(fn):
                raise TypeError(f"{label} must be callable; got {type(fn).__name__}")
        if eval_losses is not None and not callable(eval_losses):
            raise TypeError(f"eval_losses must be callable; got {type(eval_losses).__name__}")
        for label, value in (("n_objectives", n_objectives), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive int; got {value!r}")
        if n_objectives < 2:
            raise ValueError(f"n_objectives must be at least 2; got {n_objectives}")
        warm_steps = steps if warm_steps is None else warm_steps
        if isinstance(warm_steps, bool) or not isinstance(warm_steps, int) or warm_steps < 1:
            raise ValueError(f"warm_steps must be a positive int; got {warm_steps!r}")
        self.make_model = make_model
        self.losses = losses
        self.n_objectives = n_objectives
        self.steps = steps
        self.warm_steps = warm_steps
        self.lr = check_positive(lr, "lr")
        self.final_lr_fraction = check_positive(final_lr_fraction, "final_lr_fraction")
        self.eval_losses = eval_losses
        self.name = name

    def fingerprint(self) -> str:
        """Identifies the setup in store keys (names and optimiser settings)."""
        name = self.name or "/".join(
            getattr(fn, "__qualname__", type(fn).__name__)
            for fn in (self.make_model, self.losses, self.eval_losses)
            if fn is not None
        )
        return (
            f"ModuleTraining({name}, steps={self.steps}, warm_steps={self.warm_steps}, "
            f"lr={self.lr}, final_lr_fraction={self.final_lr_fraction})"
        )

    def _evaluate(self, forward: Forward) -> torch.Tensor:
        with torch.no_grad():
            if self.eval_losses is not None:
                return torch.as_tensor(self.eval_losses(forward)).detach()
            return self.losses(forward, self.steps).detach()

    def __call__(self, run: Run) -> torch.Tensor:
        """Train one run; return its final losses."""
        model = self.make_model()
        warm = run.warm_start(model)
        cosine_schedule(
            run.parameters(model),
            lambda step: run.loss(self.losses(model, step)),
            self.warm_steps if warm else self.steps,
            self.lr,
            self.final_lr_fraction,
        )
        return self._evaluate(model)

    def train_batch(
        self,
        configs: Sequence[PointConfig],
        init_states: Sequence[dict | None],
        damping: float,
        scales: Sequence[float] | None,
    ) -> list[tuple[torch.Tensor, list[float] | None, dict]]:
        """Train B runs of one method as one vmapped model (the protocol of ``trace``)."""
        from torch.func import functional_call, stack_module_state, vmap

        models = []
        for config, state in zip(configs, init_states):
            torch.manual_seed(config.seed)
            model = self.make_model()
            if state and state.get("modules"):
                model.load_state_dict(state["modules"][0])
            models.append(model)
        warm = bool(init_states) and all(s and s.get("modules") for s in init_states)
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")

        def one_run(p: dict, b: dict, step: int) -> torch.Tensor:
            return self.losses(lambda *inputs: functional_call(base, (p, b), inputs), step)

        batched_losses = vmap(one_run, in_dims=(0, 0, None))
        combine = BatchedScalarization(
            configs, damping, scales, dtype=next(iter(params.values())).dtype
        )
        combine.load_multipliers(init_states)
        cosine_schedule(
            [*params.values(), *combine.parameters()],
            lambda step: combine(batched_losses(params, buffers, step)).sum(),
            self.warm_steps if warm else self.steps,
            self.lr,
            self.final_lr_fraction,
        )
        out = []
        for b in range(len(configs)):
            state = {name: value[b].detach().clone() for name, value in params.items()}
            state.update({name: value[b].detach().clone() for name, value in buffers.items()})
            models[b].load_state_dict(state)
            out.append(
                (
                    self._evaluate(models[b]),
                    combine.raw_multipliers(b),
                    {"modules": [state], "combiner": combine.combiner_state(b)},
                )
            )
        return out
