"""The Gramian of the per-task gradients of linear layers, from their activations.

For a linear layer ``y = x Wᵀ + b`` (``x``: R×n once its leading dimensions are
flattened into R rows, ``W``: m×n) and task k with output gradient ``δ_k = ∂L_k/∂y``
(R×m), the task's parameter gradients are

    ∇_W L_k = δ_kᵀ x,        ∇_b L_k = δ_kᵀ 1,

so their contribution to the Gramian ``G = J Jᵀ`` of the per-task gradients is

    G_ij += ⟨δ_iᵀ x, δ_jᵀ x⟩ + ⟨δ_iᵀ 1, δ_jᵀ 1⟩ = tr(δ_iᵀ (x xᵀ + 1 1ᵀ) δ_j)

and once the task weights w are known the layer's update is ``(Σ_k w_k δ_k)ᵀ x`` (and
``Σ_k w_k δ_kᵀ 1``): one matrix product, with no K×(m·n) block of the Jacobian ever
written. A layer called several times (a weight shared over calls) stacks the rows of its
calls. :meth:`moopt.GramianWeighting.watch` installs the forward hooks that record the
calls (:class:`LinearWatch`); :func:`cover_linear_layers` decides, for one backward,
which parameters this formula may serve; :class:`LinearBlocks` does the arithmetic.

Per layer, by a count of multiply-adds (R rows, m outputs, n inputs, K tasks), a weight
(with its bias) either takes this **kernel form**,

* ``R²·n + K·R²·m + K²·R·m + R·m·n``: ``x xᵀ``, ``(x xᵀ) δ_k`` for every k, the inner
  products, and the update,

or keeps its **Jacobian rows** (the plain route, for this layer only),

* ``K·R·m·n + K²·m·n + K·m·n``: the K weight gradients that autograd then forms in the
  K backward passes, their Gramian, and ``w @ J``,

whichever count is smaller (:func:`kernel_form_is_cheaper`). The kernel form wins when the
rows are few against the layer's width (a batch through wide layers) and K is not tiny;
the rows win for narrow outputs (a head with m = 1), for many rows (long sequences, where
the K·R·m output gradients would also outweigh the K·m·n rows in memory) and mostly at
K = 1. Forming the K weight gradients ``δ_kᵀ x`` from the recorded activations is not
offered: it costs the rows' ``K·R·m·n + K²·m·n`` plus an update of ``R·m·n`` (the rows'
``w @ J`` is ``K·m·n``) and holds the output gradients besides, so it needs no fewer
multiply-adds than the rows whenever R ≥ K.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from moopt._jacobian import BatchedBackwardMemo, LossRows, gramian, task_jacobian_matrix

_LOG = logging.getLogger("moopt")

_LINEAR_NODE_KINDS = frozenset(
    {
        "AccumulateGrad",
        "AddBackward",
        "AddmmBackward",
        "CloneBackward",
        "ExpandBackward",
        "MmBackward",
        "ReshapeAliasBackward",
        "SqueezeBackward",
        "TBackward",
        "UnsafeViewBackward",
        "UnsqueezeBackward",
        "ViewBackward",
    }
)
"""Autograd node types (without their version suffix) that ``F.linear`` produces on the
path from its output to its weight, bias and input; a call whose own part of the graph
holds any other node (a dtype cast under autocast, a tensor subclass's own op) is not
used."""


_LINEAR_OUTPUT_KINDS = frozenset(
    {
        "AddBackward",
        "AddmmBackward",
        "MmBackward",
        "SqueezeBackward",
        "UnsafeViewBackward",
        "ViewBackward",
    }
)
"""The node types that ``F.linear``'s output itself can have: an output whose node is
anything else (a global forward hook that transposed or cloned it) is not recorded."""


@dataclass(frozen=True, eq=False)
class LinearCall:
    """One recorded call ``output = F.linear(input, weight, bias)`` of a watched layer.

    ``output_node``/``input_node`` are the autograd nodes of ``output`` and ``input`` at
    the time of the call, and the versions their in-place counters then: an in-place
    change afterwards (``nn.ReLU(inplace=True)`` on the output, say) makes the record
    unusable, and the layer falls back to its Jacobian rows.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    input: torch.Tensor
    output: torch.Tensor
    output_node: object
    input_node: object | None
    versions: tuple[int, int]

    def unchanged(self) -> bool:
        """Whether input and output are still what the layer computed."""
        return (
            self.output.grad_fn is self.output_node
            and (self.input._version, self.output._version) == self.versions
        )


class LinearWatch:
    """The handle :meth:`moopt.GramianWeighting.watch` returns: forward hooks on every
    ``nn.Linear`` of a module, recording each call made with gradients enabled.

    ``remove()`` takes the hooks off (and forgets the records); the handle is also a
    context manager that removes them on exit. ``records`` are the calls recorded since
    the last ``backward`` of the owning combiner (which consumes and clears them);
    ``clear()`` drops them by hand (records of forward passes that are never followed by
    the combiner's ``backward`` keep their tensors alive until then).

    Not recorded: calls under ``torch.no_grad()``/inference mode or whose output does
    not require grad, subclasses of ``nn.Linear`` that override ``forward`` and layers
    whose ``forward`` is replaced on the instance (``layer.forward = ...``), calls whose
    input, weight, bias and output do not share one dtype (autocast), a layer applied to
    its own weight or bias, and every call while a global forward hook
    (``register_module_forward_hook``) is installed or after a forward hook added to the
    layer with ``prepend=True`` after ``watch`` (those run before the watch's hook and may
    return an output that is not ``F.linear``'s).
    """

    def __init__(self, module: nn.Module, owner: list[LinearWatch]) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module; got {type(module).__name__}")
        layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not layers:
            raise ValueError(
                f"module ({type(module).__name__}) contains no torch.nn.Linear layer to watch"
            )
        self._records: list[LinearCall] = []
        self._owner = owner
        recorder = _Recorder(self)
        self._hooks = [
            layer.register_forward_hook(recorder, with_kwargs=True, prepend=True)
            for layer in layers
        ]
        owner.append(self)

    def __deepcopy__(self, memo: dict) -> LinearWatch:
        return _inactive_watch()

    def __reduce__(self) -> tuple:
        return _inactive_watch, ()

    @property
    def records(self) -> tuple[LinearCall, ...]:
        """The calls recorded since the last ``backward`` (or ``clear()``)."""
        return tuple(self._records)

    @property
    def active(self) -> bool:
        """Whether the hooks are still installed."""
        return bool(self._hooks)

    def clear(self) -> None:
        """Forget the recorded calls."""
        self._records.clear()

    def remove(self) -> None:
        """Take the hooks off and forget the records (idempotent)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._records.clear()
        if self in self._owner:
            self._owner.remove(self)

    def __enter__(self) -> LinearWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _record(
        self, layer: nn.Module, args: tuple, kwargs: dict, output: object, hook: _Recorder
    ) -> None:
        if not torch.is_grad_enabled() or not _plain_linear_call(layer, hook):
            return
        x = args[0] if args else kwargs.get("input")
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
            return
        weight, bias = layer.weight, layer.bias
        if x is weight or x is bias:  # the parameter's gradient has an input term too
            return
        dtypes = {x.dtype, output.dtype, weight.dtype, weight.dtype if bias is None else bias.dtype}
        if (
            output.grad_fn is None
            or len(dtypes) != 1
            or output.shape != (*x.shape[:-1], weight.shape[0])
            or _kind(output.grad_fn) not in _LINEAR_OUTPUT_KINDS
        ):
            return
        self._records.append(
            LinearCall(
                weight, bias, x, output, output.grad_fn, x.grad_fn, (x._version, output._version)
            )
        )


def _inactive_watch() -> LinearWatch:
    """What a copy (``copy.deepcopy``, pickling) of a combiner holds in place of its
    watches: a removed handle that records nothing (the hooks stay with the original)."""
    watch = LinearWatch.__new__(LinearWatch)
    watch._records, watch._owner, watch._hooks = [], [], []
    return watch


class _Recorder:
    """The forward hook of a :class:`LinearWatch`. It holds the watch weakly (a watch
    whose combiner and handle are gone records nothing), and a copy of the module
    (``copy.deepcopy``, pickling) gets an inert recorder: a copy is not watched."""

    __slots__ = ("watch",)

    def __init__(self, watch: LinearWatch | None) -> None:
        self.watch = None if watch is None else weakref.ref(watch)

    def __call__(self, layer: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        watch = None if self.watch is None else self.watch()
        if watch is not None:
            watch._record(layer, args, kwargs, output, self)

    def __deepcopy__(self, memo: dict) -> _Recorder:
        return _Recorder(None)

    def __reduce__(self) -> tuple:
        return _Recorder, (None,)


def _plain_linear_call(layer: nn.Module, hook: _Recorder) -> bool:
    """Whether ``layer``'s call ran ``nn.Linear.forward`` itself (no subclass or instance
    attribute overrides ``forward``) on the arguments the hook sees, and ``output`` is that
    forward's own result: no forward hook other than the watches' recorders (which return
    nothing) ran before ``hook``. A global forward hook or a layer hook registered with
    ``prepend=True`` after ``watch`` may return a different output (``output + output``,
    ``output @ M``), whose gradient is not ``F.linear``'s, so such a call is not recorded."""
    if type(layer).forward is not nn.Linear.forward or "forward" in vars(layer):
        return False
    if nn.modules.module._global_forward_hooks:
        return False
    for other in layer._forward_hooks.values():
        if other is hook:
            return True
        if not isinstance(other, _Recorder):
            return False
    return False


def recorded_calls(watches: Iterable[LinearWatch]) -> list[LinearCall]:
    """The calls recorded by ``watches``, each once (overlapping watches record twice)."""
    seen: set[int] = set()
    calls = []
    for watch in watches:
        for call in watch.records:
            if id(call.output) not in seen:
                seen.add(id(call.output))
                calls.append(call)
    return calls


def _kind(node: object) -> str:
    return type(node).__name__.rstrip("0123456789")


def _own_nodes(call: LinearCall) -> dict[int, object] | None:
    """The autograd nodes of one call (from its output down to, not into, its input), or
    ``None`` when they are not the plain ``F.linear`` graph this module understands."""
    allowed_leaves = {id(call.weight), id(call.input)}
    if call.bias is not None:
        allowed_leaves.add(id(call.bias))
    nodes: dict[int, object] = {}
    stack = [call.output_node]
    while stack:
        node = stack.pop()
        if node is None or node is call.input_node or id(node) in nodes:
            continue
        if _kind(node) not in _LINEAR_NODE_KINDS:
            return None
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) not in allowed_leaves:
            return None
        nodes[id(node)] = node
        stack.extend(child for child, _ in node.next_functions)
    return nodes


@dataclass
class Coverage:
    """Which of ``params`` one backward takes from activations, and how.

    ``calls``: the recorded calls whose output gradients are needed, in a fixed order;
    ``layers``: each covered weight, its bias when that is covered with it (same calls),
    and the indices (into ``calls``) of the calls that use them; ``rest``: the
    parameters that keep their Jacobian rows, in the order of ``params``.
    """

    calls: list[LinearCall] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor | None, list[int]]] = field(default_factory=list)
    rest: list[torch.Tensor] = field(default_factory=list)

    @property
    def covered(self) -> list[torch.Tensor]:
        """The parameters served by the activation formula."""
        return [p for weight, bias, _ in self.layers for p in (weight, bias) if p is not None]


@dataclass(frozen=True)
class WatchReport:
    """What one :meth:`~moopt.GramianWeighting.backward` took from watched activations.

    ``covered``: the parameters served by the activation formula; ``fallback``: those
    whose per-task gradients came from Jacobian rows; ``calls``: how many recorded layer
    calls were used. (It holds no activations: they are freed with the step.)
    """

    covered: tuple[torch.Tensor, ...]
    fallback: tuple[torch.Tensor, ...]
    calls: int

    @classmethod
    def of(cls, coverage: Coverage) -> WatchReport:
        return cls(tuple(coverage.covered), tuple(coverage.rest), len(coverage.calls))


def _graph_parents(
    roots: Sequence[torch.Tensor], candidates: dict[int, torch.Tensor]
) -> tuple[dict[int, object], dict[int, set[int]]]:
    """Every autograd node behind ``roots`` (by id, kept alive so that ids stay unique),
    and for each candidate leaf the ids of the nodes with an edge to its
    ``AccumulateGrad``."""
    nodes: dict[int, object] = {}
    parents: dict[int, set[int]] = {key: set() for key in candidates}
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in nodes:
            continue
        nodes[id(node)] = node
        for child, _ in node.next_functions:
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None and id(variable) in parents:
                parents[id(variable)].add(id(node))
            stack.append(child)
    return nodes, parents


def cover_linear_layers(
    roots: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    calls: Sequence[LinearCall],
    n_tasks: int,
) -> Coverage:
    """Decide which of ``params`` the activation formula serves in the graph of ``roots``.

    A weight is *sound* when it is a leaf used as the weight of recorded, unchanged calls
    that ``roots`` reach, and every edge of the autograd graph into its
    ``AccumulateGrad`` comes from those calls' own nodes (:func:`_own_nodes`): then its
    gradient for every task is exactly the sum over those calls of ``δᵀ x``; likewise a
    bias, with ``δᵀ 1``. A sound weight is covered when the kernel form is cheaper than its
    Jacobian rows (:func:`kernel_form_is_cheaper`), and its bias with it when the bias is
    sound and used by the same calls. Everything else (a weight tied to an embedding or
    used by ``F.linear(h, layer.weight.T)``, a call whose output was changed in place, a
    parametrised weight, a layer the losses do not reach, a bias whose weight is not
    covered) is left in ``rest``.
    """
    param_ids = {id(p) for p in params if p.grad_fn is None}
    candidates: dict[int, torch.Tensor] = {}
    for call in calls:
        for tensor in (call.weight, call.bias):
            if tensor is not None and id(tensor) in param_ids:
                candidates[id(tensor)] = tensor
    if not candidates:
        return Coverage(rest=list(params))
    nodes, parents = _graph_parents(roots, candidates)
    uses: dict[int, list[tuple[int, str]]] = {key: [] for key in candidates}
    own: list[dict[int, object] | None] = []
    for index, call in enumerate(calls):
        reached = id(call.output_node) in nodes and call.unchanged()
        own.append(_own_nodes(call) if reached else None)
        for tensor, role in ((call.weight, "weight"), (call.bias, "bias")):
            if tensor is not None and id(tensor) in uses and reached:
                uses[id(tensor)].append((index, role))
    sound: dict[int, tuple[str, tuple[int, ...]]] = {}
    for key, found in uses.items():
        roles = {role for _, role in found}
        indices = tuple(index for index, _ in found)
        legitimate: set[int] = set()
        ok = bool(found) and len(roles) == 1
        for index in indices:
            call_nodes = own[index]
            if call_nodes is None or not parents[key] & call_nodes.keys():
                ok = False
                break
            legitimate |= call_nodes.keys()
        if ok and parents[key] <= legitimate:
            sound[key] = (roles.pop(), indices)
    biases = {indices: key for key, (role, indices) in sound.items() if role == "bias"}
    order: dict[int, int] = {}
    coverage = Coverage()
    covered: set[int] = set()
    for p in params:
        role, indices = sound.get(id(p), ("", ()))
        if role != "weight" or id(p) in covered:
            continue
        x, y = calls[indices[0]].input, calls[indices[0]].output
        rows = sum(calls[i].input.numel() // x.shape[-1] for i in indices)
        if not kernel_form_is_cheaper(rows, y.shape[-1], x.shape[-1], n_tasks):
            continue
        bias = candidates[biases[indices]] if indices in biases else None
        local = [order.setdefault(i, len(order)) for i in indices]
        coverage.layers.append((p, bias, local))
        covered |= {id(p), id(bias)}
    coverage.rest = [p for p in params if id(p) not in covered]
    coverage.calls = [calls[i] for i in order]
    if coverage.rest and coverage.layers:
        _LOG.debug("watch: %d parameter(s) keep their Jacobian rows", len(coverage.rest))
    return coverage


def kernel_form_is_cheaper(rows: int, outputs: int, inputs: int, tasks: int) -> bool:
    """Whether a layer's kernel form costs fewer multiply-adds than its Jacobian rows
    (module docstring)."""
    kernel = rows * rows * (inputs + tasks * outputs) + tasks * tasks * rows * outputs
    jacobian = (tasks * rows + tasks * tasks + tasks) * outputs * inputs
    return kernel + rows * outputs * inputs < jacobian


class LinearBlocks:
    """The Gramian blocks and the updates of the covered layers of one backward.

    ``deltas``: the K×(Σ_c numel(output_c)) block of per-task output gradients, the
    calls side by side in ``coverage.calls`` order (as the per-task gradient engine
    writes them). Each layer gets its K×R×m output gradients and R×n inputs, the rows of
    all its calls stacked. A bias costs nothing extra: with ``x̃ = [x, 1]``,
    ``tr(δ_iᵀ x̃ x̃ᵀ δ_j)`` is the weight's term plus ``(1ᵀ δ_i)·(1ᵀ δ_j)``, and
    ``x̃ x̃ᵀ = x xᵀ + 1 1ᵀ``.
    """

    def __init__(self, coverage: Coverage, deltas: torch.Tensor) -> None:
        self.n_tasks = deltas.shape[0]
        calls = coverage.calls
        sizes = [call.output.numel() for call in calls]
        per_call = [
            block.reshape(self.n_tasks, -1, call.output.shape[-1])
            for block, call in zip(deltas.split(sizes, 1), calls)
        ]
        self.layers = []
        for weight, bias, indices in coverage.layers:
            blocks = [per_call[i] for i in indices]
            inputs = [calls[i].input.detach() for i in indices]
            inputs = [x.reshape(-1, x.shape[-1]) for x in inputs]
            sources = tuple(id(calls[i].input) for i in indices) + (bias is not None,)
            self.layers.append(
                (
                    weight,
                    bias,
                    blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1),
                    inputs[0] if len(inputs) == 1 else torch.cat(inputs, 0),
                    sources,
                )
            )

    def gramian(self) -> torch.Tensor:
        """Σ over covered layers of their K×K Gramian blocks (symmetrised)."""
        k = self.n_tasks
        like = self.layers[0][2]
        total = torch.zeros(k, k, dtype=like.dtype, device=like.device)
        kernels: dict[tuple, torch.Tensor] = {}  # layers fed the same input share x xᵀ
        with torch.no_grad():
            for _, bias, deltas, x, sources in self.layers:
                kernel = kernels.get(sources)
                if kernel is None:
                    kernel = x @ x.T
                    kernels[sources] = kernel = kernel if bias is None else kernel.add_(1.0)
                total.addmm_(deltas.flatten(1), torch.matmul(kernel, deltas).flatten(1).T)
            return total.add_(total.T.clone()).mul_(0.5)

    def updates(self, weights: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(param, Σ_k w_k ∇_param L_k)`` for every covered parameter."""
        pieces = []
        with torch.no_grad():
            for weight, bias, deltas, x, _ in self.layers:
                combined = (weights @ deltas.flatten(1)).reshape(deltas.shape[1:])
                pieces.append((weight, combined.T @ x))
                if bias is not None:
                    pieces.append((bias, combined.sum(0)))
        return pieces


def activation_update(
    coverage: Coverage,
    losses: LossRows,
    retain_graph: bool,
    memo: BatchedBackwardMemo,
    solve: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One backward of a Gramian weighting with ``coverage``: the per-task engine down to
    the covered calls' outputs and the other parameters, the Gramian (activation blocks
    plus ``J_rest J_restᵀ``), ``w = solve(G)``, and the updates (``(Σ_k w_k δ_k)ᵀ x`` per
    covered layer, ``w @ J_rest`` for the rest, left out for parameters no loss uses).
    Returns the tensors to update and their updates."""
    outputs = [call.output for call in coverage.calls]
    jacobian, used = task_jacobian_matrix(losses, outputs + coverage.rest, retain_graph, memo)
    width = sum(y.numel() for y in outputs)
    blocks = LinearBlocks(coverage, jacobian[:, :width])
    rest = jacobian[:, width:]
    matrix = blocks.gramian()
    if coverage.rest:
        matrix = matrix + gramian(rest)
    weights = solve(matrix)
    pieces = blocks.updates(weights)
    if coverage.rest:
        split = (weights @ rest).split([p.numel() for p in coverage.rest])
        flags = used[len(outputs) :]
        pieces += [(p, u) for p, u, flag in zip(coverage.rest, split, flags) if flag]
    return [p for p, _ in pieces], [u for _, u in pieces]
