"""Per-task gradients: the K×D Jacobian of K losses with respect to a list of tensors.

The engine computes all K per-task gradients with **one batched backward**: reverse-mode
autograd is run once with the K×K identity as a batch of K cotangents
(``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps the backward pass). Row
``k`` of the result is ``∂ losses[k] / ∂ inputs``. The K vector-Jacobian products share
one traversal of the graph and turn the matrix products of the backward into batched
ones, so the cost is that of K plain backward passes or less.

When vmap cannot run the backward (a custom ``autograd.Function`` whose backward leaves
torch, an op without a batching rule that the slow fallback rejects, ...), the engine
falls back to a loop of K ordinary backward passes, silently, with identical results (to
floating-point round-off). Because a batched backward that fails half-way may already
have freed part of the graph, a batched attempt on a graph made of autograd node types
not seen before keeps the graph; once a batched backward has worked on graphs of those
node types, later ones free the graph as asked (``retain_graph=False``), so that a
training loop does not hold two graphs at once, and once it has failed, later graphs of
those node types go straight to the loop. Each combiner owns one
:class:`BatchedBackwardMemo` that records this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

_LOG = logging.getLogger("moopt")


class BatchedBackwardMemo:
    """Whether the batched (vmap) backward has worked (``True``) or failed (``False``) on
    graphs of a given set of autograd node types, for the graphs one combiner has seen."""

    def __init__(self) -> None:
        self.outcomes: dict[frozenset[type], bool] = {}
        self.batched_ok: bool | None = None  # the outcome of the latest graph


def graph_signature(roots: Sequence[torch.Tensor]) -> frozenset[type]:
    """The set of autograd node types in the graph behind ``roots``."""
    seen: set[int] = set()
    kinds: set[type] = set()
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        kinds.add(type(node))
        stack.extend(child for child, _ in node.next_functions)
    return frozenset(kinds)


def _loop_gradients(
    losses: torch.Tensor, inputs: Sequence[torch.Tensor], retain_graph: bool
) -> list[torch.Tensor | None]:
    n_tasks = losses.numel()
    per_task = []
    for k in range(n_tasks):
        keep = retain_graph or k < n_tasks - 1
        per_task.append(
            torch.autograd.grad(losses[k], inputs, retain_graph=keep, allow_unused=True)
        )
    stacked: list[torch.Tensor | None] = []
    for i, tensor in enumerate(inputs):
        rows = [grads[i] for grads in per_task]
        if all(row is None for row in rows):
            stacked.append(None)
        else:
            stacked.append(
                torch.stack([torch.zeros_like(tensor) if row is None else row for row in rows])
            )
    return stacked


def task_gradients(
    losses: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    retain_graph: bool = False,
    memo: BatchedBackwardMemo | None = None,
) -> list[torch.Tensor | None]:
    """Per-task gradients of a 1-D tensor of K losses with respect to each of ``inputs``.

    Returns one entry per input: a tensor of shape ``(K, *input.shape)`` whose slice ``k``
    is ``∂ losses[k] / ∂ input``, or ``None`` when no loss depends on that input. Uses one
    batched backward and falls back to a loop of K backward passes when vmap cannot run
    (see the module docstring); ``memo`` records which worked.
    """
    memo = BatchedBackwardMemo() if memo is None else memo
    signature = graph_signature([losses])
    outcome = memo.outcomes.get(signature)
    memo.batched_ok = outcome
    if outcome is not False:
        trusted = outcome is True
        identity = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(
                losses,
                list(inputs),
                grad_outputs=identity,
                retain_graph=retain_graph if trusted else True,
                allow_unused=True,
                is_grads_batched=True,
            )
        except Exception as error:  # vmap rejects the graph: use the loop instead
            _LOG.debug("batched backward failed (%s); using a per-task loop", error)
            memo.outcomes[signature] = memo.batched_ok = False
        else:
            memo.outcomes[signature] = memo.batched_ok = True
            return list(grads)
    return _loop_gradients(losses, inputs, retain_graph)


def task_jacobian(
    losses: torch.Tensor,
    params: Sequence[torch.Tensor],
    retain_graph: bool = False,
    memo: BatchedBackwardMemo | None = None,
) -> torch.Tensor:
    """Return the K×D matrix whose row k is the flattened gradient of ``losses[k]``.

    D is the total number of elements of ``params``; a tensor that no loss depends on
    contributes zeros.
    """
    return torch.cat(flat_blocks(task_gradients(losses, params, retain_graph, memo), params), 1)


def flat_blocks(
    grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Reshape per-task gradients ``(K, *shape)`` to ``(K, numel)`` blocks (zeros for
    ``None``)."""
    n_tasks = next((g.shape[0] for g in grads if g is not None), 0)
    return [
        (
            g.reshape(n_tasks, -1)
            if g is not None
            else torch.zeros(n_tasks, x.numel(), dtype=x.dtype, device=x.device)
        )
        for g, x in zip(grads, inputs)
    ]


def check_finite_tasks(bad: torch.Tensor, what: str) -> None:
    """Raise a ``ValueError`` naming the tasks where the boolean K-vector ``bad`` is set."""
    if bool(bad.any()):
        tasks = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"the per-task gradient of task(s) {tasks} contains NaN or infinite values "
            f"({what}); check those losses and the learning rate"
        )


def reachable_leaves(
    roots: Sequence[torch.Tensor], stop: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Leaf tensors that require grad and that ``roots`` reach without passing through
    any tensor of ``stop``, in graph order.

    Used by the ``features=`` mode to find the parameters (task heads) that the losses
    use directly rather than through the shared representation.
    """
    stop_nodes = {id(t.grad_fn) for t in stop if t.grad_fn is not None}
    stop_leaves = {id(t) for t in stop if t.grad_fn is None}
    seen_nodes: set[int] = set()
    seen_leaves: set[int] = set(stop_leaves)
    leaves: list[torch.Tensor] = []
    for root in roots:
        if root.grad_fn is None and root.requires_grad and id(root) not in seen_leaves:
            seen_leaves.add(id(root))
            leaves.append(root)
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes or id(node) in stop_nodes:
            continue
        seen_nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in seen_leaves:
            seen_leaves.add(id(variable))
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return leaves


def memo_of(owner: object) -> BatchedBackwardMemo:
    """The :class:`BatchedBackwardMemo` of a combiner, created on first use."""
    memo = owner.__dict__.get("_batched_backward_memo")
    if memo is None:
        memo = BatchedBackwardMemo()
        owner.__dict__["_batched_backward_memo"] = memo
    return memo
