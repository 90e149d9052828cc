"""Adaptive loss weighting: loss-level combiners whose weights are not fixed by the user.

* :class:`RLW` — random loss weights, drawn afresh at every call (Lin et al. 2021).
* :class:`DWA` — Dynamic Weight Average from epoch-averaged loss ratios (Liu et al. 2019).
* :class:`FAMO` — Fast Adaptive Multitask Optimization, logits learned from the observed
  decrease of the log-losses (Liu et al. 2023).
* :class:`GeometricMean` — ``(Π_k L_k)^{1/K}``.
* :class:`ScaleInvariant` — ``Σ_k log L_k``.

Each is a :class:`~moopt._base.LossCombiner`: ``combiner(losses)`` returns a scalar that
is differentiable in the losses, and ``combiner.backward(losses)`` replaces
``sum(losses).backward()``. Weights that these methods compute *from the losses* (DWA's
and FAMO's) are detached, as in the papers and their official code: the gradient reaching
the model is ``Σ_k w_k ∇L_k`` with ``w`` held constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from moopt._base import LossCombiner
from moopt._validation import LossesLike, as_loss_vector, check_choice, check_positive


def _require_n_tasks(n_tasks: object, method: str) -> int:
    """``n_tasks`` for methods that keep per-task state: an int is required, not ``None``."""
    if n_tasks is None:
        raise TypeError(f"{method} keeps per-task state: n_tasks must be an int, not None")
    return n_tasks  # type and range are checked by Combiner.__init__


def _check_positive_losses(losses: torch.Tensor, name: str, method: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every loss is strictly positive."""
    detached = losses.detach()
    bad = detached <= 0
    if bool(bad.any()):
        where = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must be positive for {method}, which takes their logarithm; got "
            f"{detached.tolist()} (non-positive at task index {where})"
        )


def _as_value_vector(values: object, n_tasks: int, name: str) -> torch.Tensor:
    """K per-task values given as a tensor, scalar tensors or plain numbers, checked."""
    if (
        isinstance(values, Sequence)
        and not isinstance(values, (str, bytes))
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
        values = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return as_loss_vector(values, n_tasks, name).detach()


RLW_DISTRIBUTIONS = ("normal", "simplex", "onehot")


class RLW(LossCombiner):
    """Random Loss Weighting: ``Σ_k λ_k L_k`` with ``λ`` drawn afresh at every call.

    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022 (arXiv:2111.10603; first version "A Closer Look at
    Loss Weighting in Multi-Task Learning"). The weights are random, not learned, so they
    carry no graph; the gradient is ``Σ_k λ_k ∇L_k``. Every distribution below puts ``λ``
    on the probability simplex (``λ_k ≥ 0``, ``Σ_k λ_k = 1``):

    * ``"normal"`` (default, the paper's main choice and the one in its official code,
      LibMTL, and TorchJD's ``RandomWeighting`` and ``scalarization.Random``):
      ``λ = softmax(z)``, ``z ~ N(0, I_K)``.
    * ``"simplex"``: ``λ`` uniform on the simplex (Dirichlet(1, …, 1)), sampled as
      ``e / Σ e`` with ``e_k ~ Exp(1)``.
    * ``"onehot"``: one task chosen uniformly at random gets weight 1, the others 0.

    The paper also studies other distributions; ``"simplex"`` and ``"onehot"`` are offered
    as the two extremes (a flat and a degenerate weighting) and are our choices, not the
    paper's exact list. With ``generator=None`` the ``"normal"`` weights are drawn from the
    global RNG exactly as TorchJD does (``softmax(torch.randn(K))``), so the two agree
    under the same ``torch.manual_seed``.

    Args:
        n_tasks: number of tasks K, or ``None`` to accept any K.
        distribution: ``"normal"``, ``"simplex"`` or ``"onehot"``.
        generator: a ``torch.Generator`` (its device is where the weights are drawn), an
            int seed for a new CPU generator, or ``None`` for the global RNG. The generator
            state is saved in ``state_dict()``; :meth:`reset` rewinds it to the state it
            had when the combiner was built.

    Attributes:
        last_weights: the weights drawn by the latest call (``None`` before the first).

    Under DDP, give every rank the same int seed so that all ranks draw the same weights
    (the global RNG may differ between ranks, and then each rank weights its own shard
    differently).
    """

    def __init__(
        self,
        n_tasks: int | None = None,
        distribution: str = "normal",
        generator: torch.Generator | int | None = None,
    ) -> None:
        super().__init__(n_tasks=n_tasks)
        self.distribution = check_choice(distribution, "distribution", RLW_DISTRIBUTIONS)
        if generator is None or isinstance(generator, torch.Generator):
            self.generator = generator
        elif isinstance(generator, int) and not isinstance(generator, bool):
            self.generator = torch.Generator()
            self.generator.manual_seed(generator)
        else:
            raise TypeError(
                "generator must be a torch.Generator, an int seed or None; "
                f"got {type(generator).__name__}"
            )
        self._initial_state = None if self.generator is None else self.generator.get_state()
        self.last_weights: torch.Tensor | None = None

    def sample_weights(
        self,
        n_tasks: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw one weight vector of length ``n_tasks`` (on the simplex) and advance the RNG."""
        generator = self.generator
        draw_device = generator.device if generator is not None else device
        if self.distribution == "normal":
            normal = torch.randn(n_tasks, generator=generator, dtype=dtype, device=draw_device)
            weights = torch.softmax(normal, dim=0)
        elif self.distribution == "simplex":
            exponential = torch.empty(n_tasks, dtype=dtype, device=draw_device)
            exponential.exponential_(generator=generator)
            weights = exponential / exponential.sum()
        else:
            index = torch.randint(n_tasks, (1,), generator=generator, device=draw_device)
            weights = torch.zeros(n_tasks, dtype=dtype, device=draw_device)
            weights[index] = 1.0
        return weights.to(device)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        weights = self.sample_weights(losses.numel(), losses.dtype, losses.device)
        self.last_weights = weights
        return (weights * losses).sum()

    def reset(self) -> None:
        """Rewind the generator to its initial state (global RNG: nothing to rewind)."""
        if self.generator is not None:
            self.generator.set_state(self._initial_state)
        self.last_weights = None

    def get_extra_state(self) -> dict:
        """The generator's state, so that a restored combiner draws the same weights."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        """Restore the generator's state saved by :meth:`get_extra_state`."""
        if "generator" in state:
            if self.generator is None:
                raise ValueError(
                    "state_dict holds a generator state but this RLW uses the global RNG; "
                    "build it with generator=... to restore the state"
                )
            self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"distribution={self.distribution!r}, seeded={self.generator is not None}"


class DWA(LossCombiner):
    """Dynamic Weight Average: ``Σ_k λ_k L_k`` with weights set once per epoch.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
    eq. 7. With ``L̄_k(t)`` the average training loss of task k over epoch t,

        ``w_k(t−1) = L̄_k(t−1) / L̄_k(t−2)``,
        ``λ_k(t) = K · exp(w_k(t−1)/T) / Σ_i exp(w_i(t−1)/T)``,

    and ``λ_k = 1`` for the first two epochs (t = 0, 1). The weights sum to K. They are
    computed from recorded loss values and carry no graph (as in the paper).

    Usage — call :meth:`end_epoch` once at the end of every training epoch::

        dwa = DWA(n_tasks=2, temperature=2.0)
        for epoch in range(n_epochs):
            for batch in loader:
                optimizer.zero_grad()
                dwa.backward(task_losses(batch))   # records the losses, weights λ(epoch)
                optimizer.step()
            dwa.end_epoch()                        # λ for the next epoch

    Every call in training mode (``dwa.train()``, the default) adds the detached losses to
    the running epoch sum; in eval mode (``dwa.eval()``) calls weight the losses but
    record nothing, so validation losses do not leak into the training averages. Pass
    ``end_epoch(epoch_losses)`` to supply the epoch averages yourself instead; under DDP,
    pass the averages all-reduced across ranks, so that every rank uses the same weights
    (the recorded ones are per rank).

    Follows the official code (github.com/lorenmt/mtan, ``im2im_pred/utils.py``): the
    epoch average is the plain mean of the per-batch losses, and the weighted loss is a
    sum, not a mean. Deviation: none in the formula; the per-epoch bookkeeping the
    official training loop does inline lives here in :meth:`end_epoch`. (Some
    re-implementations, e.g. the Nash-MTL/FAMO repositories, average over a sliding
    window of iterations instead of epochs and return the mean; this class does not.)

    TorchJD 0.18's ``torchjd.scalarization.DWA`` gives the same weights and combined
    losses (tested); it differs in three edge cases: it also records calls in eval mode,
    its ``step()`` with nothing recorded is a no-op (here: ``RuntimeError``), and it accepts
    negative losses of constant sign. Here epoch averages must be positive: for negative
    losses the ratio grows when the loss *improves*, which inverts the method's meaning.

    Args:
        n_tasks: number of tasks K (required: the epoch sums are per task).
        temperature: softmax temperature T (the paper uses 2; larger is more uniform).
    """

    weights: torch.Tensor
    epoch_loss_sum: torch.Tensor
    epoch_batches: torch.Tensor
    epoch_history: torch.Tensor
    epochs_completed: torch.Tensor

    def __init__(self, n_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(n_tasks=_require_n_tasks(n_tasks, "DWA"))
        self.temperature = check_positive(temperature, "temperature")
        self.register_buffer("weights", torch.ones(n_tasks))
        self.register_buffer("epoch_loss_sum", torch.zeros(n_tasks))
        self.register_buffer("epoch_batches", torch.zeros((), dtype=torch.long))
        # Row 0: average losses of epoch t−2; row 1: of epoch t−1.
        self.register_buffer("epoch_history", torch.ones(2, n_tasks))
        self.register_buffer("epochs_completed", torch.zeros((), dtype=torch.long))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.epoch_loss_sum += losses.detach().to(self.epoch_loss_sum)
            self.epoch_batches += 1
        return (self.weights.to(losses) * losses).sum()

    @torch.no_grad()
    def end_epoch(self, epoch_losses: LossesLike | None = None) -> torch.Tensor:
        """Close the epoch and return the weights λ for the next one.

        Args:
            epoch_losses: the K average training losses of the epoch that ends. When
                ``None``, the mean of the losses recorded by the calls since the previous
                ``end_epoch`` (in training mode) is used. Either way the recorded sums
                are cleared.

        Raises:
            RuntimeError: ``epoch_losses`` is ``None`` and nothing was recorded.
            ValueError: an epoch average is not positive (DWA divides by it).
        """
        if epoch_losses is None:
            if int(self.epoch_batches) == 0:
                raise RuntimeError(
                    "DWA.end_epoch() found no recorded losses: call the combiner on the "
                    "training losses in training mode during the epoch, or pass "
                    "epoch_losses=..."
                )
            average = self.epoch_loss_sum / self.epoch_batches
            name = "the recorded epoch-average losses"
        else:
            average = _as_value_vector(epoch_losses, self.n_tasks, "epoch_losses")
            average = average.to(self.epoch_history)
            name = "epoch_losses"
        if bool((average <= 0).any()):
            raise ValueError(
                f"{name} must be positive: DWA weights tasks by the ratio of successive "
                f"epoch losses; got {average.tolist()}"
            )
        self.epoch_history[0] = self.epoch_history[1]
        self.epoch_history[1] = average
        self.epochs_completed += 1
        self.epoch_loss_sum.zero_()
        self.epoch_batches.zero_()
        if int(self.epochs_completed) >= 2:
            ratio = self.epoch_history[1] / self.epoch_history[0]
            weights = self.n_tasks * torch.softmax(ratio / self.temperature, dim=0)
            self.weights.copy_(weights.to(self.weights))
        return self.weights.clone()

    def reset(self) -> None:
        """Forget every epoch: weights back to 1, history and running sums cleared."""
        self.weights.fill_(1.0)
        self.epoch_loss_sum.zero_()
        self.epoch_batches.zero_()
        self.epoch_history.fill_(1.0)
        self.epochs_completed.zero_()

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, temperature={self.temperature}"


FAMO_OPTIMIZERS = ("adam", "sgd")
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


class FAMO(LossCombiner):
    """Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, NeurIPS 2023).

    FAMO keeps task logits ``ξ`` (``z = softmax(ξ)``) and, at every step, descends along
    the z-weighted sum of log-loss gradients, rescaled so that the weights on the plain
    loss gradients sum to one. With ``D_k = L_k − L_k* + ε`` (``L*`` = ``min_losses``),

        ``combined = Σ_k (z_k / c) · log D_k``,   ``c = Σ_k z_k / D_k``,

    whose gradient is ``Σ_k w_k ∇L_k`` with ``w_k = z_k / (c · D_k)``, ``Σ_k w_k = 1``
    (Algorithm 1; ``z`` and ``c`` are detached). After the optimizer step, the losses on
    the *same batch* at the new parameters give the observed log-loss decrease
    ``δ_k = log D_k(θ_t) − log D_k(θ_{t+1})``, and the logits take one step on

        ``g = J_softmax(ξ)ᵀ δ + γ ξ = z ⊙ (δ − ⟨z, δ⟩) + γ ξ``

    (Algorithm 1: tasks whose log-loss fell most lose weight), with Adam as in
    the official code (``logit_optimizer="adam"``, the default) or the plain step
    ``ξ ← ξ − β g`` of Algorithm 1 (``"sgd"``).

    Usage — one extra forward pass per step, under ``no_grad``::

        famo = FAMO(n_tasks=2)
        for batch in loader:
            optimizer.zero_grad()
            famo.backward(task_losses(batch))      # or famo(task_losses(batch)).backward()
            optimizer.step()
            with torch.no_grad():
                famo.update(task_losses(batch))    # same batch, updated model

    :meth:`update` uses the losses recorded by the most recent call of the combiner and
    must follow it (a second ``update`` without a new call raises).

    Official code followed: github.com/Cranial-XIX/FAMO (``famo.py``). Defaults are its
    ``w_lr = 0.025`` and ``gamma = 0.01`` (also its CelebA ``run.sh``; its
    ``methods/weight_methods.py`` defaults to ``1e-5`` and TorchJD's ``FAMO`` to ``1e-3``:
    γ is tuned per benchmark), ``ε = 1e-8``, Adam with
    ``betas = (0.9, 0.999)``, ``eps = 1e-8``, and ``γ`` applied as Adam's L2
    ``weight_decay`` (added to the gradient, not decoupled). Deviations: (1) the official
    ``backward`` also clips the model gradient norm to ``max_norm = 1``; here clipping is
    left to the training loop (``torch.nn.utils.clip_grad_norm_``). (2) The logits'
    Adam state is kept in this module's buffers (so it is in ``state_dict()``) instead of
    a separate ``torch.optim.Adam``; the update is the same. (3) ``z`` is detached in the
    combined loss; the official code leaves it attached but overwrites the logits'
    gradient in ``update``, so the model's update is identical. (4) Losses below
    ``min_losses`` raise ``ValueError`` instead of producing NaN. With ``gamma`` as its
    ``weight_decay``, TorchJD 0.18's ``torchjd.scalarization.FAMO`` gives the same combined
    loss and logits (tested).

    The logits are an ``nn.Parameter`` with ``requires_grad=False``: they are in
    ``parameters()`` and ``state_dict()``, but updated only by :meth:`update`, never by
    a model optimizer (they never receive a ``.grad``). Nothing is synchronised across
    DDP ranks: each rank weights and updates its logits from its own loss values.

    Args:
        n_tasks: number of tasks K.
        lr: learning rate β of the logits.
        gamma: decay γ of the logits (pulls them towards uniform weights).
        min_losses: lower bounds ``L_k*`` of the losses (zeros by default).
        eps: ``ε > 0`` added inside every logarithm (a loss equal to its bound stays finite).
        logit_optimizer: ``"adam"`` (official code) or ``"sgd"`` (Algorithm 1).
    """

    logits: nn.Parameter
    min_losses: torch.Tensor
    adam_step: torch.Tensor
    adam_exp_avg: torch.Tensor
    adam_exp_avg_sq: torch.Tensor

    def __init__(
        self,
        n_tasks: int,
        lr: float = 0.025,
        gamma: float = 0.01,
        min_losses: Sequence[float] | torch.Tensor | None = None,
        eps: float = 1e-8,
        logit_optimizer: str = "adam",
    ) -> None:
        super().__init__(n_tasks=_require_n_tasks(n_tasks, "FAMO"))
        self.lr = check_positive(lr, "lr")
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.eps = check_positive(eps, "eps")
        self.logit_optimizer = check_choice(logit_optimizer, "logit_optimizer", FAMO_OPTIMIZERS)
        if min_losses is None:
            bounds = torch.zeros(n_tasks)
        else:
            bounds = _as_value_vector(min_losses, n_tasks, "min_losses")
            if not isinstance(min_losses, torch.Tensor):
                bounds = bounds.to(torch.get_default_dtype())
        self.logits = nn.Parameter(torch.zeros(n_tasks), requires_grad=False)
        self.register_buffer("min_losses", bounds.clone())
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("adam_exp_avg", torch.zeros(n_tasks))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(n_tasks))
        self._previous_losses: torch.Tensor | None = None

    @property
    def task_weights(self) -> torch.Tensor:
        """The current ``z = softmax(ξ)`` (detached, sums to one)."""
        return torch.softmax(self.logits.detach(), dim=0)

    def _shifted(self, losses: torch.Tensor, name: str) -> torch.Tensor:
        """``D = L − L* + ε``, after checking ``L ≥ L*``."""
        gap = losses - self.min_losses.to(losses)
        if bool((gap.detach() < 0).any()):
            raise ValueError(
                f"{name} must be >= min_losses for FAMO, which takes log(L - min_losses + eps); "
                f"got {losses.detach().tolist()} with min_losses {self.min_losses.tolist()}"
            )
        return gap + self.eps

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        shifted = self._shifted(losses, "losses")
        weights = self.task_weights.to(losses)
        normaliser = (weights / shifted.detach()).sum()
        self._previous_losses = losses.detach().clone()
        return (weights / normaliser * torch.log(shifted)).sum()

    @torch.no_grad()
    def update(self, new_losses: LossesLike) -> None:
        """Update the logits from the losses of the same batch after the optimizer step.

        Args:
            new_losses: the K losses at the updated parameters, on the batch passed to the
                latest call of the combiner.

        Raises:
            RuntimeError: no call of the combiner since the last update.
        """
        if self._previous_losses is None:
            raise RuntimeError(
                "FAMO.update(new_losses) needs the losses of a call of the combiner made "
                "before optimizer.step(): call famo(losses) or famo.backward(losses) first"
            )
        new = as_loss_vector(new_losses, self.n_tasks, "new_losses").detach()
        previous = self._previous_losses.to(new)
        decrease = torch.log(self._shifted(previous, "losses")) - torch.log(
            self._shifted(new, "new_losses")
        )
        weights = self.task_weights.to(decrease)
        grad = weights * (decrease - (weights * decrease).sum())
        self._step_logits(grad.to(self.logits))
        self._previous_losses = None

    def _step_logits(self, grad: torch.Tensor) -> None:
        """One step of the logit optimizer on ``grad + γ ξ``."""
        grad = grad + self.gamma * self.logits
        if self.logit_optimizer == "sgd":
            self.logits.sub_(self.lr * grad)
            return
        beta1, beta2 = _ADAM_BETAS
        self.adam_step += 1
        step = int(self.adam_step)
        self.adam_exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.adam_exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denom = (self.adam_exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(_ADAM_EPS)
        self.logits.addcdiv_(self.adam_exp_avg, denom, value=-self.lr / bias_correction1)

    def reset(self) -> None:
        """Uniform weights again: logits and the logits' Adam state zeroed."""
        with torch.no_grad():
            self.logits.zero_()
        self.adam_step.zero_()
        self.adam_exp_avg.zero_()
        self.adam_exp_avg_sq.zero_()
        self._previous_losses = None

    def extra_repr(self) -> str:
        return (
            f"n_tasks={self.n_tasks}, lr={self.lr}, gamma={self.gamma}, "
            f"logit_optimizer={self.logit_optimizer!r}"
        )


class GeometricMean(LossCombiner):
    """Geometric mean of the losses, ``(Π_k L_k)^{1/K} = exp((1/K) Σ_k log L_k)``.

    The value is the geometric mean itself (not the mean of the log-losses). Its gradient
    is ``∇GM = (GM/K) Σ_k ∇L_k / L_k = (GM/K) · ∇ScaleInvariant``: the same direction as
    :class:`ScaleInvariant`, scaled by ``GM/K``, so each task is weighted by
    ``GM / (K L_k)`` (inversely to its own loss; the weights stay attached to the graph,
    as they are part of the function, not a separate weighting).

    Known as the Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh,
    "MultiNet++", CVPR Workshops 2019); LibMTL's ``GLS`` computes
    ``prod(L) ** (1/K)``. Deviation: computed in log space, which gives the same value
    where the product is representable and stays finite where it under- or overflows
    (e.g. many small losses). TorchJD 0.18's ``scalarization.GeometricMean`` uses the same
    log-space form (tested); it accepts a zero loss, which here raises because the gradient
    ``GM / (K L_k)`` is then undefined.

    Args:
        n_tasks: number of tasks K, or ``None`` to accept any K.

    Raises:
        ValueError: on a call with a loss that is not strictly positive.
    """

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        _check_positive_losses(losses, "losses", "GeometricMean")
        return torch.exp(torch.log(losses).mean())


class ScaleInvariant(LossCombiner):
    """Scale-invariant scalarization ``Σ_k log L_k``.

    Its gradient ``Σ_k ∇L_k / L_k`` does not change when a loss is multiplied by a
    positive constant, so the tasks' units do not matter. Equals ``K · log`` of the
    geometric mean; see :class:`GeometricMean` for the gradient relation. The baseline
    named "scale-invariant" in Navon et al., "Multi-Task Learning as a Bargaining Game"
    (ICML 2022), as implemented in its official code (``ScaleInvariantLinearScalarization``
    with unit task weights); no deviation.

    Args:
        n_tasks: number of tasks K, or ``None`` to accept any K.

    Raises:
        ValueError: on a call with a loss that is not strictly positive.
    """

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        _check_positive_losses(losses, "losses", "ScaleInvariant")
        return torch.log(losses).sum()
