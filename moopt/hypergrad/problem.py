"""Turn an ``nn.Module`` training setup into the pure inner step that the engines unroll.

:class:`InnerProblem` binds a model, a training loss, a validation loss, a functional inner
optimizer and extra hyperparameters into ``step(state, hypers_t, batch) -> (state, loss)``
and ``val(state) -> scalar`` with ``torch.func.functional_call``. Both the forward-mode
engine (FDS) and the reverse-mode baseline run exactly this step, so they differentiate
the same computation.

MDMM multipliers (:class:`moopt.Constraint`) ascend in the inner loop as under
``torch.optim``: their gradient-negating hook is recognised and its effect applied to the
functional gradient; any other gradient hook is refused (functional training cannot run it).

The inner state is ``{"params": {...}, "optimizer": {...}}``: the trainable parameters
(those with ``requires_grad``), packed into one flat vector per dtype and device
(:class:`FlatLayout`), and the optimizer state in the same layout. Buffers and frozen parameters are
constants of the unroll: a module that updates a buffer in place during the training step
(BatchNorm in training mode with running statistics) is refused with an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call, grad_and_value

from moopt.hypergrad.optim import InnerOptimizer
from moopt.hypergrad.schedule import Schedule
from moopt.mdmm import _negate

ModelFn = Callable[..., Any]
TrainLoss = Callable[[ModelFn, Any, Mapping[str, torch.Tensor]], torch.Tensor]
ValLoss = Callable[[ModelFn], torch.Tensor]

_RUNNING_STATS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def check_forward_mode_compatible(model: nn.Module) -> None:
    """Raise ``ValueError`` naming any module whose training step updates buffers in place.

    BatchNorm / InstanceNorm in training mode with ``track_running_stats=True`` update
    their running statistics in place at every forward pass; the unroll treats buffers as
    constants and forward mode cannot carry such an in-place update.
    """
    for name, module in model.named_modules():
        if isinstance(module, _RUNNING_STATS) and module.training and module.track_running_stats:
            raise ValueError(
                f"module {name or '<root>'!r} ({type(module).__name__}) is in training mode "
                "and updates its running statistics in place, which the forward-mode "
                "unroll cannot carry. Call .eval() on it (fixed running statistics), build "
                "it with track_running_stats=False (batch statistics, differentiable), or "
                "use GroupNorm/LayerNorm."
            )


class _ModuleTracker:
    """Records which submodule is running, to name the module where a step fails."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[tuple[str, str]] = []
        self.handles = []
        for name, module in model.named_modules():
            entry = (name or "<root>", type(module).__name__)
            self.handles.append(
                module.register_forward_pre_hook(lambda *_, e=entry: self.stack.append(e))
            )
            self.handles.append(module.register_forward_hook(lambda *_: self._pop()))

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FlatLayout:
    """Packs named tensors into one flat vector per (dtype, device) group, and back.

    ``flatten({name: tensor}) -> {group: vector}``; ``unflatten`` returns views of the
    vectors reshaped to the original shapes (differentiable, no copy).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.groups: dict[str, list[tuple[str, tuple[int, ...], int]]] = {}
        for name, tensor in tensors.items():
            key = f"{tensor.dtype}@{tensor.device}".replace("torch.", "")
            self.groups.setdefault(key, []).append((name, tuple(tensor.shape), tensor.numel()))

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{group: concatenation of the group's tensors, flattened}``."""
        return {
            key: torch.cat([tensors[name].reshape(-1) for name, _, _ in entries])
            for key, entries in self.groups.items()
        }

    def unflatten(self, flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: view of the group vector with the original shape}``."""
        out: dict[str, torch.Tensor] = {}
        for key, entries in self.groups.items():
            pieces = torch.split(flat[key], [numel for _, _, numel in entries])
            for (name, shape, _), piece in zip(entries, pieces):
                out[name] = piece.view(shape)
        return out


class InnerProblem:
    """The pure inner step and validation criterion of a model-training setup.

    Args:
        model: the ``nn.Module``; its current parameters are the initial point of every
            unroll (read at :meth:`initial_state`), on its device and dtype.
        train_loss: ``train_loss(model_fn, batch, hypers) -> scalar``, where ``model_fn``
            calls the model with the current inner parameters and ``hypers`` maps the names
            of ``hypers`` (below) to their values at this step (e.g. loss weights).
        val_loss: ``val_loss(model_fn) -> scalar``, the criterion at the end of training,
            evaluated with the model in eval mode (dropout off; modes restored after).
        optimizer: a functional inner optimizer (:class:`SGD`, :class:`Adam`,
            :class:`AdamW`); its :class:`Schedule` hyperparameters are tuned.
        hypers: extra tuned hyperparameters that enter the training loss, ``{name:
            Schedule}`` (names must differ from the optimizer's).
    """

    def __init__(
        self,
        model: nn.Module,
        train_loss: TrainLoss,
        val_loss: ValLoss,
        optimizer: InnerOptimizer,
        hypers: Mapping[str, Schedule] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(optimizer, InnerOptimizer):
            raise TypeError(
                "optimizer must be a moopt.hypergrad inner optimizer (SGD, Adam, AdamW); got "
                f"{type(optimizer).__name__} (torch.optim optimizers update in place and "
                "cannot be differentiated)"
            )
        for name, fn in (("train_loss", train_loss), ("val_loss", val_loss)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable; got {type(fn).__name__}")
        hypers = {} if hypers is None else hypers
        if not isinstance(hypers, Mapping):
            raise TypeError(
                f"hypers must be a mapping name -> Schedule; got {type(hypers).__name__}"
            )
        for name, schedule in hypers.items():
            if not isinstance(schedule, Schedule):
                raise TypeError(
                    f"hypers[{name!r}] must be a Schedule; got {type(schedule).__name__} "
                    "(only floating-point hyperparameters can be differentiated)"
                )
        clash = set(hypers) & set(optimizer.hyper_names)
        if clash:
            raise ValueError(
                f"hypers names {sorted(clash)} clash with the optimizer's hyperparameters"
            )
        check_forward_mode_compatible(model)
        self.model = model
        self.train_loss = train_loss
        self.val_loss = val_loss
        self.optimizer = optimizer
        self.hypers = dict(hypers)
        self.schedules: dict[str, Schedule] = {**optimizer.schedules(), **self.hypers}
        self._tracker: _ModuleTracker | None = None

    def _trainable(self) -> dict[str, torch.Tensor]:
        trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ValueError("model has no parameter with requires_grad=True to train")
        self.ascent: set[str] = set()
        for name, p in trainable.items():
            if not p.dtype.is_floating_point:
                raise TypeError(f"parameter {name!r} must be floating point; got {p.dtype}")
            hooks = list((p._backward_hooks or {}).values())
            if hooks and all(hook is _negate for hook in hooks):
                self.ascent.add(name)
            elif hooks:
                raise ValueError(
                    f"parameter {name!r} has a gradient hook, which the functional inner "
                    "training does not run (it differentiates copies of the parameters). "
                    "Remove the hook and put its effect into the training loss."
                )
        return {n: p.detach() for n, p in trainable.items()}

    def initial_state(self) -> dict[str, Any]:
        """``{"params": flat trainable parameters (copies), "optimizer": its init state}``.

        The parameters are packed into one vector per (dtype, device) group (see
        :class:`FlatLayout`), so that the optimizer runs a handful of tensor operations
        per step whatever the number of parameter tensors.
        """
        params = self._trainable()
        self.layout = FlatLayout(params)
        flat = self.layout.flatten(params)
        signs = {
            n: torch.full_like(p, -1.0 if n in self.ascent else 1.0) for n, p in params.items()
        }
        self._gradient_signs = self.layout.flatten(signs) if self.ascent else None
        return {"params": flat, "optimizer": self.optimizer.init(flat)}

    def constants(self) -> dict[str, torch.Tensor]:
        """Buffers and frozen parameters: constants of the unroll."""
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad}
        return {**frozen, **dict(self.model.named_buffers())}

    def bind(
        self, flat: Mapping[str, torch.Tensor], constants: Mapping[str, torch.Tensor]
    ) -> ModelFn:
        """A callable that runs the model with the flat parameters ``flat`` and ``constants``."""
        model = self.model
        layout = self.layout

        def model_fn(*args: Any, **kwargs: Any) -> Any:
            tensors = {**layout.unflatten(flat), **constants}
            return functional_call(model, tensors, args, kwargs)

        return model_fn

    def finish(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The final state as the user sees it: ``params`` by name, ``buffers``, ``optimizer``
        (the optimizer state stays in the flat layout)."""
        return {
            "params": self.layout.unflatten(state["params"]),
            "buffers": self.constants(),
            "optimizer": state["optimizer"],
        }

    def make_step(self) -> tuple[Callable[..., Any], Callable[[Any], torch.Tensor]]:
        """Return the pure ``step(state, hypers_t, batch) -> (state, loss)`` and ``val``
        (for the state layout of the last :meth:`initial_state`)."""
        constants = self.constants()
        names = list(self.hypers)
        signs = self._gradient_signs

        def step(state: Mapping[str, Any], hypers_t: Mapping[str, torch.Tensor], batch: Any):
            loss_hypers = {name: hypers_t[name] for name in names}

            def loss_fn(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
                loss = self.train_loss(self.bind(params, constants), batch, loss_hypers)
                _check_scalar(loss, "train_loss")
                return loss

            if _carries_dual_tangents(state["params"]):
                grads, loss = _dual_grad_and_value(loss_fn, state["params"])
            else:
                grads, loss = grad_and_value(loss_fn)(state["params"])
            self.stop_tracking()
            if signs is not None:
                grads = {key: grad * signs[key] for key, grad in grads.items()}
            params, opt_state = self.optimizer.update(
                state["params"], state["optimizer"], grads, hypers_t
            )
            return {"params": params, "optimizer": opt_state}, loss

        def val(state: Mapping[str, Any]) -> torch.Tensor:
            self.start_tracking()
            try:
                with _eval_mode(self.model):
                    loss = self.val_loss(self.bind(state["params"], constants))
            except (RuntimeError, NotImplementedError) as error:
                raise self.describe_error(None, error) from error
            finally:
                self.stop_tracking()
            _check_scalar(loss, "val_loss")
            return loss

        return step, val

    def start_tracking(self) -> None:
        """Record the running submodule until the first step succeeds (to name a failure)."""
        self._tracker = _ModuleTracker(self.model)

    def stop_tracking(self) -> None:
        """Remove the module hooks installed by :meth:`start_tracking`."""
        if self._tracker is not None:
            self._tracker.remove()
            self._tracker = None

    def describe_error(self, t: int | None, error: Exception) -> Exception:
        """An :class:`UnrollError` naming the step (``None``: the validation loss, run in
        eval mode after the last step), the failing module and what to do."""
        from moopt.hypergrad.engine import UnrollError

        where = ""
        if self._tracker is not None and self._tracker.stack:
            name, kind = self._tracker.stack[-1]
            where = f" in module {name!r} ({kind})"
        text = str(error).rstrip(".")
        hint = ""
        lowered = text.lower()
        if any(
            k in lowered for k in ("forward ad", "forward-mode", "jvp", "batching rule", "vmap")
        ):
            hint = (
                " Forward-mode FDS pushes tangents through the training step and the "
                "validation loss with "
                "torch.func.jvp under torch.func.vmap, and this operation does not support "
                "that. For attention, run the math kernel (with torch.nn.attention."
                "sdpa_kernel(torch.nn.attention.SDPBackend.MATH)) or write "
                "softmax(Q Kᵀ/√d) V explicitly; nn.MultiheadAttention and the "
                "nn.Transformer layers take a fused fast path in eval mode (the validation "
                "loss), turned off by torch.backends.mha.set_fastpath_enabled(False); for "
                "in-place buffer updates call .eval(); "
                "otherwise replace the operation, or use reverse_hypergradients for short "
                "horizons."
            )
        stage = "the validation loss" if t is None else f"inner step {t}"
        return UnrollError(f"{stage} failed{where}: {type(error).__name__}: {text}.{hint}")


def _carries_dual_tangents(params: Mapping[str, torch.Tensor]) -> bool:
    """Whether the step runs on dual tensors (the engine's single-column path,
    ``torch.autograd.forward_ad``) outside any ``torch.func`` transform."""
    if torch._C._functorch.maybe_current_level() is not None:
        return False
    return all(forward_ad.unpack_dual(p).tangent is not None for p in params.values())


def _dual_grad_and_value(
    loss_fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
    params: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``grad_and_value(loss_fn)(params)`` for dual-tensor ``params``, by ``torch.autograd``.

    Forward-over-reverse: the backward pass runs on dual tensors, so the gradients carry
    their tangents (the Hessian-vector product along the tangent). Two differences from
    ``torch.func.grad_and_value`` make it cheaper: no functorch wrapping of every tensor,
    and the backward seed is a dual tensor with a zero tangent, so that its products with
    tangent-carrying tensors (e.g. with tuned loss weights) take the ordinary forward-mode
    kernels instead of torch's slow path for a missing tangent.
    """
    with torch.enable_grad():
        inputs = {}
        for name, value in params.items():
            primal, tangent = forward_ad.unpack_dual(value)
            inputs[name] = forward_ad.make_dual(primal.detach().requires_grad_(), tangent)
        loss = loss_fn(inputs)
        value = forward_ad.unpack_dual(loss).primal
        seed = forward_ad.make_dual(torch.ones_like(value), torch.zeros_like(value))
        grads = torch.autograd.grad(
            loss,
            list(inputs.values()),
            grad_outputs=seed,
            allow_unused=True,
            materialize_grads=True,
        )
    return dict(zip(inputs, grads)), loss


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode (dropout off) and restore each one's mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_scalar(loss: object, name: str) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{name} must return a scalar tensor; got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"{name} must return a scalar; got shape {tuple(loss.shape)}")
