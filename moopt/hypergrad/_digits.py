"""The digits MLP tuning problem shared by ``moopt tune``, ``examples/fds_digits.py`` and the
benchmarks: one setup, three tuners given the same number of full training runs.

* :func:`fds_search` — FDS (Micaelli & Storkey 2021): a W-window learning-rate schedule,
  one momentum and one weight decay, all from zero, tuned by the sign step with halving;
* :func:`hd_search` — greedy online Hypergradient Descent (Baydin et al. 2018,
  :class:`~moopt.hypergrad.hd.SGDHD`) over a grid of hypergradient learning rates;
* :func:`random_search` — Optuna's ``RandomSampler`` over a constant learning rate,
  momentum and weight decay.

Each tuner trains ``runs`` models of T inner steps and returns the one with the lowest
validation loss (cross-entropy on a validation split carved from the training data, see
:func:`moopt.data.digits_split`), reported with its test accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from moopt.data import Split, digits_split
from moopt.hypergrad.engine import HypergradResult
from moopt.hypergrad.fds import fds_hypergradients
from moopt.hypergrad.hd import SGDHD
from moopt.hypergrad.optim import SGD
from moopt.hypergrad.outer import SignStep
from moopt.hypergrad.schedule import Schedule, window_index
from moopt.hypergrad.tune import History, tune

#: FDS search ranges (value space); the sign step starts at a fraction of each.
LR_RANGE = (0.0, 1.0)
MOMENTUM_RANGE = (0.0, 0.99)
WEIGHT_DECAY_RANGE = (0.0, 0.01)


@dataclass
class DigitsSetup:
    """Data, minibatch order, model initialisation and horizon of one tuning problem.

    ``seed`` sets the split; ``training_seed`` (``seed`` unless given) sets the initial
    weights and the minibatch order. Every training run (whatever the tuner) starts from
    the same initial weights and sees the same sequence of minibatches, so runs differ only
    in their hyperparameters. :meth:`with_training_seed` keeps the split and draws other
    weights and batches, to retrain what a tuner found (:func:`retrained_scores`).
    """

    train: Split
    val: Split
    test: Split
    steps: int
    batch_size: int
    hidden: int
    seed: int
    training_seed: int
    batch_indices: torch.Tensor

    @classmethod
    def create(
        cls,
        steps: int = 1500,
        batch_size: int = 64,
        hidden: int = 64,
        seed: int = 0,
        training_seed: int | None = None,
    ) -> DigitsSetup:
        """Split the digits (60 % train, 20 % validation, 20 % test) and draw the batches."""
        for name, value in (("steps", steps), ("batch_size", batch_size), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        train, val, test = digits_split(val_fraction=0.2, test_fraction=0.2, seed=seed)
        training_seed = seed if training_seed is None else training_seed
        indices = _draw_batches(len(train.y), steps, batch_size, training_seed)
        return cls(train, val, test, steps, batch_size, hidden, seed, training_seed, indices)

    def with_training_seed(self, training_seed: int) -> DigitsSetup:
        """The same split and horizon; initial weights and minibatches from ``training_seed``."""
        indices = _draw_batches(len(self.train.y), self.steps, self.batch_size, training_seed)
        return dataclasses.replace(self, training_seed=training_seed, batch_indices=indices)

    def model(self) -> nn.Module:
        """A fresh MLP 64 → hidden → hidden → 10 (tanh), initialised from ``training_seed``."""
        with torch.random.fork_rng():
            torch.manual_seed(self.training_seed)
            return nn.Sequential(
                nn.Linear(64, self.hidden),
                nn.Tanh(),
                nn.Linear(self.hidden, self.hidden),
                nn.Tanh(),
                nn.Linear(self.hidden, 10),
            )

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch of inner step ``t``."""
        idx = self.batch_indices[t]
        return self.train.x[idx], self.train.y[idx]

    @staticmethod
    def train_loss(
        model_fn: Callable[..., torch.Tensor], batch: Any, hypers: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Cross-entropy on the minibatch."""
        x, y = batch
        return F.cross_entropy(model_fn(x), y)

    def val_loss(self, model_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Cross-entropy on the whole validation split."""
        return F.cross_entropy(model_fn(self.val.x), self.val.y)

    def evaluate(
        self, model: nn.Module, params: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[float, float, float]:
        """``(validation loss, test accuracy, test loss)`` of ``model`` (or of ``params``)."""
        with torch.no_grad():

            def run(x: torch.Tensor) -> torch.Tensor:
                return model(x) if params is None else functional_call(model, dict(params), (x,))

            val = float(F.cross_entropy(run(self.val.x), self.val.y))
            logits = run(self.test.x)
            accuracy = float((logits.argmax(1) == self.test.y).float().mean())
            test_loss = float(F.cross_entropy(logits, self.test.y))
        return val, accuracy, test_loss

    def train_sgd(
        self, lr: torch.Tensor | float, momentum: float, weight_decay: float
    ) -> nn.Module:
        """A plain ``torch.optim.SGD`` run; ``lr`` is a number or one value per step."""
        model = self.model()
        lrs = torch.as_tensor(lr, dtype=torch.float64).expand(self.steps)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=float(lrs[0]), momentum=momentum, weight_decay=weight_decay
        )
        for t in range(self.steps):
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[t])
            optimizer.zero_grad()
            x, y = self.batch(t)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model


def _draw_batches(n_train: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n_train, (steps, batch_size), generator=generator)


@dataclass
class SearchOutcome:
    """What a tuner found: the hyperparameters of its best run (lowest validation loss).

    ``retrain`` trains those hyperparameters again on a given setup (another training seed:
    :func:`retrained_scores`).
    """

    method: str
    runs: int
    val_loss: float
    test_accuracy: float
    test_loss: float
    hyperparameters: dict[str, Any]
    seconds: float
    val_losses: list[float] = field(default_factory=list)
    history: History | None = None
    retrain: Callable[[DigitsSetup], nn.Module] | None = None


def retrained_scores(
    outcome: SearchOutcome, setup: DigitsSetup, training_seeds: Iterable[int]
) -> list[tuple[float, float]]:
    """``(validation loss, test accuracy)`` of ``outcome``'s hyperparameters trained again
    from each training seed.

    A tuner picks its run on one initial weight draw and one minibatch order; the scores
    of that single run mix the quality of the hyperparameters with the luck of that draw.
    Retraining on the same split from other seeds separates the two.
    """
    if outcome.retrain is None:
        raise ValueError(f"{outcome.method} has no retrain function")
    scores = []
    for training_seed in training_seeds:
        model = outcome.retrain(setup.with_training_seed(training_seed))
        val, accuracy, _ = setup.evaluate(model)
        scores.append((val, accuracy))
    return scores


def fds_search(
    setup: DigitsSetup,
    runs: int = 10,
    windows: int = 10,
    progress: bool = False,
    checkpoint: str | None = None,
    fraction: float = 0.2,
) -> SearchOutcome:
    """FDS from zero: ``windows`` learning rates, one momentum, one weight decay.

    ``runs`` outer steps (each one forward-mode training run of T steps); the sign step
    with halving (FDS Appendix G) starts at ``fraction`` of each search range. The reported run
    is the one with the lowest validation loss among the ``runs`` inner runs.
    """
    steps = setup.steps
    schedules = {
        "lr": Schedule(0.0, steps=steps, windows=windows, bounds=LR_RANGE),
        "momentum": Schedule(0.0, steps=steps, bounds=MOMENTUM_RANGE),
        "weight_decay": Schedule(0.0, steps=steps, bounds=WEIGHT_DECAY_RANGE),
    }
    optimizer = SGD(**schedules)
    model = setup.model()
    best: dict[str, Any] = {"val": math.inf}

    def objective(k: int) -> HypergradResult:
        return fds_hypergradients(
            model, setup.train_loss, setup.val_loss, optimizer, setup.batch, steps=steps
        )

    def keep_best(k: int, result: HypergradResult, history: History) -> None:
        if float(result.val_loss) < best["val"]:
            best.update(val=float(result.val_loss), step=k, params=result.params)

    start = time.perf_counter()
    history = tune(
        objective,
        schedules,
        runs,
        outer=SignStep(fraction=fraction),
        checkpoint=checkpoint,
        progress=progress,
        callback=keep_best,
    )
    seconds = time.perf_counter() - start
    step = history.best_step()
    values = {name: history.values[name][step] for name in schedules}

    def retrain(target: DigitsSetup) -> nn.Module:
        return _train_schedule(target, values)

    if best.get("step") != step:  # the best run happened before a resume: train it again
        best["params"] = {name: p.detach() for name, p in retrain(setup).named_parameters()}
    _, accuracy, test_loss = setup.evaluate(model, best["params"])
    return SearchOutcome(
        method=f"FDS ({windows}-window lr, momentum, weight decay)",
        runs=runs,
        val_loss=history.val_losses[step],
        test_accuracy=accuracy,
        test_loss=test_loss,
        hyperparameters={
            "lr": [round(float(v), 4) for v in values["lr"]],
            "momentum": round(float(values["momentum"][0]), 4),
            "weight_decay": round(float(values["weight_decay"][0]), 6),
        },
        seconds=seconds,
        val_losses=list(history.val_losses),
        history=history,
        retrain=retrain,
    )


def _train_schedule(setup: DigitsSetup, values: Mapping[str, torch.Tensor]) -> nn.Module:
    """A plain run with FDS's window ``values`` of lr, momentum and weight decay."""
    lr_values = values["lr"].reshape(-1)
    per_step = lr_values[window_index(setup.steps, lr_values.numel())]
    return setup.train_sgd(
        per_step,
        float(values["momentum"].reshape(-1)[0]),
        float(values["weight_decay"].reshape(-1)[0]),
    )


def hd_search(
    setup: DigitsSetup,
    runs: int = 10,
    momentum: float = 0.9,
    hyper_lrs: list[float] | None = None,
) -> SearchOutcome:
    """Greedy Hypergradient Descent from lr = 0, one run per hypergradient learning rate.

    The hypergradient learning rates default to ``runs`` values log-spaced in
    ``[1e-4, 1e-1]``; momentum is fixed (HD adapts only the learning rate) and there is no
    weight decay.
    """
    if hyper_lrs is None:
        hyper_lrs = torch.logspace(-4, -1, runs, dtype=torch.float64).tolist()
    start = time.perf_counter()
    best: dict[str, Any] = {"val": math.inf}
    losses = []
    for hyper_lr in hyper_lrs:
        model, final_lr = _train_hd(setup, hyper_lr, momentum)
        val, accuracy, test_loss = setup.evaluate(model)
        val = val if math.isfinite(val) else math.inf
        losses.append(val)
        if val < best["val"]:
            best.update(val=val, accuracy=accuracy, test_loss=test_loss, hyper_lr=hyper_lr)
            best["final_lr"] = final_lr
    return SearchOutcome(
        method=f"greedy HD (SGD, momentum {momentum})",
        runs=len(hyper_lrs),
        val_loss=best["val"],
        test_accuracy=best.get("accuracy", math.nan),
        test_loss=best.get("test_loss", math.nan),
        hyperparameters={
            "hyper_lr": best.get("hyper_lr"),
            "final_lr": round(float(best.get("final_lr", math.nan)), 4),
        },
        seconds=time.perf_counter() - start,
        val_losses=losses,
        retrain=(lambda target: _train_hd(target, best["hyper_lr"], momentum)[0])
        if "hyper_lr" in best
        else None,
    )


def _train_hd(setup: DigitsSetup, hyper_lr: float, momentum: float) -> tuple[nn.Module, float]:
    """One SGDHD run from lr = 0; returns the model and the learning rate it ended at."""
    model = setup.model()
    optimizer = SGDHD(model.parameters(), lr=0.0, hyper_lr=hyper_lr, momentum=momentum)
    for t in range(setup.steps):
        optimizer.zero_grad()
        x, y = setup.batch(t)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, float(optimizer.param_groups[0]["lr"])


def random_search(setup: DigitsSetup, runs: int = 10, seed: int = 0) -> SearchOutcome:
    """Optuna ``RandomSampler``: lr log-uniform in [1e-3, 1], momentum uniform in
    [0, 0.99], weight decay log-uniform in [1e-6, 1e-2]; constant over the run."""
    try:
        import optuna
    except ImportError as error:
        raise ImportError("random search needs optuna: pip install 'moopt[bench]'") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scores: dict[int, tuple[float, float]] = {}

    def objective(trial: Any) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        model = setup.train_sgd(lr, momentum, weight_decay)
        val, accuracy, test_loss = setup.evaluate(model)
        scores[trial.number] = (accuracy, test_loss)
        return val if math.isfinite(val) else 1e9

    start = time.perf_counter()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(objective, n_trials=runs)
    best = study.best_trial
    found = dict(best.params)
    return SearchOutcome(
        method="random search (Optuna RandomSampler)",
        runs=runs,
        val_loss=float(best.value),
        test_accuracy=scores[best.number][0],
        test_loss=scores[best.number][1],
        hyperparameters={k: round(v, 6) for k, v in best.params.items()},
        seconds=time.perf_counter() - start,
        val_losses=[float(t.value) for t in study.trials],
        retrain=lambda target: target.train_sgd(
            found["lr"], found["momentum"], found["weight_decay"]
        ),
    )


def format_table(outcomes: list[SearchOutcome]) -> str:
    """One line per tuner: validation loss, test loss and accuracy, seconds, hyperparameters."""
    header = f"{'method':<44}{'val loss':>9}{'test loss':>10}{'test acc':>9}{'seconds':>8}"
    lines = [header + "  hyperparameters"]
    for o in outcomes:
        scores = f"{o.val_loss:>9.4f}{o.test_loss:>10.4f}{o.test_accuracy:>9.4f}{o.seconds:>8.0f}"
        lines.append(f"{o.method:<44}{scores}  {o.hyperparameters}")
    return "\n".join(lines)
