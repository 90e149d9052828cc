"""Input validation shared by every combiner.

Every public entry point checks its inputs here, so that bad input fails in one
consistent way: a ``TypeError`` for the wrong kind of object, a ``ValueError`` for the
right kind with the wrong shape or value, and a message that names the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LossesLike = torch.Tensor | Sequence[torch.Tensor]


def as_loss_vector(
    losses: LossesLike,
    n_tasks: int | None = None,
    name: str = "losses",
    check_finite: bool = True,
) -> torch.Tensor:
    """Return ``losses`` as a 1-D tensor of K task losses, keeping the autograd graph.

    Accepts a 1-D tensor of K losses or a non-empty sequence of scalar tensors (0-d, or
    one element). Raises ``TypeError`` / ``ValueError`` naming ``name`` when the input
    is not that, when K differs from ``n_tasks``, or (with ``check_finite``) when any
    loss is NaN or infinite.
    """
    if isinstance(losses, torch.Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"{name} must be a 1-D tensor of K task losses or a sequence of scalar "
                f"tensors; got a tensor of shape {tuple(losses.shape)}"
            )
        vector = losses
    elif isinstance(losses, (str, bytes)) or not isinstance(losses, Sequence):
        raise TypeError(
            f"{name} must be a 1-D tensor or a sequence of scalar tensors; "
            f"got {type(losses).__name__}"
        )
    else:
        items = list(losses)
        for k, item in enumerate(items):
            if not isinstance(item, torch.Tensor):
                raise TypeError(
                    f"{name}[{k}] must be a scalar torch.Tensor; got {type(item).__name__}"
                )
            if item.numel() != 1:
                raise ValueError(
                    f"{name}[{k}] must be a scalar loss (one element); got shape "
                    f"{tuple(item.shape)}. Reduce it (e.g. .mean()) before combining."
                )
        vector = torch.stack([item.reshape(()) for item in items]) if items else None
        if vector is None:
            raise ValueError(f"{name} is empty: expected at least one task loss")
    if vector.numel() == 0:
        raise ValueError(f"{name} is empty: expected at least one task loss")
    if not torch.is_floating_point(vector):
        raise TypeError(f"{name} must be floating point; got dtype {vector.dtype}")
    if n_tasks is not None and vector.numel() != n_tasks:
        raise ValueError(
            f"{name} has {vector.numel()} task losses; this combiner expects {n_tasks}"
        )
    if check_finite:
        bad = ~torch.isfinite(vector.detach())
        if bool(bad.any()):
            where = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"{name} contains NaN or infinite values at task index {where}: "
                f"{vector.detach().tolist()}"
            )
    return vector


def as_weight_vector(
    weights: object,
    name: str = "weights",
    n_tasks: int | None = None,
    allow_zero_sum: bool = False,
) -> torch.Tensor:
    """Return non-negative task weights as a 1-D floating tensor (graph kept).

    Accepts a 1-D tensor or a sequence of numbers. Raises ``TypeError`` / ``ValueError``
    naming ``name`` for the wrong type, the wrong shape or length, non-finite or negative
    entries, or (unless ``allow_zero_sum``) weights that are all zero.
    """
    if isinstance(weights, torch.Tensor):
        tensor = (
            weights if torch.is_floating_point(weights) else weights.to(torch.get_default_dtype())
        )
    elif isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(
            f"{name} must be a 1-D tensor or a sequence of numbers; got {type(weights).__name__}"
        )
    else:
        try:
            tensor = torch.as_tensor([float(w) for w in weights], dtype=torch.get_default_dtype())
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must contain only numbers: {error}") from None
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of K weights; got shape {tuple(tensor.shape)}"
        )
    if n_tasks is not None and tensor.numel() != n_tasks:
        raise ValueError(f"{name} has {tensor.numel()} entries; expected {n_tasks} (one per task)")
    detached = tensor.detach()
    if not bool(torch.isfinite(detached).all()):
        raise ValueError(f"{name} must be finite; got {detached.tolist()}")
    if bool((detached < 0).any()):
        raise ValueError(f"{name} must be non-negative; got {detached.tolist()}")
    if not allow_zero_sum and float(detached.sum()) == 0.0:
        raise ValueError(f"{name} must not be all zero")
    return tensor


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking that it is finite and positive."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite; got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        expected = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {expected}; got {value}")
    return value


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking that it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}")
    return value


def carries_derivatives(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` must be kept as given (not copied) to keep its derivatives.

    True for a tensor that requires grad, a forward-mode dual tensor, and a tensor
    wrapped by a ``torch.func`` transform (``jvp``/``vmap``/``grad``), which reports
    ``requires_grad=False`` but carries tangents that a copy would drop.
    """
    if tensor.requires_grad:
        return True
    from torch.autograd import forward_ad

    if forward_ad.unpack_dual(tensor).tangent is not None:
        return True
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))
