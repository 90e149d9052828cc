"""The outer loop: hypergradient, outer update, record, checkpoint — for a number of outer steps.

:func:`tune` repeats ``result = objective(k)`` (one full inner run with its hypergradients,
e.g. a call of :func:`fds_hypergradients`), records the hyperparameter values used, the
validation loss and the hypergradients in a :class:`History`, updates the schedules with an
outer optimizer (the FDS :class:`SignStep` by default), and, given a checkpoint file,
saves everything needed to resume after every outer step. A resumed run continues exactly
where it stopped: the schedules, the outer optimizer's state, the history and the global
random number generators (torch, CUDA, numpy, random) are restored, so that an objective
that is deterministic given ``k`` and the global RNGs gives the same trajectory.

An outer step can land where the unroll diverges: the inner run blows up, or it stays
finite but is so sensitive to the hyperparameters that its tangents overflow (training
at the edge of stability; the larger the learning rate and the longer the horizon, the
likelier). Such a run raises :class:`~moopt.hypergrad.engine.UnrollDiverged`, and by
default ``tune`` then steps back: it returns to the values of the best finished run so
far (lowest validation loss) and repeats the outer update made from them with every step
size halved (a backtracking line search on the outer step). Going back to the best run
rather than the last one matters near the edge of stability, where the last finished
run may itself sit next to the cliff. The diverged run counts as an outer step
(it cost a run) and is recorded with a NaN validation loss.

A run whose tangents grow exponentially no longer diverges (the engine rescales them,
see :mod:`moopt.hypergrad.engine`): it finishes, and its validation loss counts (it may be
the best run). But tangents that grow exponentially say that the run is chaotic (a
positive finite-time Lyapunov exponent): its hypergradient reflects an exponentially
sensitive trajectory, not the smooth trend of the validation loss. On the digits MLP such
hypergradients reach e^100 and more, and their signs change when every learning rate
moves by a relative 1e-4, while a stable run's keep their signs and magnitudes
(``benchmarks/bench_fds_chaos.py``). So by default ``tune`` does not update from a run
whose tangents grew past ``exp(max_log_tangent)`` (default ≈ e^88.7, float32's largest
number: where float32 tangents used to overflow and the run to stop), nor from a ±inf
hypergradient for a rule that needs values (:class:`AdamStep`,
:class:`CuttingPlaneStep`): it records the run in ``History.rejected`` and steps back as
after a divergence.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moopt.hypergrad.engine import HypergradResult, UnrollDiverged
from moopt.hypergrad.outer import OuterOptimizer, SignStep
from moopt.hypergrad.schedule import Schedule

Objective = Callable[[int], HypergradResult]

#: log of float32's largest number: the default ``max_log_tangent`` of :func:`tune`.
LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)


@dataclass
class History:
    """What happened at every outer step.

    Attributes:
        values: ``{name: [window values used at outer step k, shape (W, *shape)]}``.
        val_losses: validation loss of the inner run at each outer step.
        hypergrads: ``{name: [hypergradient of raw at outer step k]}``.
        final_values: ``{name: window values after the last outer update}``.
        window_of: ``{name: window index of every inner step}`` (to draw schedules).
        diverged: ``{outer step: message}`` for the steps whose unroll diverged (their
            validation loss and hypergradients are recorded as NaN).
        rejected: ``{outer step: reason}`` for the finished runs that ``tune`` did not
            update from (it stepped back instead): a chaotic run (exploding tangents) or a
            ±inf hypergradient that the outer rule cannot use. Their validation losses
            count (one may be the best run).
        log_tangent_peaks: at each outer step, the log of the largest tangent entry of
            the run (the maximum of ``HypergradResult.log_tangent_peaks``; NaN when the
            result has none or the run diverged). On the digits MLP, chaotic runs reach
            e^90-e^870 and stable ones e^1-e^8; runs in between occur, good and bad.
    """

    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    val_losses: list[float] = field(default_factory=list)
    hypergrads: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    final_values: dict[str, torch.Tensor] = field(default_factory=dict)
    window_of: dict[str, torch.Tensor] = field(default_factory=dict)
    diverged: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    log_tangent_peaks: list[float] = field(default_factory=list)

    @property
    def outer_steps(self) -> int:
        """Number of recorded outer steps."""
        return len(self.val_losses)

    def best_step(self) -> int:
        """Outer step with the lowest validation loss (diverged steps left out)."""
        if len(self.diverged) == len(self.val_losses):
            raise ValueError("the history holds no finished outer step")
        return int(np.nanargmin(self.val_losses))

    def record(self, schedules: Mapping[str, Schedule], result: HypergradResult) -> None:
        """Append the values of ``schedules`` (before their update) and ``result``."""
        hypergrads = {name: result.hypergrads[name] for name in schedules}
        peaks = result.log_tangent_peaks
        peak = math.nan if peaks is None else max(float(peaks[n].max()) for n in schedules)
        self._append(schedules, hypergrads, float(result.val_loss), peak)

    def record_diverged(self, schedules: Mapping[str, Schedule], error: Exception) -> None:
        """Append the values of ``schedules`` whose unroll diverged, with NaN results."""
        self.diverged[self.outer_steps] = str(error)
        nan = {name: torch.full_like(s.raw, math.nan) for name, s in schedules.items()}
        self._append(schedules, nan, math.nan, math.nan)

    def _append(
        self,
        schedules: Mapping[str, Schedule],
        hypergrads: Mapping[str, torch.Tensor],
        val_loss: float,
        log_tangent_peak: float,
    ) -> None:
        for name, schedule in schedules.items():
            self.values.setdefault(name, []).append(schedule.values().cpu().clone())
            self.hypergrads.setdefault(name, []).append(hypergrads[name].cpu().clone())
            self.window_of[name] = schedule.window_of.clone()
        self.val_losses.append(val_loss)
        self.log_tangent_peaks.append(log_tangent_peak)

    def state_dict(self) -> dict[str, Any]:
        """Plain containers of tensors and floats (for ``torch.save``)."""
        return {
            "values": self.values,
            "val_losses": self.val_losses,
            "hypergrads": self.hypergrads,
            "final_values": self.final_values,
            "window_of": self.window_of,
            "diverged": self.diverged,
            "rejected": self.rejected,
            "log_tangent_peaks": self.log_tangent_peaks,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> History:
        """Rebuild a :class:`History` from :meth:`state_dict`."""
        return cls(
            values={k: list(v) for k, v in state["values"].items()},
            val_losses=list(state["val_losses"]),
            hypergrads={k: list(v) for k, v in state["hypergrads"].items()},
            final_values=dict(state["final_values"]),
            window_of=dict(state["window_of"]),
            diverged={int(k): str(v) for k, v in state.get("diverged", {}).items()},
            rejected={int(k): str(v) for k, v in state.get("rejected", {}).items()},
            log_tangent_peaks=list(
                state.get("log_tangent_peaks", [math.nan] * len(state["val_losses"]))
            ),
        )

    def plot(self, path: str | os.PathLike | None = None, names: list[str] | None = None) -> Any:
        """Plot the schedules (see :func:`moopt.hypergrad.plotting.plot_schedules`); returns
        the matplotlib figure."""
        from moopt.hypergrad.plotting import plot_schedules

        return plot_schedules(self, path=path, names=names)


def _rng_state() -> dict[str, Any]:
    """The global RNG states, as tensors and plain containers (``weights_only`` loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "the progress bar needs tqdm: pip install 'moopt[examples]' (or progress=False)"
        ) from error
    return tqdm(total=total, initial=initial, desc="FDS outer steps")


def tune(
    objective: Objective,
    schedules: Mapping[str, Schedule],
    outer_steps: int,
    *,
    outer: OuterOptimizer | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, HypergradResult, History], None] | None = None,
    on_diverge: str = "backtrack",
    max_log_tangent: float | None = LOG_FLOAT32_MAX,
) -> History:
    """Run ``outer_steps`` outer steps of hypergradient-based tuning.

    Each outer step ``k``: ``result = objective(k)`` (a full inner run; it must return the
    hypergradients of every schedule in ``schedules``, e.g. ``fds_hypergradients(...,
    hypers=...)``), record it, then ``outer.step(schedules, result.hypergrads,
    val_loss=...)``, then save
    the checkpoint, then ``callback(k, result, history)``.

    Args:
        objective: ``objective(k) -> HypergradResult`` for the current schedule values.
        schedules: ``{name: Schedule}`` to update (modified in place).
        outer_steps: total number of outer steps (including those already checkpointed).
        outer: the outer update (default: :class:`SignStep()`, the FDS rule).
        checkpoint: file to save to after every outer step; if it exists, the run resumes
            from it (the schedules and ``outer`` are overwritten with the saved state).
        progress: show a tqdm progress bar over the outer steps.
        callback: called after each outer step whose run finished (e.g. to log); not
            called for a diverged one.
        on_diverge: what to do when an inner run raises
            :class:`~moopt.hypergrad.engine.UnrollDiverged`: ``"backtrack"`` (default: go
            back to the values of the best finished run and redo the update made from
            them with the outer step sizes halved, see the module docstring) or
            ``"raise"``. A run
            that diverges at the very first values is always raised: there is nothing
            to go back to.
        max_log_tangent: a run whose tangents grew past ``exp(this)`` in magnitude
            (``HypergradResult.log_tangent_peaks``; for results without them, the
            hypergradient) is taken as chaotic and not updated from (see the module
            docstring). Default ``log`` of float32's largest number (≈ 88.7): where
            float32 tangents used to overflow and the run to stop. ``None`` (or ``inf``):
            update from every hypergradient the outer rule accepts. NaN and values
            ``<= 0`` are refused (``ValueError``).

    Returns:
        the :class:`History` of all outer steps (resumed ones included).
    """
    if isinstance(outer_steps, bool) or not isinstance(outer_steps, int) or outer_steps < 1:
        raise ValueError(f"outer_steps must be a positive int; got {outer_steps!r}")
    if not callable(objective):
        raise TypeError(f"objective must be callable; got {type(objective).__name__}")
    if not isinstance(schedules, Mapping) or not schedules:
        raise ValueError("schedules must be a non-empty mapping name -> Schedule")
    for name, schedule in schedules.items():
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedules[{name!r}] must be a Schedule; got {type(schedule).__name__}"
            )
    outer = SignStep() if outer is None else outer
    if not isinstance(outer, OuterOptimizer):
        raise TypeError(f"outer must be an OuterOptimizer; got {type(outer).__name__}")
    if on_diverge not in ("backtrack", "raise"):
        raise ValueError(f"on_diverge must be 'backtrack' or 'raise'; got {on_diverge!r}")
    if max_log_tangent is not None and (
        isinstance(max_log_tangent, bool) or not isinstance(max_log_tangent, (int, float))
    ):
        raise TypeError(f"max_log_tangent must be a number or None; got {max_log_tangent!r}")
    if max_log_tangent is not None and not max_log_tangent > 0:
        raise ValueError(
            "max_log_tangent must be positive (the log of a tangent magnitude, e.g. 88.7) "
            f"or None; got {max_log_tangent!r}"
        )
    outer.validate(schedules)
    path = None if checkpoint is None else Path(checkpoint)
    history = History()
    start = 0
    best_good: dict[str, Any] | None = None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        if sorted(saved["schedules"]) != sorted(schedules):
            raise ValueError(
                f"checkpoint {str(path)!r} holds schedules {sorted(saved['schedules'])}; "
                f"this run tunes {sorted(schedules)}"
            )
        for name, schedule in schedules.items():
            schedule.load_state_dict(saved["schedules"][name])
        outer.load_state_dict(saved["outer"])
        history = History.from_state_dict(saved["history"])
        start = int(saved["next_step"])
        best_good = saved.get("best_good")
        _set_rng_state(saved["rng"])
    bar = _progress(outer_steps, min(start, outer_steps), progress)
    try:
        for k in range(start, outer_steps):
            try:
                result = objective(k)
            except UnrollDiverged as error:
                if on_diverge == "raise" or best_good is None:
                    raise
                history.record_diverged(schedules, error)
                result = None
                _step_back(schedules, outer, best_good)
            else:
                if not isinstance(result, HypergradResult):
                    raise TypeError(
                        f"objective must return a HypergradResult; got {type(result).__name__}"
                    )
                history.record(schedules, result)
                reason = _rejection(result, schedules, outer, max_log_tangent)
                val_loss = float(result.val_loss)
                if reason is None:
                    if best_good is None or val_loss < best_good["val_loss"]:
                        best_good = _snapshot(schedules, outer, result)
                    outer.step(schedules, result.hypergrads, val_loss=val_loss)
                elif best_good is None:
                    raise ValueError(
                        f"cannot update from the first run ({reason}) and there is no earlier "
                        "run to step back to: start from smaller values"
                    )
                else:
                    history.rejected[k] = reason
                    _step_back(schedules, outer, best_good)
            history.final_values = {n: s.values().cpu().clone() for n, s in schedules.items()}
            if path is not None:
                _save(
                    path,
                    {
                        "next_step": k + 1,
                        "schedules": {n: s.state_dict() for n, s in schedules.items()},
                        "outer": outer.state_dict(),
                        "history": history.state_dict(),
                        "rng": _rng_state(),
                        "best_good": best_good,
                    },
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(val_loss=f"{history.val_losses[-1]:.4g}")
            if callback is not None and result is not None:
                callback(k, result, history)
    finally:
        if bar is not None:
            bar.close()
    return history


def _rejection(
    result: HypergradResult,
    schedules: Mapping[str, Schedule],
    outer: OuterOptimizer,
    max_log_tangent: float | None,
) -> str | None:
    """Why ``tune`` should not update from ``result`` (``None``: it may)."""
    grads = [result.hypergrads[name].detach() for name in schedules]
    if not outer.sign_only and not all(bool(torch.isfinite(g).all()) for g in grads):
        return f"hypergradient ±inf, which {type(outer).__name__} cannot use"
    if max_log_tangent is None:
        return None
    logs, what = result.log_tangent_peaks, "tangents"
    if logs is None:  # not a forward-mode result: judge by the hypergradient instead
        logs = result.log_abs_hypergrads
        what = "hypergradient"
    if logs is None:
        logs = {name: g.double().abs().log() for name, g in zip(schedules, grads)}
    largest = max(float(logs[name].max()) for name in schedules)
    if largest > max_log_tangent:
        return f"chaotic run: {what} grew to e^{largest:.1f} (> e^{max_log_tangent:.1f})"
    return None


def _snapshot(
    schedules: Mapping[str, Schedule], outer: OuterOptimizer, result: HypergradResult
) -> dict[str, Any]:
    """What :func:`_step_back` needs to redo the outer update that follows ``result``: the
    raw values and the outer optimizer's state before it, and its inputs."""
    return {
        "raw": {name: s.raw.detach().cpu().clone() for name, s in schedules.items()},
        "outer": outer.state_dict(),
        "hypergrads": {name: result.hypergrads[name].detach().cpu().clone() for name in schedules},
        "val_loss": float(result.val_loss),
    }


def _step_back(
    schedules: Mapping[str, Schedule], outer: OuterOptimizer, snapshot: dict[str, Any]
) -> None:
    """Return to the values of ``snapshot`` and redo its outer update with half the step
    sizes; ``snapshot`` keeps the halved optimizer, so a second divergence halves again."""
    for name, schedule in schedules.items():
        schedule.raw = snapshot["raw"][name].to(schedule.raw).clone()
    outer.load_state_dict(snapshot["outer"])
    outer.shrink(0.5)
    snapshot["outer"] = outer.state_dict()
    hypergrads = {name: g.to(schedules[name].raw) for name, g in snapshot["hypergrads"].items()}
    outer.step(schedules, hypergrads, val_loss=snapshot["val_loss"])
