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

from moopt._activations import (
    LinearWatch,
    WatchReport,
    activation_update,
    cover_linear_layers,
    recorded_calls,
)
from moopt._ddp import (
    all_reduce_mean_,
    all_reduce_sum_,
    broadcast_from_first,
    gather_columns,
    resolve_group,
    used_on_any_rank,
    world_size,
)
from moopt._jacobian import (
    LossRows,
    check_finite_tasks,
    gramian,
    memo_of,
    reachable_leaves,
    task_jacobian_matrix,
)
from moopt._validation import LossesLike, as_loss_vector

ParamsLike = Iterable[torch.Tensor] | None
FeaturesLike = torch.Tensor | Sequence[torch.Tensor]


def leaf_tensors(roots: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Every leaf tensor that requires grad and that ``roots`` depend on, in graph order.

    These are the tensors whose ``.grad`` a plain ``root.backward()`` would fill.
    """
    return reachable_leaves(roots, ())


def _check_grad_tensors(items: Sequence[object], name: str, hint: str) -> None:
    """Raise unless every item is a tensor that requires grad; messages name ``name[i]``."""
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor; got {type(item).__name__}")
        if not item.requires_grad:
            raise ValueError(
                f"{name}[{i}] (shape {tuple(item.shape)}) does not require grad: {hint}"
            )


def as_param_list(
    params: ParamsLike, losses: torch.Tensor, name: str = "params"
) -> list[torch.Tensor]:
    """Resolve ``params`` (``None`` means every leaf the losses depend on) and check them.

    A tensor listed twice is kept once (in its first place), as ``Tensor.backward(inputs=)``
    does: its update is added to ``.grad`` once and its gradient counted once in ``J``."""
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
    _check_grad_tensors(resolved, name, "pass only trainable parameters")
    if not losses.requires_grad:
        raise ValueError("losses do not require grad: they carry no graph to differentiate")
    return list({id(p): p for p in resolved}.values())  # each once, as backward(inputs=)


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


def accumulate_grads(
    params: Sequence[torch.Tensor], updates: Sequence[torch.Tensor], fresh: bool = False
) -> None:
    """Add each update to its tensor's ``.grad`` (creating it), as ``backward`` would.

    ``fresh``: the updates are pieces of one direction vector made for this call and
    referenced nowhere else, so a missing ``.grad`` becomes the piece itself (the pieces
    then share one buffer, like a flat gradient buffer) instead of a copy. Gradients
    returned by ``torch.autograd.grad`` are not fresh in this sense: autograd may hand
    the same tensor to several inputs.
    """
    for param, update in zip(params, updates):
        piece = update.detach().reshape(param.shape).to(param.dtype)
        if param.grad is None:
            param.grad = piece if fresh else piece.clone()
        else:
            param.grad.add_(piece)


def as_feature_list(features: FeaturesLike) -> list[torch.Tensor]:
    """Validate ``features`` (a tensor or a non-empty sequence of tensors that require
    grad) and return them as a list."""
    items = [features] if isinstance(features, torch.Tensor) else features
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise TypeError(
            "features must be a tensor or a non-empty sequence of tensors (the shared "
            f"representation); got {type(features).__name__}"
        )
    _check_grad_tensors(
        items, "features", "pass the output of the shared trunk before it is detached"
    )
    return list(items)


class GradientCombiner(Combiner):
    """A combiner whose update is a function of the per-task gradients.

    Subclasses implement :meth:`aggregate`, a pure function of the K×D Jacobian ``J``
    (row ``k`` is ``∇ L_k``); :meth:`backward` computes ``J``, aggregates it and adds the
    result to ``.grad``.

    **Per-task gradients** come from the engine in :mod:`moopt._jacobian`: one batched
    backward (``vmap`` over the K rows of the identity) on accelerators, a loop of K
    backward passes written straight into one K×D matrix on CPU (where it measured
    faster), and an automatic fallback to the loop wherever vmap cannot run the graph.
    The results are the same either way. Pass the losses as a sequence of separate
    scalar tensors when you have them: each is then differentiated on its own, without
    sending zero gradients through the other tasks' heads.

    **``features=`` mode** (``backward(losses, features=h)``): the per-task gradients are
    taken only down to a shared representation ``h`` (the trunk's output, shape
    ``(B, ...)``), not to the trunk's parameters. What is aggregated is the K×(B·F) matrix
    whose row k is ``∂L_k/∂h`` flattened over the batch and feature dimensions (the
    per-sample feature gradients, all samples side by side; with several feature tensors,
    their flattened gradients concatenated). The aggregated direction ``d`` (B·F entries) is
    then backpropagated ONCE through the trunk (``h.backward(d)``), and every parameter
    that the losses use without passing through ``h`` (the task heads) receives
    ``Σ_k ∂L_k/∂p``, i.e. its own task's gradient for a head used by one task. With MGDA as
    the aggregator this is MGDA-UB (Sener & Koltun 2018, "Multi-Task Learning as
    Multi-Objective Optimization", Sec. 3.3), which solves the min-norm problem on
    ``∂L/∂Z`` as an upper bound of the one on the shared parameters; like their official
    code (``multi_task/train_multi_task.py``), the min-norm problem sees the feature
    gradients flattened over the whole batch. Deviation from that code: it forwards the
    batch a second time and backpropagates ``Σ_k w_k L_k`` through everything, so head k
    receives ``w_k ∂L_k/∂head_k``; here the trunk update is the same (``Σ_k w_k ∂L_k/∂h``
    backpropagated through the trunk, without a second forward) but head k receives its
    task's unweighted gradient, as the combiner contract asks. The per-sample
    gradients of mean-reduced losses carry a 1/B factor; scale-invariant aggregators do
    not notice it, others see gradients 1/B smaller than per-sample ones. A parameter that
    the trunk uses and that the losses also reach around ``h`` (a skip connection) is an
    error, because its update would mix the two modes. ``params`` (when given) restricts
    which trunk and head parameters are updated.

    **Distributed data parallelism.** When ``torch.distributed`` is initialised (or a
    ``process_group`` is passed), the rows of ``J`` are averaged across ranks BEFORE
    aggregation, so the update equals the single-process update on the global batch
    (the mean of the ranks' losses): aggregating per rank and averaging the results is
    wrong for every non-linear method. In parameter mode ``J`` (K×D) is all-reduced; a
    :class:`GramianWeighting` in ``features=`` mode all-reduces only the K×K Gramian of the
    feature gradients, a general aggregator all-gathers them. The aggregated direction
    (or the weights) is broadcast from the group's first rank so that randomised
    aggregators keep the replicas identical. The combiner does the gradient
    synchronisation itself, so do not let ``DistributedDataParallel`` average the
    gradients a second time; the working recipe is::

        ddp = DistributedDataParallel(model)       # broadcasts the initial parameters
        with ddp.no_sync():                        # no DDP all-reduce in this block
            losses = task_losses(ddp(x), y)        # this rank's share of the batch
            combiner.backward(losses)              # averages J across ranks, aggregates
        optimizer.step()                           # identical update on every rank

    (Calling the unwrapped ``ddp.module`` instead of ``ddp`` works the same way.) The
    combiner computes every gradient with ``torch.autograd.grad`` and writes ``.grad``
    itself, so DDP's all-reduce hooks (which fire when autograd accumulates into
    ``.grad``) never run on this graph; ``no_sync()`` states that intent and skips DDP's
    per-step bookkeeping. The communication per step is K times that of plain DDP in
    parameter mode, and only K² numbers (Gramian weightings) in ``features=`` mode.

    **Activations instead of J.** A :class:`GramianWeighting` can take the Gramian and
    the update of ``nn.Linear`` layers from their recorded inputs and output gradients
    (``combiner.watch(model)``, see that class); this class's :meth:`watch` raises
    ``TypeError``, because an ``aggregate(J)`` method needs the per-task gradients
    themselves.
    """

    @abc.abstractmethod
    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """Map the K×D matrix of per-task gradients to one update direction of length D."""

    def backward(
        self,
        losses: LossesLike,
        params: ParamsLike = None,
        retain_graph: bool = False,
        *,
        features: FeaturesLike | None = None,
        process_group: object | None = None,
    ) -> None:
        """Compute the per-task gradients, aggregate them, and add the result to ``.grad``.

        Args:
            losses: a 1-D tensor of K task losses or a sequence of K scalar tensors.
            params: the tensors to update; ``None`` means every leaf tensor that requires
                grad and that the losses depend on.
            retain_graph: keep the autograd graph, as in ``Tensor.backward``.
            features: a shared representation (tensor or sequence of tensors) to
                aggregate at instead of the parameters (see the class docstring).
            process_group: the ``torch.distributed`` group to average over; ``None``
                means the default group when one is initialised, else no averaging.

        Raises:
            ValueError: NaN or infinite per-task gradients (naming the tasks), an
                aggregation result of the wrong shape, parameters that do not require
                grad, or features the losses do not depend on.
        """
        try:
            vector = self.losses_vector(losses)
            rows = vector if isinstance(losses, torch.Tensor) else list(losses)
            group = resolve_group(process_group)
            self.__dict__["_loss_values"] = all_reduce_mean_(vector.detach().clone(), group)
            if features is None:
                targets, updates = self._parameter_update(vector, rows, params, retain_graph, group)
                accumulate_grads(targets, updates, fresh=True)
            else:
                targets, updates = self._feature_update(
                    vector, rows, params, as_feature_list(features), retain_graph, group
                )
                accumulate_grads(targets, updates, fresh=group is not None)
        finally:
            self.__dict__["_loss_values"] = None
            for handle in self.__dict__.get("_watches", ()):
                handle.clear()

    def watch(self, module: nn.Module) -> LinearWatch:
        """Record the ``nn.Linear`` calls of ``module`` for :meth:`backward`.

        Only a :class:`GramianWeighting` (update ``Σ_k w_k g_k``) can use them: this
        combiner needs the per-task gradients themselves, so this raises ``TypeError``.
        """
        raise TypeError(
            f"{type(self).__name__} aggregates the per-task gradients themselves "
            "(aggregate(J)), so it cannot take them from activations; watch() serves only "
            "GramianWeighting methods (MGDA, UPGrad, DualProj, PCGrad, IMTLG, CAGrad, "
            "NashMTL, AlignedMTL, ConFIG, FairGrad, GradVac)"
        )

    @property
    def loss_values(self) -> torch.Tensor | None:
        """The K loss values (detached; averaged across ranks under ``torch.distributed``)
        of the :meth:`backward` in progress, for aggregators whose result depends on the
        losses as well as on the gradients (MGDA's "loss" normalisations); ``None``
        outside :meth:`backward`."""
        return self.__dict__.get("_loss_values")

    def _parameter_update(
        self,
        vector: torch.Tensor,
        rows: LossRows,
        params: ParamsLike,
        retain_graph: bool,
        group: object,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        resolved = as_param_list(params, vector)
        jacobian, used = task_jacobian_matrix(rows, resolved, retain_graph, memo_of(self))
        if group is None and not any(used):
            raise ValueError("no loss depends on params: there is no gradient to combine")
        all_reduce_mean_(jacobian, group)
        direction = self._combine(jacobian, group, sharded=False)
        pieces = direction.split([p.numel() for p in resolved])
        used = used_on_any_rank(used, group, jacobian.device)
        kept = [(p, d) for p, d, flag in zip(resolved, pieces, used) if flag]
        return [p for p, _ in kept], [d for _, d in kept]

    def _feature_update(
        self,
        vector: torch.Tensor,
        rows: LossRows,
        params: ParamsLike,
        feats: list[torch.Tensor],
        retain_graph: bool,
        group: object,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feature_ids = {id(f) for f in feats}
        trunk = [p for p in leaf_tensors(feats) if id(p) not in feature_ids]
        heads = reachable_leaves([vector], feats)
        trunk_ids = {id(p) for p in trunk}
        both = [tuple(p.shape) for p in heads if id(p) in trunk_ids]
        if both:
            raise ValueError(
                f"parameters of shapes {both} are used inside features and also by the losses "
                "directly (around features); features= needs a trunk that the losses reach "
                "only through features"
            )
        if params is not None:
            wanted = {id(p) for p in as_param_list(params, vector)}
            trunk = [p for p in trunk if id(p) in wanted]
            heads = [p for p in heads if id(p) in wanted]
        inputs = feats + heads
        jacobian, used = task_jacobian_matrix(rows, inputs, retain_graph, memo_of(self))
        for i, feature in enumerate(feats):
            if not used[i]:
                raise ValueError(f"no loss depends on features[{i}] (shape {tuple(feature.shape)})")
        scale = 1.0 / world_size(group)
        width = sum(f.numel() for f in feats)
        feature_jacobian = jacobian[:, :width] if group is None else jacobian[:, :width] * scale
        direction = self._combine(feature_jacobian, group, sharded=True)
        directions = direction.split([f.numel() for f in feats])
        head_jacobian = jacobian[:, width:]
        if heads:
            bad = ~torch.isfinite(head_jacobian.sum(1))
            check_finite_tasks(all_reduce_sum_(bad.to(vector.dtype), group) > 0, "task heads")
        head_update = head_jacobian.sum(0) if group is None else head_jacobian.sum(0) * scale
        targets = list(heads)
        updates = list(head_update.split([p.numel() for p in heads]))
        if trunk:
            trunk_grads = torch.autograd.grad(
                feats,
                trunk,
                grad_outputs=[d.reshape(f.shape) for d, f in zip(directions, feats)],
                retain_graph=retain_graph,
                allow_unused=True,
            )
            targets = trunk + targets
            updates = [
                torch.zeros_like(p) if g is None else g for p, g in zip(trunk, trunk_grads)
            ] + updates
            reached = [g is not None for g in trunk_grads] + used[len(feats) :]
        else:
            reached = used[len(feats) :]
        if group is not None and targets:  # every rank sends every tensor
            flat = all_reduce_sum_(torch.cat([u.reshape(-1) for u in updates]), group)
            updates = list(flat.split([p.numel() for p in targets]))
        reached = used_on_any_rank(reached, group, vector.device)
        kept = [(p, u) for p, u, flag in zip(targets, updates, reached) if flag]
        return [p for p, _ in kept], [u for _, u in kept]

    def _combine(self, jacobian: torch.Tensor, group: object, sharded: bool) -> torch.Tensor:
        """Aggregate J into the update direction of this rank's columns.

        ``sharded``: each rank holds different columns of the global J (``features=``
        mode) rather than a replica of all of them.
        """
        width = jacobian.shape[1]
        offset = 0
        if sharded:
            jacobian, offset = gather_columns(jacobian, group)
        check_finite_tasks(~torch.isfinite(jacobian.sum(1)), "before aggregation")
        direction = self.aggregate(jacobian)
        if not isinstance(direction, torch.Tensor) or direction.shape != jacobian.shape[1:]:
            raise ValueError(
                f"{type(self).__name__}.aggregate must return a tensor of shape "
                f"({jacobian.shape[1]},); got "
                f"{getattr(direction, 'shape', type(direction).__name__)}"
            )
        if direction._base is not None:  # a view (of J, say): do not keep its base alive
            direction = direction.clone()
        direction = broadcast_from_first(direction.detach().contiguous(), group)
        return direction[offset : offset + width]


class GramianWeighting(GradientCombiner):
    r"""A gradient combiner whose update is ``Σ_k w_k g_k`` with ``w = weights(J Jᵀ)``.

    In :meth:`backward` the K×K Gramian is computed by :func:`moopt._jacobian.gramian`
    (one product, or a sum over column chunks where that measured faster) and the update
    is ``w @ J``, one pass over the K·D per-task gradients that the engine has already
    produced. The alternative, a second backward of ``Σ_k w_k L_k`` once ``w`` is
    known, was measured slower (benchmarks/bench_training_step.py: a whole extra backward
    against K·D multiply-adds), so it is not used. The trade-off is memory: ``J`` (K·D
    numbers, K times a normal ``.grad``) stays alive until the update is formed, whereas
    the second-backward route could free it as soon as ``G`` is known, keeping only O(K²)
    beyond a normal backward after that point; the peak while the K gradients are being
    computed is K·D either way. In ``features=`` mode only the K×(B·F) feature gradients
    are ever held.

    **Linear layers from their activations (opt-in: ``watch``).** Call
    ``handle = combiner.watch(model)`` once; ``combiner.backward(losses)`` is then used
    as before. Forward hooks record every call of an ``nn.Linear`` inside ``model`` made
    with gradients enabled (its input ``x`` and output ``y``). In parameter mode without
    a process group, :meth:`backward` runs its K backward passes only down to the
    recorded outputs (and to the parameters that are not covered, below), so autograd
    never forms the K weight gradients of the covered layers. For ``y = x Wᵀ + b`` with
    ``x`` flattened to R×n rows and task k's output gradient ``δ_k = ∂L_k/∂y`` (R×m),
    ``∇_W L_k = δ_kᵀ x`` and ``∇_b L_k = δ_kᵀ 1``, so the layer adds

    .. math:: G_{ij} \mathrel{+}= \operatorname{tr}(δ_iᵀ (x xᵀ) δ_j) + (1ᵀ δ_i)·(1ᵀ δ_j)
              = \operatorname{tr}(δ_iᵀ (x xᵀ + 1 1ᵀ) δ_j)

    to the Gramian, and once ``w = weights(G)`` is known its update is
    ``(Σ_k w_k δ_k)ᵀ x`` (and ``Σ_k w_k δ_kᵀ 1``): one product per layer, no second
    backward. A layer called several times stacks the rows of its calls. A layer takes
    this form only where it needs fewer multiply-adds than its rows of J
    (``R²·n + K·R²·m + K²·R·m + R·m·n`` against ``K·R·m·n + K²·m·n + K·m·n``,
    :func:`moopt._activations.kernel_form_is_cheaper`): a batch through wide layers does,
    a head with one output, a long sequence (R ≫ n) or K = 1 mostly keeps its rows. The
    result equals the Jacobian route's up to round-off (``tests/test_watch.py``, the
    updates and the Gramian to 1e-10 in float64).

    A weight is *covered* when it is the weight of recorded calls that the losses reach,
    the autograd graph (walked from the losses at every step) reaches it only through
    those calls' own ``F.linear`` nodes, and the count above favours it; its bias is
    covered with it when the same holds for the bias. Everything else falls back to
    its rows of ``J`` from the same K backward passes, whose Gramian block is added and
    whose update is ``w @ J_rest``: other layer types (convolutions, norms, embeddings),
    a weight that is also used elsewhere (an output layer tied to an embedding,
    ``F.linear(h, W.T)``), parametrised weights, subclasses of ``nn.Linear`` that
    override ``forward`` (or a ``forward`` set on the instance), a layer applied to its own
    weight, calls made while a global forward hook is installed or whose layer has a
    forward hook that runs before the watch's (added with ``prepend=True`` after
    :meth:`watch`: it may return another output), calls whose output is changed in
    place afterwards (``nn.ReLU(inplace=True)`` right after the layer) and calls under
    autocast (their dtypes differ). Calls under ``torch.no_grad()`` are not recorded, and
    records from graphs the losses do not reach are ignored; :attr:`watch_report` lists what was
    covered and what fell back. :meth:`backward` consumes the records (in every mode,
    also when it raises).

    Not used in ``features=`` mode, nor under ``torch.distributed`` (a process group):
    there the update must come from the rank-averaged per-task gradients, whose Gramian
    ``⟨Σ_r g_i^r, Σ_s g_j^s⟩`` has cross-rank terms that no rank's activations give (it
    is not the sum of the ranks' Gramians), so the Jacobian route runs as before.

    Memory: instead of the K·(m·n + m) numbers of each covered layer's rows of J,
    :meth:`backward` holds the K output gradients of its calls (K·R·m) and the hooks keep
    each call's ``x`` and ``y`` alive from the forward to the backward (autograd usually
    keeps ``x`` anyway). That is less wherever the kernel form is chosen, because the
    count above favours it only when the rows are fewer than the layer's inputs (R < n).
    Records of a forward that is not followed by this combiner's :meth:`backward` (an
    evaluation pass with gradients enabled) are kept until the next one or
    ``handle.clear()``; watch a model with one combiner at a time. Measured speed:
    BENCHMARKS.md, "Training step".
    """

    @abc.abstractmethod
    def weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """Map the K×K Gramian ``G = J Jᵀ`` to K task weights."""

    def aggregate(self, jacobian: torch.Tensor) -> torch.Tensor:
        """``weights(J Jᵀ) @ J``."""
        return self.weights(jacobian @ jacobian.T) @ jacobian

    def watch(self, module: nn.Module) -> LinearWatch:
        """Take the Gramian and update of ``module``'s linear layers from activations.

        Installs forward hooks on every ``nn.Linear`` inside ``module`` (the module itself
        included) and returns a :class:`~moopt._activations.LinearWatch` handle
        (``.remove()``, or use it as a context manager). See the class docstring for
        what :meth:`backward` then does; every result equals the Jacobian route's up to
        round-off.
        """
        return LinearWatch(module, self.__dict__.setdefault("_watches", []))

    @property
    def watch_report(self) -> WatchReport | None:
        """What the latest :meth:`backward` took from watched activations: a
        :class:`~moopt._activations.WatchReport` whose ``covered`` parameters were served
        by the activation formula and whose ``fallback`` ones came from Jacobian rows;
        ``None`` when that backward did not try (nothing recorded, ``features=`` mode, or
        a process group)."""
        return self.__dict__.get("_watch_report")

    def _parameter_update(
        self,
        vector: torch.Tensor,
        rows: LossRows,
        params: ParamsLike,
        retain_graph: bool,
        group: object,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        self.__dict__["_watch_report"] = None
        calls = recorded_calls(self.__dict__.get("_watches", ())) if group is None else []
        if not calls:
            return super()._parameter_update(vector, rows, params, retain_graph, group)
        resolved = as_param_list(params, vector)
        coverage = cover_linear_layers([vector], resolved, calls, vector.numel())
        self.__dict__["_watch_report"] = WatchReport.of(coverage)
        if not coverage.layers:
            return super()._parameter_update(vector, rows, resolved, retain_graph, group)
        return activation_update(
            coverage,
            rows,
            retain_graph,
            memo_of(self),
            lambda matrix: self._gramian_weights(matrix, None, matrix.dtype),
        )

    def _combine(self, jacobian: torch.Tensor, group: object, sharded: bool) -> torch.Tensor:
        matrix = gramian(jacobian)
        if sharded:
            all_reduce_sum_(matrix, group)
        return self._gramian_weights(matrix, group, jacobian.dtype) @ jacobian

    def _gramian_weights(
        self, matrix: torch.Tensor, group: object, dtype: torch.dtype
    ) -> torch.Tensor:
        """``weights(matrix)``, checked (finite diagonal, K entries) and broadcast."""
        check_finite_tasks(~torch.isfinite(matrix.diagonal()), "Gramian diagonal")
        n_tasks = matrix.shape[0]
        weights = self.weights(matrix)
        if not isinstance(weights, torch.Tensor) or weights.shape != (n_tasks,):
            raise ValueError(
                f"{type(self).__name__}.weights must return a tensor of shape ({n_tasks},); "
                f"got {getattr(weights, 'shape', type(weights).__name__)}"
            )
        return broadcast_from_first(weights.detach().to(dtype).contiguous(), group)
