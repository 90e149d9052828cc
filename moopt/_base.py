"""The combiner contract (DESIGN.md, "Contracts").

A *combiner* turns K task losses into one update. Every combiner is a
``torch.nn.Module`` with a ``backward(losses, params=None)`` method that accumulates the
combined update into ``.grad`` exactly where ``loss.backward()`` would, so that
``optimizer.step()`` follows unchanged and swapping methods is a one-line change::

    losses = torch.stack([loss_a, loss_b])
    combiner.backward(losses)          # instead of losses.sum().backward()
    optimizer.step()

Two families:

* :class:`LossCombiner` — the update is the gradient of a scalar ``combiner(losses)``
  (linear, Chebyshev, uncertainty weighting, ...). The scalar is differentiable in the
  combiner's own weights, so it composes with AMP, DDP, gradient accumulation and
  hypergradients.
* :class:`GradientCombiner` — the update is a function ``aggregate(J)`` of the K×D matrix
  of per-task gradients (PCGrad, MGDA, ...). Where the result is a combination
  ``Σ w_k g_k`` the method is a :class:`GramianWeighting` that computes ``weights(G)`` on
  the K×K Gramian ``G = J Jᵀ``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from moopt._validation import LossesLike, as_loss_vector

ParamsLike = Iterable[torch.Tensor] | None


def leaf_tensors(roots: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Every leaf tensor that requires grad and that ``roots`` depend on, in graph order.

    These are the tensors whose ``.grad`` a plain ``root.backward()`` would fill.
    """
    seen_nodes: set[int] = set()
    seen_leaves: set[int] = set()
    leaves: list[torch.Tensor] = []
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    for root in roots:
        if root.grad_fn is None and root.requires_grad and id(root) not in seen_leaves:
            seen_leaves.add(id(root))
            leaves.append(root)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in seen_leaves:
            seen_leaves.add(id(variable))
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return leaves


def as_param_list(
    params: ParamsLike, losses: torch.Tensor, name: str = "params"
) -> list[torch.Tensor]:
    """Resolve ``params`` (``None`` means every leaf the losses depend on) and check them."""
    if params is None:
        resolved = leaf_tensors([losses])
    elif isinstance(params, torch.Tensor):
        resolved = [params]
    else:
        resolved = list(params)
    if not resolved:
        raise ValueError(
            f"{name} is empty: the losses depend on no tensor that requires grad"
            if params is None
            else f"{name} is empty: pass the parameters to update"
        )
    for i, param in enumerate(resolved):
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor; got {type(param).__name__}")
        if not param.requires_grad:
            raise ValueError(
                f"{name}[{i}] (shape {tuple(param.shape)}) does not require grad; "
                "pass only trainable parameters"
            )
    if not losses.requires_grad:
        raise ValueError("losses do not require grad: they carry no graph to differentiate")
    return resolved


class Combiner(nn.Module, abc.ABC):
    """Base class of every combiner: an ``nn.Module`` with a ``.backward`` method.

    Args:
        n_tasks: number of task losses K this combiner expects, or ``None`` to accept
            any K (checked on every call when given).
    """

    def __init__(self, n_tasks: int | None = None) -> None:
        super().__init__()
        if n_tasks is not None:
            if isinstance(n_tasks, bool) or not isinstance(n_tasks, int):
                raise TypeError(f"n_tasks must be an int; got {type(n_tasks).__name__}")
            if n_tasks < 1:
                raise ValueError(f"n_tasks must be at least 1; got {n_tasks}")
        self.n_tasks = n_tasks

    def losses_vector(self, losses: LossesLike) -> torch.Tensor:
        """Validate ``losses`` and return them as a 1-D tensor of K losses."""
        return as_loss_vector(losses, self.n_tasks)

    @abc.abstractmethod
    def backward(
        self, losses: LossesLike, params: ParamsLike = None, retain_graph: bool = False
    ) -> None:
        """Accumulate the combined update of ``losses`` into ``.grad``.

        Args:
            losses: a 1-D tensor of K task losses or a sequence of K scalar tensors.
            params: the tensors to update; ``None`` means every leaf tensor that requires
                grad and that the losses depend on (what ``loss.backward()`` would fill).
            retain_graph: keep the autograd graph, as in ``Tensor.backward``.
        """

    def reset(self) -> None:  # noqa: B027 - stateless combiners have nothing to reset
        """Forget any state accumulated over steps (stateless combiners: no-op)."""


class LossCombiner(Combiner):
    """A combiner whose update is the gradient of a scalar ``forward(losses)``."""

    @abc.abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """Combine a validated 1-D tensor of K losses into a scalar."""

    def forward(self, losses: LossesLike) -> torch.Tensor:
        """Return the combined scalar loss (differentiable in losses and in the weights)."""
        return self.combine(self.losses_vector(losses))

    def backward(
        self, losses: LossesLike, params: ParamsLike = None, retain_graph: bool = False
    ) -> None:
        """``self(losses).backward()``, restricted to ``params`` when given."""
        total = self(losses)
        if not total.requires_grad:
            raise ValueError("losses do not require grad: they carry no graph to differentiate")
        inputs = None if params is None else as_param_list(params, total)
        total.backward(inputs=inputs, retain_graph=retain_graph)


class GradientCombiner(Combiner):
    """A combiner whose update is a function of the per-task gradients.

    Subclasses implement :meth:`aggregate`, a pure function of the K×D Jacobian.
    """

    @abc.abstractmethod
    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """Map the K×D matrix of per-task gradients to one update direction of length D."""

    def backward(
        self, losses: LossesLike, params: ParamsLike = None, retain_graph: bool = False
    ) -> None:
        """Compute the per-task gradients, aggregate them, and add the result to ``.grad``."""
        from moopt._jacobian import task_jacobian

        vector = self.losses_vector(losses)
        resolved = as_param_list(params, vector)
        jacobian = task_jacobian(vector, resolved, retain_graph=retain_graph)
        update = self.aggregate(jacobian)
        offset = 0
        for param in resolved:
            size = param.numel()
            piece = update[offset : offset + size].view_as(param).to(param.dtype)
            offset += size
            if param.grad is None:
                param.grad = piece.detach().clone()
            else:
                param.grad.add_(piece.detach())


class GramianWeighting(GradientCombiner):
    """A gradient combiner whose update is ``Σ_k w_k g_k`` with ``w = weights(J Jᵀ)``."""

    @abc.abstractmethod
    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """Map the K×K Gramian ``G = J Jᵀ`` to K task weights."""

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """``weights(J Jᵀ) @ J``."""
        return self.weights(jacobian @ jacobian.T) @ jacobian
