"""The forward-mode engine of FDS on pure functions.

Given a pure inner step ``step(state, hypers_t, batch) -> state`` and a validation
criterion ``val(state) -> scalar``, :func:`forward_unroll` runs T inner steps and returns
``val(state_T)`` with its exact derivative with respect to every shared hyperparameter
(every entry of every :class:`Schedule`'s ``raw`` tensor: N scalars in all).

Method (Micaelli & Storkey 2021, Section 3, forward-mode differentiation): with
``Z_t = d state_t / d h`` (a D×N matrix, h the N raw hyperparameters),

    Z_{t+1} = ∂step/∂state · Z_t + ∂step/∂h,       Z_0 = 0,
    d val(state_T) / d h = ∇val(state_T)ᵀ · Z_T.

Instead of the paper's hand-derived recursions (and its column-by-column Hessian-vector
products), every step pushes all N tangent columns through the step at once:
``torch.func.vmap`` over the N columns of ``torch.func.jvp(step)`` (forward-mode AD, the
step's own gradient computed inside by reverse mode: forward-over-reverse). The primal
computation runs once per step; only the tangents are batched. Memory is O(D·N): the state
and its N tangents, independent of T (nothing is stored per step but the training loss).

A tangent column stays exactly zero until the first step that uses its hyperparameter
(the windows of a schedule start one after another), so each step pushes only the columns
already started — on average about half of a per-window schedule's columns — as the
official code does.

``tangents="columns"`` pushes one column at a time (a separate jvp of the whole step per
column, the primal recomputed each time), for comparisons only. It costs more than the
reference code's column loop, which builds the step's gradient graph once and then takes
one double-backward Hessian-vector product per column: on the digits MLP at N = 12 (one
CPU thread) that loop is several times faster than ``"columns"`` and about as fast as
``"batched"``.

Tangents that grow without overflowing (``rescale_tangents=True``, the default). The
tangents obey an affine recursion, ``Z_{t+1} = A_t Z_t + B_t``, and near the edge of
stability (large learning rates, long horizons) ``A_t`` expands them exponentially, so
that they overflow (past ~3e38 in float32) although the inner run itself stays finite.
Every column k is therefore kept as a mantissa ``Z̃_k = Z_k / 2^{e_k}`` with an integer
exponent ``e_k``: whenever a column's largest entry passes ``2^{m/4}`` (m the dtype's
largest binary exponent: 2^32 in float32, 2^256 in float64; looked at every 8 steps and
after the last, which leaves room for growth by e^66 in float32 in between, while one
SGD step multiplies the tangents by about ``1 + lr·λ_max``) it is divided by a power of
two that brings it near 1 and ``e_k`` grows by the same amount (and shrinks back, down to
``e_k = 0``, if the column later falls below ``2^{-m/4}``). By linearity,
``Z̃_{t+1} = A_t Z̃_t + B_t·2^{-e_k}``: the same jvp, with the hyperparameter's seed
scaled by ``2^{-e_k}``. Multiplying by a power of two is exact in floating point (apart
from entries that underflow, more than ~2^{-126+32} below the column's largest one in
float32), so the rescaled unroll computes the same numbers up to that factor, and the
hypergradient is ``(∇val·Z̃_k)·2^{e_k}``, formed in float64. Its magnitude can exceed
even float64 (chaotic runs): the result then holds ±inf with the exact sign, and
``HypergradResult.log_abs_hypergrads`` always holds ``log|hypergradient|`` (finite).

A single hyperparameter (N = 1, one shared value) needs no batching: the eager unroll then
carries the one tangent column as dual tensors (``torch.autograd.forward_ad``) through the
same step instead of calling ``torch.func.jvp`` at every step after the first, which
skips the functorch wrapping of the step's inputs and outputs (with the module-level step
of :class:`~moopt.hypergrad.problem.InnerProblem`, which then takes its gradient with
``torch.autograd``, about 1.5-2x less time per step on a small CPU MLP; the result is the
same derivative).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import forward_ad
from torch.func import jvp, vmap
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from moopt.hypergrad.schedule import Schedule

State = Any
Batches = Iterable[Any] | Sequence[Any] | Callable[[int], Any]
StepFn = Callable[[State, dict[str, torch.Tensor], Any], Any]
ValFn = Callable[[State], torch.Tensor]

TANGENT_MODES = ("batched", "columns")


class UnrollError(RuntimeError):
    """An inner step failed or produced NaN/inf during the unroll; the message names the step."""


class UnrollDiverged(UnrollError):
    """NaN/inf appeared during the unroll: in the training loss, in the state (the inner
    run diverged), only in the tangents (the run is finite but so sensitive to the
    hyperparameters that its derivatives overflow, as at the edge of stability; with the
    default ``rescale_tangents=True`` only if they overflow within the 8 steps between two
    looks at their size, or turn NaN), or in the validation loss of the final state.

    Raised by the finiteness check of :func:`forward_unroll`. Unlike other failures it
    says that these hyperparameter values are too far, not that the code is wrong, so
    :func:`~moopt.hypergrad.tune` can step back from them.

    Attributes:
        step: the first inner step with a non-finite value (the horizon T for
            ``"validation"``).
        where: ``"loss"``, ``"state"``, ``"tangents"`` or ``"validation"``.
    """

    def __init__(self, message: str, step: int, where: str) -> None:
        super().__init__(message)
        self.step = step
        self.where = where


class HyperSpace:
    """The N raw hyperparameters of several schedules, packed into one flat vector ``h``.

    ``values_at(h, t)`` gives the per-step values ``{name: transform(raw[window_of(t)])}``
    as differentiable functions of ``h``; ``split(g)`` cuts a length-N vector back into
    one tensor of shape ``(W, *shape)`` per schedule.
    """

    def __init__(self, schedules: Mapping[str, Schedule], steps: int | None = None) -> None:
        if not isinstance(schedules, Mapping):
            raise TypeError(
                f"schedules must be a mapping name -> Schedule; got {type(schedules).__name__}"
            )
        if not schedules:
            raise ValueError("no hyperparameter to differentiate: give at least one Schedule")
        for name, schedule in schedules.items():
            if not isinstance(schedule, Schedule):
                raise TypeError(
                    f"hyperparameter {name!r} must be a Schedule; got {type(schedule).__name__}"
                    " (an integer or other non-float hyperparameter cannot be differentiated)"
                )
        horizons = {name: s.steps for name, s in schedules.items()}
        if steps is None:
            steps = next(iter(horizons.values()))
        mismatched = {name: t for name, t in horizons.items() if t != steps}
        if mismatched:
            raise ValueError(
                f"schedule length does not match the horizon of {steps} inner steps: "
                f"{mismatched} (build every Schedule with steps={steps})"
            )
        self.steps = steps
        self.names = list(schedules)
        self.schedules = dict(schedules)
        self.offsets: list[tuple[int, int]] = []
        start = 0
        for schedule in self.schedules.values():
            self.offsets.append((start, start + schedule.numel))
            start += schedule.numel
        self.numel = start
        self._windows = [s.window_of.tolist() for s in self.schedules.values()]
        self.window_table = torch.stack([s.window_of for s in self.schedules.values()], dim=1)

    def flat(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The current raw values of every schedule as one vector ``h`` of length N."""
        parts = [s.raw.detach().reshape(-1) for s in self.schedules.values()]
        return torch.cat(parts).to(dtype=dtype, device=device)

    def values_at(self, h: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
        """Differentiable per-step values of every hyperparameter at inner step ``t``."""
        out: dict[str, torch.Tensor] = {}
        for (name, schedule), (start, stop), windows in zip(
            self.schedules.items(), self.offsets, self._windows
        ):
            raw = h[start:stop].view(schedule.windows, *schedule.shape)[windows[t]]
            out[name] = schedule.values_from_raw(raw)
        return out

    def first_use(self) -> torch.Tensor:
        """For each of the N raw entries, the first inner step that reads it (int64, N)."""
        parts = []
        for schedule in self.schedules.values():
            starts = torch.searchsorted(schedule.window_of, torch.arange(schedule.windows))
            parts.append(starts.repeat_interleave(math.prod(schedule.shape)))
        return torch.cat(parts)

    def values_in(self, h: torch.Tensor, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like :meth:`values_at`, with the window of every schedule given as a tensor
        (a row of ``window_table``), so that a compiled step does not depend on ``t``."""
        out: dict[str, torch.Tensor] = {}
        for k, ((name, schedule), (start, stop)) in enumerate(
            zip(self.schedules.items(), self.offsets)
        ):
            table = h[start:stop].view(schedule.windows, *schedule.shape)
            raw = table.index_select(0, windows[k : k + 1]).squeeze(0)
            out[name] = schedule.values_from_raw(raw)
        return out

    def split(self, flat: torch.Tensor, keep_dtype: bool = False) -> dict[str, torch.Tensor]:
        """Cut a length-N vector into ``{name: tensor of shape (W, *shape)}``, on each
        schedule's device and in its dtype (``keep_dtype=True``: in ``flat``'s dtype)."""
        return {
            name: flat[start:stop]
            .reshape(schedule.windows, *schedule.shape)
            .to(dtype=flat.dtype if keep_dtype else schedule.raw.dtype)
            .to(schedule.raw.device)
            for (name, schedule), (start, stop) in zip(self.schedules.items(), self.offsets)
        }


@dataclass
class HypergradResult:
    """What an unroll returns.

    Attributes:
        val_loss: ``val(state_T)`` (0-d tensor, detached).
        hypergrads: ``{name: d val / d raw}``, each of shape ``(W, *shape)`` like the
            schedule's ``raw`` (what outer updates use; equal to the derivative with
            respect to the values for the identity transform).
        value_hypergrads: ``{name: d val / d value}`` by the chain rule
            (``hypergrads / (d value / d raw)``).
        state: the final inner state (detached): for the module-level API a dict with
            ``"params"``, ``"buffers"`` and ``"optimizer"``.
        train_losses: training loss at every inner step, shape ``(T,)``, when the step
            reports it (else ``None``).
        log_abs_hypergrads: ``{name: log|d val / d raw|}`` in float64 (``-inf`` where
            the hypergradient is zero), finite even where ``hypergrads`` overflowed its
            dtype to ±inf (see the module docstring, rescaled tangents).
        log_tangent_peaks: ``{name: log max_t max_i |d state_t[i] / d raw|}`` in float64:
            how large each hyperparameter's tangent grew during the unroll (looked at
            every 8 inner steps and after the last; forward mode only, else ``None``).
            Exponential growth (hundreds of nats) marks a chaotic inner run (see
            :func:`~moopt.hypergrad.tune`).
    """

    val_loss: torch.Tensor
    hypergrads: dict[str, torch.Tensor]
    value_hypergrads: dict[str, torch.Tensor]
    state: Any
    train_losses: torch.Tensor | None = None
    log_abs_hypergrads: dict[str, torch.Tensor] | None = None
    log_tangent_peaks: dict[str, torch.Tensor] | None = None

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The trained parameters (module-level API only)."""
        return self.state["params"]


def make_result(
    space: HyperSpace,
    val_loss: torch.Tensor,
    flat_grad: torch.Tensor,
    state: Any,
    train_losses: torch.Tensor | None,
    flat_log_abs: torch.Tensor | None = None,
    flat_log_peaks: torch.Tensor | None = None,
) -> HypergradResult:
    """Package a flat hypergradient into a :class:`HypergradResult` (``flat_log_abs``:
    ``log|flat_grad|`` in float64, default computed from ``flat_grad``; ``flat_log_peaks``:
    the log tangent peaks, if known)."""
    hypergrads = space.split(flat_grad.detach())
    value_grads = {
        name: hypergrads[name] / space.schedules[name].value_derivative() for name in space.names
    }
    if flat_log_abs is None:
        flat_log_abs = flat_grad.detach().double().abs().log()
    return HypergradResult(
        val_loss=val_loss.detach(),
        hypergrads=hypergrads,
        value_hypergrads=value_grads,
        state=tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, state),
        train_losses=train_losses,
        log_abs_hypergrads=space.split(flat_log_abs, keep_dtype=True),
        log_tangent_peaks=(
            None if flat_log_peaks is None else space.split(flat_log_peaks, keep_dtype=True)
        ),
    )


def batch_source(batches: Batches, steps: int) -> Callable[[int], Any]:
    """Turn ``batches`` into a function ``t -> batch``.

    ``batches`` is a callable ``t -> batch``, a sequence (or a tensor whose first dimension
    indexes the steps) of at least ``steps`` batches, or an iterable. A sequence must hold
    at least ``steps`` batches; an iterator that runs out before
    ``steps`` raises a ``ValueError`` naming the step.
    """
    if callable(batches) and not isinstance(batches, (Sequence, torch.Tensor)):
        return batches
    is_sequence = isinstance(batches, Sequence) and not isinstance(batches, (str, bytes))
    if is_sequence or (isinstance(batches, torch.Tensor) and batches.dim() > 0):
        if len(batches) < steps:
            raise ValueError(
                f"batches holds {len(batches)} batches but the horizon is {steps} inner steps"
            )
        return batches.__getitem__
    if isinstance(batches, Iterable) and not isinstance(batches, (str, bytes, torch.Tensor)):
        iterator: Iterator[Any] = iter(batches)

        def next_batch(t: int) -> Any:
            try:
                return next(iterator)
            except StopIteration:
                raise ValueError(
                    f"batches ran out at inner step {t} of a horizon of {steps} steps"
                ) from None

        return next_batch
    raise TypeError(
        "batches must be a callable step -> batch, a sequence or an iterable of batches; "
        f"got {type(batches).__name__}"
    )


def check_state(state: State) -> tuple[list[torch.Tensor], Any]:
    """Flatten ``state``; raise ``TypeError`` unless every leaf is a floating tensor."""
    leaves, spec = tree_flatten(state)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor) or not leaf.dtype.is_floating_point:
            raise TypeError(
                "every leaf of the inner state must be a floating-point tensor (forward mode "
                f"carries a tangent for each); got {type(leaf).__name__}"
                + (f" of dtype {leaf.dtype}" if isinstance(leaf, torch.Tensor) else "")
            )
    return leaves, spec


def _progress(total: int, enabled: bool, description: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "progress bars need tqdm: pip install 'moopt[examples]' (or progress=False)"
        ) from error
    return tqdm(total=total, desc=description, leave=False)


def forward_unroll(
    step: StepFn,
    val: ValFn,
    state: State,
    schedules: Mapping[str, Schedule],
    batches: Batches,
    *,
    steps: int | None = None,
    has_aux: bool = False,
    tangents: str = "batched",
    check_finite: bool = True,
    check_every: int | None = None,
    compile: bool = False,
    progress: bool = False,
    on_error: Callable[[int, Exception], Exception] | None = None,
    rescale_tangents: bool = True,
) -> HypergradResult:
    """FDS hypergradients of ``val(state_T)`` by forward-mode AD through T pure inner steps.

    Args:
        step: pure function ``step(state, hypers_t, batch) -> state`` (with ``has_aux``:
            ``-> (state, train_loss)``); ``hypers_t`` maps every schedule name to its value
            at that step (a tensor of the schedule's ``shape``). It must not mutate its
            inputs. Every leaf of ``state`` must be a floating tensor.
        val: pure function ``val(state) -> scalar tensor`` (the validation loss).
        state: the initial inner state (a pytree of tensors; its tangents start at zero).
        schedules: ``{name: Schedule}``, the N shared hyperparameters to differentiate.
        batches: a callable ``t -> batch``, a sequence of at least T batches, or an
            iterable yielding them.
        steps: the horizon T (default: the schedules' ``steps``; all must agree).
        has_aux: whether ``step`` also returns the training loss.
        tangents: ``"batched"`` (vmap over the N tangents, the default) or ``"columns"``
            (one jvp per tangent column; slower, for comparisons). With N = 1 and
            ``compile=False`` both run the single column as dual tensors after step 0
            (see the module docstring).
        check_finite: stop with :class:`UnrollError` naming the step when the state, its
            tangents or the training loss become NaN/inf.
        check_every: look at the finiteness record every this many steps (one host sync
            each time); default 1 on CPU, 100 on accelerators (the unroll then stops at
            most 99 steps after the bad one, and still names it).
        compile: run steps 1..T-1 through ``torch.compile`` (the batched jvp of the step
            as one graph; step 0 runs eagerly, so that unsupported operations fail with a
            clear error). It removes most of the per-operation overhead of the three
            ``torch.func`` levels (measured about 5x faster per step on a small CPU MLP)
            after a one-off compilation of tens of seconds; worth it for long horizons and
            repeated outer steps (the compiled graph is reused while shapes stay the same).
            The step must be compilable; results equal eager ones up to rounding. Each new
            configuration (N, shapes, dtypes) compiles again; past
            ``torch._dynamo.config.recompile_limit`` (8) of them in one process, PyTorch
            falls back to eager execution with a warning.
        progress: show a tqdm progress bar over the inner steps.
        on_error: optional hook turning an exception raised inside step ``t`` into a more
            helpful one (the module-level API names the failing module).
        rescale_tangents: keep every tangent column as a mantissa times a power of two,
            renormalised when it grows past ``2^{m/4}`` (see the module docstring), so
            that tangents that grow exponentially do not overflow; exact (powers of two).
            ``False``: plain tangents, which stop the unroll with
            :class:`UnrollDiverged` (``where="tangents"``) when they overflow.

    Returns:
        a :class:`HypergradResult` (hypergradients with respect to each schedule's ``raw``).
    """
    if tangents not in TANGENT_MODES:
        raise ValueError(f"tangents must be one of {list(TANGENT_MODES)}; got {tangents!r}")
    if not isinstance(rescale_tangents, bool):
        raise TypeError(f"rescale_tangents must be a bool; got {rescale_tangents!r}")
    space = HyperSpace(schedules, steps)
    horizon = space.steps
    leaves, _ = check_state(state)
    reference = leaves[0]
    h = space.flat(reference.dtype, reference.device)
    n = space.numel
    # Tangent columns ordered by the first step that uses their hyperparameter: before that
    # step a column is exactly zero, so only the prefix of started columns is pushed (as the
    # official code computes H·Z only for windows already reached). Compiled steps keep all
    # N columns, so that their shapes never change.
    first_use, order = torch.sort(space.first_use(), stable=True)
    started = torch.searchsorted(first_use, torch.arange(horizon), right=True).tolist()
    if compile:
        started = [n] * horizon
    seeds = torch.eye(n, dtype=h.dtype, device=h.device)[order.to(h.device)]
    # Binary exponents of the tangent columns (sorted order): true tangent = stored · 2^e.
    exponents = torch.zeros(n, dtype=torch.int64, device=h.device)
    log_peaks = torch.full((n,), -math.inf, dtype=torch.float64, device=h.device)
    tangent = tree_map(lambda x: x.new_zeros((started[0], *x.shape)), state)
    get_batch = batch_source(batches, horizon)

    def f_of(t: Any, batch: Any) -> Callable[[State, torch.Tensor], Any]:
        """The step at ``t`` as a function of the state and the flat hyperparameters."""

        def f(s: State, hh: torch.Tensor) -> Any:
            values = space.values_at(hh, t) if isinstance(t, int) else space.values_in(hh, t)
            out = step(s, values, batch)
            return out if has_aux else (out, torch.zeros((), dtype=hh.dtype, device=hh.device))

        return f

    def pushed(state_in: State, tangent_in: State, h_dot: torch.Tensor, t: Any, batch: Any):
        return jvp(f_of(t, batch), (state_in, h), (tangent_in, h_dot), has_aux=True)

    batched = vmap(
        pushed, in_dims=(None, 0, 0, None, None), out_dims=(None, 0, None), randomness="same"
    )
    compiled = None
    if compile:
        if tangents != "batched":
            raise ValueError('compile=True needs tangents="batched"')
        compiled = torch.compile(batched, dynamic=False)
        table = space.window_table.to(h.device)
    losses = torch.empty(horizon, dtype=h.dtype, device=h.device) if has_aux else None
    if check_every is None:
        check_every = 1 if h.device.type == "cpu" else 100
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive int; got {check_every!r}")
    monitor = _FiniteMonitor(horizon, h.device, check_every) if check_finite else None
    bar = _progress(horizon, progress, "FDS unroll")
    # One column: dual tensors from step 1 on. Step 0 runs under torch.func.jvp, which
    # refuses what the unroll cannot carry (in-place updates of buffers and other captured
    # tensors) with an error at that step; plain dual tensors would let it pass silently.
    dual = n == 1 and compiled is None
    try:
        with contextlib.ExitStack() as dual_scope:
            # The seeds scaled by 2^{-e} (and h as a dual tensor) change only when the
            # exponents do, at most every _RESCALE_EVERY steps: rebuilt then, not every step.
            scaled_seeds = seeds
            h_dual = None
            for t in range(horizon):
                if dual and t == 1:
                    dual_scope.enter_context(forward_ad.dual_level())
                batch = get_batch(t)
                active = started[t]
                tangent = _pad_columns(tangent, active)
                h_dot = scaled_seeds[:active]
                if dual and t > 0 and h_dual is None:
                    h_dual = forward_ad.make_dual(h, h_dot[0])
                try:
                    if dual and t > 0:
                        state, tangent, loss = _dual_step(f_of, state, tangent, h_dual, t, batch)
                    elif compiled is not None and t > 0:
                        state, tangent, loss = compiled(state, tangent, h_dot, table[t], batch)
                    elif tangents == "batched" and active > 1:
                        state, tangent, loss = batched(state, tangent, h_dot, t, batch)
                    else:  # one column at a time (a single column needs no vmap)
                        columns = []
                        for k in range(active):
                            column = tree_map(lambda x, k=k: x[k], tangent)
                            new_state, new_column, loss = pushed(state, column, h_dot[k], t, batch)
                            columns.append(new_column)
                        state = new_state
                        tangent = tree_map(lambda *xs: torch.stack(xs), *columns)
                except (RuntimeError, NotImplementedError) as error:
                    if on_error is not None:
                        raise on_error(t, error) from error
                    raise UnrollError(f"inner step {t} failed: {error}") from error
                if losses is not None:
                    losses[t] = loss.detach()
                due = (t + 1) % _RESCALE_EVERY == 0 or t + 1 == horizon
                peak = _column_peaks(tangent, active) if due else None
                if peak is not None:
                    log_peak = peak.double().log() + exponents[:active].double() * math.log(2.0)
                    log_peaks[:active] = torch.maximum(log_peaks[:active], log_peak)
                    if rescale_tangents:
                        tangent, exponents[:active] = _renormalise(
                            tangent, peak, exponents[:active]
                        )
                        scaled_seeds = _times_power_of_two(seeds, -exponents)
                        h_dual = None
                if monitor is not None:
                    monitor.record(t, state, tangent, loss if has_aux else None, losses)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    def directional(tangent_in: State) -> tuple[torch.Tensor, torch.Tensor]:
        return jvp(val, (state,), (tangent_in,))

    tangent = _pad_columns(tangent, n)
    value, mantissa = vmap(directional, out_dims=(None, 0), randomness="same")(tangent)
    if check_finite and not bool(torch.isfinite(mantissa).all() and torch.isfinite(value)):
        raise UnrollDiverged(
            f"the validation loss ({float(value)}) or its hypergradient is not finite after "
            f"{horizon} inner steps",
            step=horizon,
            where="validation",
        )
    # hypergradient = mantissa · 2^e, in float64; ±inf (exact sign) if even that overflows.
    wide = mantissa.detach().double()
    sorted_grad = _ldexp(wide, exponents)
    sorted_log_abs = wide.abs().log() + exponents.to(wide) * math.log(2.0)
    unsort = torch.argsort(order).to(sorted_grad.device)  # column order -> flat order
    return make_result(
        space,
        value,
        sorted_grad[unsort],
        state,
        losses,
        sorted_log_abs[unsort],
        log_peaks[unsort],
    )


#: Inner steps between two looks at the tangents' magnitudes (rescaling, peaks).
_RESCALE_EVERY = 8


def _times_power_of_two(rows: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``rows[k] · 2^{exponents[k]}`` (exact: a power of two in the rows' dtype)."""
    factor = torch.ldexp(torch.ones_like(exponents, dtype=rows.dtype), exponents.to(rows.dtype))
    return rows * factor.view(-1, *([1] * (rows.dim() - 1)))


def _ldexp(x: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``x · 2^exponents`` rounded once, as ``math.ldexp`` (±inf only when the product
    overflows, 0 stays 0). ``torch.ldexp`` multiplies by ``2^exponents``, which is itself
    inf past ``2^1023`` in float64 (a finite ``x·2^e`` would then come out ±inf, and 0 as
    NaN): here ``x``'s own binary exponent is taken out first and the rest applied in
    two halves, each a normal power of two."""
    fraction, own = torch.frexp(x)
    total = (own.to(exponents.dtype) + exponents).clamp(-1100, 1100)
    half = torch.div(total, 2, rounding_mode="floor")
    return fraction * torch.exp2(half.to(x.dtype)) * torch.exp2((total - half).to(x.dtype))


def _column_peaks(tangent: State, columns: int) -> torch.Tensor | None:
    """The largest ``|entry|`` of each of the ``columns`` tangent columns (``None``: no
    entries)."""
    leaves = [leaf for leaf in tree_flatten(tangent)[0] if leaf.numel() > 0]
    if not leaves or columns == 0:
        return None
    peaks = []
    for leaf in leaves:
        low, high = torch.aminmax(leaf.detach().reshape(columns, -1), dim=1)
        peaks.append(torch.maximum(-low, high).to(leaves[0].dtype))
    return torch.stack(peaks).amax(0)


def _renormalise(
    tangent: State, peak: torch.Tensor, exponents: torch.Tensor
) -> tuple[State, torch.Tensor]:
    """Rescale the tangent columns whose largest entry left ``[2^{-m/4}, 2^{m/4}]``.

    A column above the range is divided by ``2^s`` (``s`` the binary exponent of its
    largest entry, so that it ends in ``[1/2, 1)``) and its exponent grows by ``s``; a
    column below the range with a positive exponent is multiplied back up, never past
    exponent 0. ``m`` is the dtype's largest binary exponent (128 in float32); shifts are
    limited to ``m - 2`` so that every factor is a normal power of two. Runs without a
    host sync (all decisions are tensor operations).
    """
    leaves, spec = tree_flatten(tangent)
    top = min(math.frexp(torch.finfo(leaf.dtype).max)[1] for leaf in leaves)
    _, binary = torch.frexp(peak)
    binary = binary.to(exponents.dtype)
    limit = top // 4
    down = torch.where(binary > limit, binary, 0)
    up = torch.where((binary < -limit) & (exponents > 0), torch.maximum(binary, -exponents), 0)
    shift = (down + up).clamp(-(top - 2), top - 2)
    scaled = [_times_power_of_two(leaf, -shift) for leaf in leaves]
    return tree_unflatten(scaled, spec), exponents + shift


def _dual_step(
    f_of: Callable[[Any, Any], Callable[[State, torch.Tensor], Any]],
    state: State,
    tangent: State,
    h_dual: torch.Tensor,
    t: int,
    batch: Any,
) -> tuple[State, State, torch.Tensor]:
    """One step of a single tangent column with dual tensors (inside a ``dual_level``).

    ``tangent`` holds one column (leading dimension 1), as in the batched path; an output
    that does not depend on the hyperparameter gets a zero tangent.
    """
    inputs = tree_map(lambda x, dx: forward_ad.make_dual(x, dx[0]), state, tangent)
    out, loss = f_of(t, batch)(inputs, h_dual)
    leaves, spec = tree_flatten(out)
    primals, tangents = [], []
    for leaf in leaves:
        primal, dot = forward_ad.unpack_dual(leaf)
        primals.append(primal)
        tangents.append((torch.zeros_like(primal) if dot is None else dot).unsqueeze(0))
    return (
        tree_unflatten(primals, spec),
        tree_unflatten(tangents, spec),
        forward_ad.unpack_dual(loss).primal,
    )


def _pad_columns(tangent: State, count: int) -> State:
    """Append zero columns to every tangent leaf up to ``count`` columns."""

    def pad(x: torch.Tensor) -> torch.Tensor:
        missing = count - x.shape[0]
        return x if missing == 0 else torch.cat([x, x.new_zeros((missing, *x.shape[1:]))])

    return tree_map(pad, tangent)


class _FiniteMonitor:
    """Records, without a host sync, whether the training loss, the state and the tangents
    are finite at every step, and checks the record every ``every`` steps, raising an
    :class:`UnrollError` that names the first bad step (on an accelerator the unroll may
    run up to ``every - 1`` steps past it before noticing).

    The state (and the tangents) count as finite when the sum of all their entries is:
    a NaN or inf entry makes the sum NaN or inf, and one reduction per tensor is cheaper
    than an elementwise test. The sums are taken in float64, so a finite state is flagged
    only if its entries sum beyond ~1e308 in magnitude.
    """

    def __init__(self, horizon: int, device: torch.device, every: int) -> None:
        self.flags = torch.ones(horizon, 3, dtype=torch.bool, device=device)
        self.horizon = horizon
        self.every = every
        self.checked = 0

    def record(
        self, t: int, state: State, tangent: State, loss: torch.Tensor | None, losses: Any
    ) -> None:
        sums = [_total(state), _total(tangent)]
        if loss is not None:
            sums.append(loss.sum().double())
        self.flags[t, : len(sums)] = torch.isfinite(torch.stack(sums))
        if (t + 1) % self.every == 0 or t + 1 == self.horizon:
            self.verify(t + 1, losses)

    def verify(self, upto: int, losses: torch.Tensor | None) -> None:
        ok = self.flags[self.checked : upto].all(dim=1)
        if bool(ok.all()):
            self.checked = upto
            return
        first = self.checked + int((~ok).nonzero()[0, 0])
        state_ok, _, loss_ok = self.flags[first].tolist()
        if not loss_ok:
            value = "" if losses is None else f" {float(losses[first])}"
            what, where = f"the training loss is{value}", "loss"
        elif not state_ok:
            what = "the parameters or optimizer state contain NaN/inf (the inner run diverged)"
            where = "state"
        else:
            what = (
                "the tangents (hypergradients) overflowed to NaN/inf although the inner run "
                "itself is finite"
            )
            where = "tangents"
        raise UnrollDiverged(
            f"NaN/inf during the unroll at inner step {first}: {what}. Lower the learning rate "
            "or its search range, shorten the horizon, or check the data.",
            step=first,
            where=where,
        )


def _total(tree: State) -> torch.Tensor:
    """Sum of all entries of all tensors of ``tree``, in float64 (0-d)."""
    leaves = tree_flatten(tree)[0]
    total = leaves[0].sum(dtype=torch.float64)
    for leaf in leaves[1:]:
        total = total + leaf.sum(dtype=torch.float64)
    return total
