"""What a user's training function receives: :class:`Run`.

A training function for :func:`moopt.frontier.trace` takes one :class:`Run` and returns
the final K task losses (on validation data if you wish)::

    def train(run: Run) -> list[float]:
        model = Net()                                   # seeded: trace calls manual_seed
        run.warm_start(model)                           # ε chains: neighbour's weights
        opt = torch.optim.Adam(run.parameters(model), lr=1e-3)  # + MDMM multipliers
        for x, y in loader:
            losses = torch.stack([loss_a(model, x, y), loss_b(model, x, y)])
            opt.zero_grad()
            run.loss(losses).backward()                 # Linear / Chebyshev / Lagrangian
            opt.step()
        return evaluate(model)                          # K floats or a K-tensor

``run.loss`` hides the method: a weighted sum, a (smooth) Chebyshev scalarization, or
the MDMM Lagrangian ``L_i + Σ_j λ_j (L_j - ε_j) + (c/2)(L_j - ε_j)²`` of
"minimise L_i subject to L_j ≤ ε_j". ``run.combiner`` is the configured combiner itself
(``moopt.scalarize.Linear`` / ``Chebyshev`` or ``moopt.mdmm.MDMM``) for loops that need it.

A training object may also offer the batched protocol that ``trace(..., batched=True)``
uses: ``train_batch(configs, init_states, damping, scales)`` returning, per config, the
final losses, the raw MDMM multipliers (or ``None``) and the trained state (a dict with
``"modules"``: a list of state dicts, and ``"combiner"``: the multipliers by MDMM parameter
name). :class:`~moopt.frontier.ProblemTraining` implements it with
``moopt.frontier._batched.BatchedScalarization``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from moopt._validation import LossesLike, as_loss_vector
from moopt.frontier._config import ANCHOR, PointConfig


def build_combiner(
    config: PointConfig, damping: float, scales: Sequence[float] | None
) -> nn.Module:
    """The combiner a run trains with: ``Linear``, ``Chebyshev`` or ``MDMM``.

    ``scales`` (one per loss, or ``None``) multiplies each ε constraint so that
    constraints on losses of different magnitudes get comparable multipliers.
    """
    if config.method in (ANCHOR, "linear"):
        from moopt.scalarize import Linear

        return Linear(list(config.weights))
    if config.method in ("chebyshev", "smooth_chebyshev"):
        from moopt.scalarize import Chebyshev

        return Chebyshev(
            list(config.weights),
            ideal=None if config.ideal is None else list(config.ideal),
            mu=config.mu if config.method == "smooth_chebyshev" else None,
        )
    if config.method == "epsilon":
        from moopt.mdmm import MDMM, Constraint

        constraints = [
            Constraint(
                "<=",
                bound=float(bound),
                damping=damping,
                scale=1.0 if scales is None else float(scales[j]),
            )
            for j, bound in enumerate(config.epsilon)
            if bound is not None
        ]
        return MDMM(constraints)
    raise ValueError(f"unknown method {config.method!r}")


class Run:
    """One run of a sweep, as seen by the training function.

    Attributes:
        config: the run's :class:`~moopt.frontier.PointConfig`.
        seed: the run's seed (``torch.manual_seed(seed)`` was called before the function).
        combiner: the configured combiner (an ``nn.Module``; MDMM multipliers are its
            parameters).
        n_objectives: K, the number of task losses the function must return.
    """

    def __init__(
        self,
        config: PointConfig,
        combiner: nn.Module,
        n_objectives: int,
        init_state: dict | None = None,
    ) -> None:
        self.config = config
        self.seed = config.seed
        self.combiner = combiner
        self.n_objectives = n_objectives
        self._init_state = init_state
        self._modules: list[nn.Module] = []

    @property
    def method(self) -> str:
        """The sweep method of this run (``"anchor"`` for the single-task anchor runs)."""
        return self.config.method

    @property
    def is_warm(self) -> bool:
        """Whether a neighbour's state is available to :meth:`warm_start` from."""
        return self._init_state is not None and bool(self._init_state.get("modules"))

    def warm_start(self, *modules: nn.Module) -> bool:
        """Register the trained modules and load the neighbour's weights into them.

        Call it once, after building the model and before training. In an ε chain the
        modules receive the final weights of the previous run of the chain (the anchor for
        the first run); elsewhere nothing is loaded. Either way the final weights of these
        modules are kept, so that the next run of the chain can start from them.

        Returns:
            ``True`` when weights were loaded.
        """
        for module in modules:
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"warm_start expects torch.nn.Module arguments; got {type(module).__name__}"
                )
        self._modules = list(modules)
        if not self.is_warm:
            return False
        states = self._init_state["modules"]
        if len(states) != len(modules):
            raise ValueError(
                f"warm_start got {len(modules)} modules but the previous run registered "
                f"{len(states)}; register the same modules in every run"
            )
        for module, state in zip(modules, states):
            module.load_state_dict(state)
        return True

    def parameters(self, *modules: nn.Module) -> list[torch.Tensor]:
        """The parameters of ``modules`` followed by the combiner's (MDMM multipliers).

        Give the result to one ``torch.optim`` optimizer: MDMM multipliers ascend because
        their gradient is negated, so one optimizer does the descent-ascent.
        """
        params: list[torch.Tensor] = []
        for module in modules:
            params.extend(module.parameters())
        params.extend(self.combiner.parameters())
        return params

    def loss(self, losses: LossesLike) -> torch.Tensor:
        """The scalar to call ``.backward()`` on for these K task losses."""
        vector = as_loss_vector(losses, self.n_objectives)
        if self.config.method != "epsilon":
            return self.combiner(vector)
        objective = self.config.objective
        constrained = [
            vector[j] for j, bound in enumerate(self.config.epsilon) if bound is not None
        ]
        return self.combiner(vector[objective], constrained).lagrangian

    def multipliers(self) -> list[float] | None:
        """The MDMM multipliers λ (one per constrained loss, unscaled), ``None`` unless ε."""
        if self.config.method != "epsilon":
            return None
        return [float(v) for v in _flat(self.combiner.parameters())]

    def final_state(self) -> dict:
        """The registered modules' and the combiner's parameters, for the next run of a chain."""
        return {
            "modules": [_cpu_state(module) for module in self._modules],
            "combiner": {
                name: p.detach().cpu().clone() for name, p in self.combiner.named_parameters()
            },
        }

    def load_combiner_state(self) -> None:
        """Copy the neighbour's multipliers into this run's combiner (ε chains)."""
        if self._init_state is None:
            return
        saved = self._init_state.get("combiner") or {}
        with torch.no_grad():
            for name, param in self.combiner.named_parameters():
                if name in saved and saved[name].shape == param.shape:
                    param.copy_(saved[name])


def _cpu_state(module: nn.Module) -> dict:
    return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}


def _flat(values: Iterable) -> list:
    out = []
    for value in values:
        if isinstance(value, torch.Tensor):
            out.extend(value.detach().reshape(-1).tolist())
        else:
            out.append(value)
    return out
