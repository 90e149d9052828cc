"""GradNorm: learnable task weights that balance gradient norms (Chen et al. 2018)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from moopt._base import Combiner, ParamsLike, accumulate_grads, as_param_list
from moopt._ddp import all_reduce_mean_, resolve_group, used_on_any_rank
from moopt._jacobian import check_finite_tasks, flat_blocks, memo_of, task_gradients
from moopt._validation import LossesLike, check_positive

SharedLike = torch.Tensor | Iterable[torch.Tensor] | nn.Module


def _shared_tensors(shared: SharedLike) -> list[torch.Tensor]:
    if isinstance(shared, nn.Module):
        tensors = [p for p in shared.parameters() if p.requires_grad]
    elif isinstance(shared, torch.Tensor):
        tensors = [shared]
    elif isinstance(shared, Iterable) and not isinstance(shared, (str, bytes)):
        tensors = list(shared)
    else:
        raise TypeError(
            "shared must be a tensor, an iterable of tensors or an nn.Module (the last "
            f"shared layer); got {type(shared).__name__}"
        )
    if not tensors:
        raise ValueError("shared is empty: pass the last shared layer (or its weight)")
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"shared[{i}] must be a torch.Tensor; got {type(tensor).__name__}")
        if not tensor.requires_grad:
            raise ValueError(f"shared[{i}] (shape {tuple(tensor.shape)}) does not require grad")
    return tensors


class GradNorm(Combiner):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML).

    The network is trained on ``L = Σ_i w_i L_i`` with learnable task weights ``w``
    (an ``nn.Parameter`` in ``.parameters()``, initialised to 1). On every step, with ``W``
    the ``shared`` layer,

    * ``G_i = ||∇_W (w_i L_i)||_2 = w_i ||∇_W L_i||_2`` and ``Ḡ = mean_i G_i``,
    * ``L̃_i = L_i / L_i(0)`` and ``r_i = L̃_i / mean_j L̃_j`` (relative inverse training rate),
    * ``L_grad = Σ_i | G_i − Ḡ · r_i^α |``, with the target ``Ḡ · r_i^α`` held constant.

    :meth:`backward` adds ``∇_w L_grad`` to ``task_weights.grad`` (and nothing else: the
    network parameters receive only ``∇ Σ_i w_i L_i``, computed with the weights detached,
    so ``Σ_i w_i L_i`` contributes no gradient to ``w``). One optimizer over the model's
    and the combiner's parameters then performs the paper's Algorithm 1::

        gradnorm = GradNorm(n_tasks=2, shared=model.trunk[-2], alpha=1.5)
        optimizer = torch.optim.Adam([*model.parameters(), *gradnorm.parameters()])
        gradnorm.backward(losses)
        optimizer.step()

    Args:
        n_tasks: the number of tasks K.
        shared: the weights ``W`` whose per-task gradient norms are balanced: a tensor, an
            iterable of tensors (their gradients are concatenated) or an ``nn.Module``
            (its trainable parameters). The paper uses the last shared layer. It is
            required, not guessed: which layer is "the last shared one" is a property
            of the architecture that the autograd graph does not reveal reliably
            (weights and biases, normalisation layers, several final layers).
            The tensors are referenced, not registered, so they are not in
            ``self.parameters()``.
        alpha: the asymmetry ``α > 0`` (the paper uses 1.5 on NYUv2 and 0.12 on its
            synthetic data; 1.5 here).
        min_weight: the smallest task weight kept at the renormalisation (see below).

    Choices where the paper is silent or implementations differ (the authors published
    no code):

    * ``L_i(0)`` is the loss of the first :meth:`backward` after construction or
      :meth:`reset` (the paper's ``t = 0``); it is stored in the buffer
      ``initial_losses`` (NaN until recorded) and saved in ``state_dict()``.
    * The paper renormalises ``w`` to sum to K right after each update of ``w``; since
      the optimizer step is the user's, the renormalisation ``w ← K w / Σ_j w_j`` is
      applied at the start of the next :meth:`backward`, before ``w`` is used, which
      gives the same training trajectory (use :attr:`normalised_weights` to read
      them in between).
    * The paper does not say what happens when a step drives a weight to zero or below
      (it happens when one task's gradient norm dwarfs the others', whose equilibrium
      weight is then close to 0, and a step overshoots). Here weights below
      ``min_weight`` are raised to ``min_weight`` before the renormalisation;
      ``min_weight=0`` turns this off and makes a non-positive weight an error.
    * LibMTL parameterises ``w = K·softmax(θ)`` and takes norms over all shared
      parameters; neither is done here.

    Under ``torch.distributed`` the losses and the per-task gradients at ``W`` are
    averaged across ranks before the norms are taken and the network update is
    all-reduced, as for :class:`moopt.GradientCombiner` (same DDP recipe: call
    :meth:`backward` inside ``ddp.no_sync()`` or on the unwrapped module).
    """

    def __init__(
        self, n_tasks: int, shared: SharedLike, alpha: float = 1.5, min_weight: float = 1e-3
    ) -> None:
        super().__init__(n_tasks)
        self.alpha = check_positive(alpha, "alpha")
        self.min_weight = check_positive(min_weight, "min_weight", allow_zero=True)
        if self.min_weight * n_tasks >= n_tasks:
            raise ValueError(f"min_weight must be below 1 (the mean weight); got {min_weight}")
        self._shared = _shared_tensors(shared)
        self.task_weights = nn.Parameter(torch.ones(n_tasks))
        self.register_buffer("initial_losses", torch.full((n_tasks,), float("nan")))

    @property
    def normalised_weights(self) -> torch.Tensor:
        """``K w / Σ_j w_j``: the weights the next :meth:`backward` will use (detached)."""
        weights = self.task_weights.detach()
        return weights * (weights.numel() / weights.sum())

    def reset(self) -> None:
        """Set the task weights back to 1 and forget ``L_i(0)``."""
        with torch.no_grad():
            self.task_weights.fill_(1.0)
            self.initial_losses.fill_(float("nan"))

    def _renormalise(self) -> None:
        weights = self.task_weights.detach()
        bad = ~torch.isfinite(weights)
        if self.min_weight == 0:
            bad |= weights <= 0
        if bool(bad.any()):
            raise ValueError(
                f"GradNorm task weights {weights.tolist()} are not all positive and finite "
                f"(task(s) {bad.nonzero().flatten().tolist()}); lower the learning rate of "
                "the GradNorm weights"
            )
        with torch.no_grad():
            self.task_weights.clamp_(min=self.min_weight)
            self.task_weights.mul_(weights.numel() / self.task_weights.sum())

    def backward(
        self,
        losses: LossesLike,
        params: ParamsLike = None,
        retain_graph: bool = False,
        *,
        process_group: object | None = None,
    ) -> None:
        """Add ``∇_θ Σ_i w_i L_i`` to the network's ``.grad`` and ``∇_w L_grad`` to the
        weights' ``.grad``.

        Args:
            losses: a 1-D tensor of K task losses or a sequence of K scalar tensors.
            params: the network tensors to update; ``None`` means every leaf tensor that
                requires grad and that the losses depend on.
            retain_graph: keep the autograd graph, as in ``Tensor.backward``.
            process_group: the ``torch.distributed`` group to average over; ``None``
                means the default group when one is initialised.
        """
        vector = self.losses_vector(losses)
        group = resolve_group(process_group)
        self._renormalise()
        resolved = as_param_list(params, vector)
        values = all_reduce_mean_(vector.detach().clone(), group)
        if bool(torch.isnan(self.initial_losses).all()):
            if bool((values == 0).any()):
                zero = (values == 0).nonzero().flatten().tolist()
                raise ValueError(
                    f"GradNorm needs L_i(0) != 0 to form loss ratios; task(s) {zero} have "
                    "initial loss 0"
                )
            self.initial_losses.copy_(values.to(self.initial_losses))
        rows = vector if isinstance(losses, torch.Tensor) else list(losses)
        grads = task_gradients(rows, self._shared, retain_graph=True, memo=memo_of(self))
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            raise ValueError(f"no loss depends on shared[{missing[0]}]: pass a shared layer")
        at_shared = all_reduce_mean_(torch.cat(flat_blocks(grads, self._shared), 1), group)
        check_finite_tasks(~torch.isfinite(at_shared).all(1), "at the shared layer")
        self._add_weight_gradient(at_shared.norm(dim=1), values)
        weights = self.task_weights.detach().to(vector)
        updates = torch.autograd.grad(
            (weights * vector).sum(), resolved, retain_graph=retain_graph, allow_unused=True
        )
        reached = used_on_any_rank([u is not None for u in updates], group, vector.device)
        if group is not None:  # every rank sends every tensor
            flat = torch.cat(
                [
                    (torch.zeros_like(p) if u is None else u).reshape(-1)
                    for p, u in zip(resolved, updates)
                ]
            )
            updates = all_reduce_mean_(flat, group).split([p.numel() for p in resolved])
        kept = [(p, u) for p, u, flag in zip(resolved, updates, reached) if flag]
        accumulate_grads([p for p, _ in kept], [u for _, u in kept], fresh=group is not None)

    def _add_weight_gradient(self, norms: torch.Tensor, values: torch.Tensor) -> None:
        weights = self.task_weights
        norms = norms.detach().to(weights)
        ratios = values.to(weights) / self.initial_losses
        relative = ratios / ratios.mean()
        gradient_norms = weights * norms
        target = (gradient_norms.mean() * relative**self.alpha).detach()
        grad_loss = (gradient_norms - target).abs().sum()
        (weight_grad,) = torch.autograd.grad(grad_loss, weights)
        accumulate_grads([weights], [weight_grad])
