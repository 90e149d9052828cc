"""Per-task gradients: the K×D Jacobian of K losses with respect to a list of tensors.

Two ways to compute the K rows ``∂ losses[k] / ∂ inputs``, with the same results (to
floating-point round-off):

* **one batched backward**: reverse-mode autograd runs once with the K×K identity as a
  batch of K cotangents (``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps
  the backward pass), so every kernel of the backward is launched once for all K tasks;
* **a loop** of K ordinary backward passes (``retain_graph`` until the last), whose
  gradients are written straight into the rows of one K×D matrix.

Which one runs is decided by measurement, with no flag for the user: on CPU the loop is
used, because vmap's batched backward measured 1.0–1.4× slower than the loop there
(benchmarks/bench_training_step.py; the batched kernels of a small-batch MLP are
memory-bound and vmap copies transposed operands), while on accelerators the batched
backward is used, because there one launch of each kernel for all K tasks instead of K
launches is expected to win (an expectation: no accelerator was available to measure it).

When vmap cannot run the backward (a custom ``autograd.Function`` whose backward leaves
torch, an op without a batching rule that the slow fallback rejects, ...), the engine
falls back to the loop automatically. Because a batched backward that fails half-way may
already have freed part of the graph, a batched attempt on a graph made of autograd node
types not seen before keeps the graph; once a batched backward has worked on graphs of
those node types, later ones free the graph as asked (``retain_graph=False``), so that a
training loop does not hold two graphs at once, and once it has failed, later graphs of
those node types go straight to the loop. Each combiner owns one
:class:`BatchedBackwardMemo` that records this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from moopt._validation import check_choice

_LOG = logging.getLogger("moopt")

LossRows = torch.Tensor | Sequence[torch.Tensor]
"""K task losses: a 1-D tensor or a sequence of scalar tensors."""

STRATEGIES = ("auto", "batched", "loop")


class BatchedBackwardMemo:
    """How one combiner computes per-task gradients, and what it has learnt.

    ``strategy``: ``"auto"`` (the loop on CPU, the batched backward elsewhere),
    ``"batched"`` or ``"loop"`` (used by the tests and the benchmark to pin a path).
    ``outcomes`` records whether the batched backward worked (``True``) or failed
    (``False``) on graphs of a given set of autograd node types; ``batched_ok`` is the
    outcome on the latest graph (``None`` when the batched backward was not tried).
    """

    def __init__(self, strategy: str = "auto") -> None:
        self.strategy = check_choice(strategy, "strategy", STRATEGIES)
        self.outcomes: dict[frozenset[type], bool] = {}
        self.batched_ok: bool | None = None

    def prefers_batched(self, losses: LossRows) -> bool:
        """Whether to try the batched backward first for these losses."""
        if self.strategy == "auto":
            first = losses if isinstance(losses, torch.Tensor) else losses[0]
            return first.device.type != "cpu"
        return self.strategy == "batched"


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


def _roots(losses: LossRows) -> list[torch.Tensor]:
    """The K scalar losses to differentiate one at a time.

    Given the user's separate per-task losses, the loop differentiates each of them
    directly; differentiating ``torch.stack(losses)[k]`` instead would send zero
    gradients down the K - 1 other tasks' subgraphs (K² head backward passes).
    """
    if isinstance(losses, torch.Tensor):
        return [losses[k] for k in range(losses.numel())]
    return [loss.reshape(()) for loss in losses]


def _batched_gradients(
    losses: LossRows,
    inputs: Sequence[torch.Tensor],
    retain_graph: bool,
    memo: BatchedBackwardMemo,
) -> list[torch.Tensor | None] | None:
    """The batched backward, or ``None`` when vmap cannot run this graph."""
    outputs = [losses] if isinstance(losses, torch.Tensor) else _roots(losses)
    signature = graph_signature(outputs)
    outcome = memo.outcomes.get(signature)
    memo.batched_ok = outcome
    if outcome is False:
        return None
    n_tasks = losses.numel() if isinstance(losses, torch.Tensor) else len(outputs)
    identity = torch.eye(n_tasks, dtype=outputs[0].dtype, device=outputs[0].device)
    cotangents = [identity] if isinstance(losses, torch.Tensor) else list(identity.T)
    try:
        grads = torch.autograd.grad(
            outputs,
            list(inputs),
            grad_outputs=cotangents,
            retain_graph=retain_graph if outcome else True,
            allow_unused=True,
            is_grads_batched=True,
        )
    except Exception as error:  # vmap rejects the graph: use the loop instead
        _LOG.debug("batched backward failed (%s); using a per-task loop", error)
        memo.outcomes[signature] = memo.batched_ok = False
        return None
    memo.outcomes[signature] = memo.batched_ok = True
    return list(grads)


def _loop_matrix(
    losses: LossRows, inputs: Sequence[torch.Tensor], retain_graph: bool
) -> tuple[torch.Tensor, list[bool]]:
    """K backward passes written into the rows of one K×D matrix (one copy).

    The rows are cut once into views shaped like the inputs, so that each pass writes
    its gradients with a single ``torch._foreach_copy_`` (one dispatch instead of a
    slice, a reshape and a copy per input and task).
    """
    roots = _roots(losses)
    n_tasks = len(roots)
    sizes = [x.numel() for x in inputs]
    dtype = inputs[0].dtype
    for x in inputs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    jacobian = torch.empty(n_tasks, sum(sizes), dtype=dtype, device=inputs[0].device)
    views = [
        block.unflatten(1, x.shape).unbind(0) if x.dim() else block.squeeze(1).unbind(0)
        for block, x in zip(jacobian.split(sizes, 1), inputs)
    ]
    used = [False] * len(inputs)
    for k in range(n_tasks):
        keep = retain_graph or k < n_tasks - 1
        grads = torch.autograd.grad(roots[k], inputs, retain_graph=keep, allow_unused=True)
        targets, sources, missing = [], [], []
        for i, grad in enumerate(grads):
            if grad is None:
                missing.append(views[i][k])
            else:
                targets.append(views[i][k])
                sources.append(grad)
                used[i] = True
        if targets:
            torch._foreach_copy_(targets, sources)
        if missing:
            torch._foreach_zero_(missing)
    return jacobian, used


def task_jacobian_matrix(
    losses: LossRows,
    inputs: Sequence[torch.Tensor],
    retain_graph: bool = False,
    memo: BatchedBackwardMemo | None = None,
) -> tuple[torch.Tensor, list[bool]]:
    """The K×D matrix whose row k is the flattened gradient of ``losses[k]`` with respect
    to all of ``inputs`` (concatenated), and for each input whether any loss depends on
    it (an input no loss depends on contributes zero columns).

    ``losses`` is a 1-D tensor of K losses or a sequence of K scalar losses (preferred by
    the loop, see :func:`_roots`).
    """
    memo = BatchedBackwardMemo() if memo is None else memo
    if memo.prefers_batched(losses):
        grads = _batched_gradients(losses, inputs, retain_graph, memo)
        if grads is not None:
            used = [g is not None for g in grads]
            return torch.cat(flat_blocks(grads, inputs), 1), used
    else:
        memo.batched_ok = None
    return _loop_matrix(losses, inputs, retain_graph)


def task_gradients(
    losses: LossRows,
    inputs: Sequence[torch.Tensor],
    retain_graph: bool = False,
    memo: BatchedBackwardMemo | None = None,
) -> list[torch.Tensor | None]:
    """Per-task gradients of a 1-D tensor of K losses with respect to each of ``inputs``.

    Returns one entry per input: a tensor of shape ``(K, *input.shape)`` whose slice ``k``
    is ``∂ losses[k] / ∂ input``, or ``None`` when no loss depends on that input.
    ``losses`` is a 1-D tensor or a sequence of K scalar losses.
    """
    memo = BatchedBackwardMemo() if memo is None else memo
    if memo.prefers_batched(losses):
        grads = _batched_gradients(losses, inputs, retain_graph, memo)
        if grads is not None:
            return grads
    else:
        memo.batched_ok = None
    jacobian, used = _loop_matrix(losses, inputs, retain_graph)
    blocks = jacobian.split([x.numel() for x in inputs], 1)
    return [
        block.reshape(jacobian.shape[0], *x.shape) if flag else None
        for block, x, flag in zip(blocks, inputs, used)
    ]


def task_jacobian(
    losses: LossRows,
    params: Sequence[torch.Tensor],
    retain_graph: bool = False,
    memo: BatchedBackwardMemo | None = None,
) -> torch.Tensor:
    """Return the K×D matrix whose row k is the flattened gradient of ``losses[k]``.

    D is the total number of elements of ``params``; a tensor that no loss depends on
    contributes zeros.
    """
    return task_jacobian_matrix(losses, params, retain_graph, memo)[0]


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


CHUNKED_TASKS = range(7, 12)
"""The K for which :func:`gramian` sums over column chunks on CPU (measured faster there)."""


def gramian(jacobian: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
    """``J Jᵀ``: one product, or on CPU for K in :data:`CHUNKED_TASKS` a sum over column
    chunks of ``J``.

    Measured on CPU (one thread, MKL, K×661,000 float32): the chunked sum takes
    0.6–0.95× the time of one product for K = 7 to 11 (a skinny product that the BLAS
    handles poorly), but 1.1–1.4× for K ≤ 5 and about the same for K = 6 and K ≥ 12; the
    results agree up to summation order. On accelerators one product avoids a launch per chunk.
    """
    n_tasks, width = jacobian.shape
    if jacobian.device.type != "cpu" or n_tasks not in CHUNKED_TASKS or width <= chunk:
        return jacobian @ jacobian.T
    result = jacobian[:, :chunk] @ jacobian[:, :chunk].T
    for start in range(chunk, width, chunk):
        block = jacobian[:, start : start + chunk]
        result.addmm_(block, block.T)
    return result


def check_finite_tasks(bad: torch.Tensor, what: str) -> None:
    """Raise a ``ValueError`` naming the tasks where the boolean K-vector ``bad`` is set."""
    if bool(bad.any()):
        tasks = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"the per-task gradient of task(s) {tasks} contains NaN or infinite values, or "
            f"values whose sum overflows ({what}); check those losses and the learning rate"
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
