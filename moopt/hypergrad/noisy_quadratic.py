"""The noisy quadratic model (NQM) of Wu, Ren, Liao & Grosse (ICLR 2018).

"Understanding Short-Horizon Bias in Stochastic Meta-Optimization" studies learning-rate
schedules on a separable noisy quadratic in ``n`` dimensions: every inner step draws a
fresh stochastic loss

    ℓ(θ) = ½ Σ_i h_i (θ_i − c_i)²,      c_i ~ N(0, σ_i²) independently,

so the stochastic gradient is ``h ⊙ (θ − c)`` (gradient noise of variance ``h_i² σ_i²``),
and the quantity that a schedule should minimise is the *expected* loss after T steps,

    E ℓ(θ_T) = ½ Σ_i h_i (E[θ_{T,i}²] + σ_i²).

With SGD with heavy-ball momentum in Wu et al.'s form

    v_{t+1} = μ_t v_t − α_t h ⊙ (θ_t − c_t),      θ_{t+1} = θ_t + v_{t+1},

every direction evolves independently and linearly, so the first moments ``m = E θ``,
``u = E v`` and the raw second moments ``A = E θ²``, ``B = E θv``, ``C = E v²`` follow a
*deterministic* recursion (``g = 1 − α h``, ``s = α² h² σ²``)::

    m' = g m + μ u                     u' = −α h m + μ u
    A' = g² A + 2 μ g B + μ² C + s
    B' = −α h g A + μ (g − α h) B + μ² C + s
    C' = α² h² A − 2 α h μ B + μ² C + s

:meth:`NoisyQuadratic.step` is this recursion as a pure function ``step(state, hypers_t,
batch)`` of the moments and the step's hyperparameters ``{"lr": α_t, "momentum": μ_t}``,
so that :func:`moopt.hypergrad.forward_unroll` differentiates the exact expected loss (no
sampling noise) with respect to a whole schedule. :func:`greedy_schedule` is the
one-step-optimal (greedy) schedule in closed form. :meth:`NoisyQuadratic.simulate` runs the
stochastic process itself (Monte Carlo), which the tests compare with the recursion.

Defaults (:meth:`NoisyQuadratic.wu2018`): n = 1000, curvatures ``h_i = 1/i`` (the 1/i
spectrum Wu et al. and later NQM work use to mimic neural-network Hessians), noise
``σ_i² = 1/h_i`` (gradient-noise covariance equal to the curvature, as for a Fisher
approximation), and ``θ_0 ~ N(0, diag(1/h))``, ``v_0 = 0`` (every direction starts with the
same expected loss ½). Deviations from the paper: (1) we could not consult the paper's
exact constants, so the numbers above are our choice and the losses differ from Wu et
al.'s (their greedy 63.86 vs optimal 4.25 at T = 250); (2) :meth:`NoisyQuadratic.expected_loss`
reports the *excess* expected loss ``½ Σ h_i E[θ_i²]``, without the constant ``½ Σ h_i σ_i²``
that no schedule can change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

Moments = dict[str, torch.Tensor]


def _as_vector(
    value: torch.Tensor | Sequence[float], name: str, dtype: torch.dtype
) -> torch.Tensor:
    if isinstance(value, (str, bytes)) or not isinstance(value, (torch.Tensor, Sequence)):
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of numbers; got {value!r}")
    tensor = torch.as_tensor(value, dtype=dtype)
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor; got shape {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite")
    return tensor


@dataclass(frozen=True)
class NoisyQuadratic:
    """A separable noisy quadratic ``ℓ(θ) = ½ Σ h_i (θ_i − c_i)²``, ``c_i ~ N(0, σ_i²)``.

    Args:
        curvatures: ``h``, positive, one per direction.
        noise: ``σ²``, the variance of ``c_i`` (non-negative), one per direction.
        init_mean: ``E θ_0`` (zeros when ``None``).
        init_var: ``Var θ_0`` (non-negative; zeros when ``None``). ``v_0 = 0``.
    """

    curvatures: torch.Tensor
    noise: torch.Tensor
    init_mean: torch.Tensor
    init_var: torch.Tensor

    def __init__(
        self,
        curvatures: torch.Tensor | Sequence[float],
        noise: torch.Tensor | Sequence[float],
        init_mean: torch.Tensor | Sequence[float] | None = None,
        init_var: torch.Tensor | Sequence[float] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        h = _as_vector(curvatures, "curvatures", dtype)
        if not bool((h > 0).all()):
            raise ValueError("curvatures must be positive")
        fields = {"curvatures": h}
        for name, value in (("noise", noise), ("init_mean", init_mean), ("init_var", init_var)):
            tensor = torch.zeros_like(h) if value is None else _as_vector(value, name, dtype)
            if tensor.shape != h.shape:
                raise ValueError(
                    f"{name} must have one entry per direction ({h.numel()}); got {tensor.numel()}"
                )
            if name != "init_mean" and not bool((tensor >= 0).all()):
                raise ValueError(f"{name} must be non-negative")
            fields[name] = tensor
        for name, tensor in fields.items():
            object.__setattr__(self, name, tensor)

    @classmethod
    def wu2018(cls, dim: int = 1000, dtype: torch.dtype = torch.float64) -> NoisyQuadratic:
        """The default problem: ``h_i = 1/i``, ``σ_i² = 1/h_i``, ``θ_0 ~ N(0, diag(1/h))``."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int; got {dim!r}")
        h = 1.0 / torch.arange(1, dim + 1, dtype=dtype)
        return cls(h, 1.0 / h, init_mean=torch.zeros_like(h), init_var=1.0 / h, dtype=dtype)

    @property
    def dim(self) -> int:
        """Number of directions n."""
        return self.curvatures.numel()

    def initial_state(self) -> Moments:
        """Moments at t = 0: ``E θ_0``, ``E v_0 = 0``, ``E θ_0²``, ``E θ_0 v_0 = E v_0² = 0``."""
        zeros = torch.zeros_like(self.curvatures)
        return {
            "mean_theta": self.init_mean.clone(),
            "mean_velocity": zeros.clone(),
            "theta_sq": self.init_mean**2 + self.init_var,
            "theta_velocity": zeros.clone(),
            "velocity_sq": zeros.clone(),
        }

    def step(
        self, state: Mapping[str, torch.Tensor], hypers: Mapping[str, torch.Tensor], batch: object
    ) -> Moments:
        """One exact step of the moment recursion (module docstring); pure, differentiable.

        ``hypers`` holds ``"lr"`` (α_t) and optionally ``"momentum"`` (μ_t, default 0);
        ``batch`` is ignored (the noise is integrated out exactly).
        """
        del batch
        lr = hypers["lr"]
        mu = hypers.get("momentum", 0.0)
        h = self.curvatures
        g = 1 - lr * h
        ah = lr * h
        noise = ah**2 * self.noise
        m, u = state["mean_theta"], state["mean_velocity"]
        a, b, c = state["theta_sq"], state["theta_velocity"], state["velocity_sq"]
        mu2c = mu**2 * c
        return {
            "mean_theta": g * m + mu * u,
            "mean_velocity": -ah * m + mu * u,
            "theta_sq": g**2 * a + 2 * mu * g * b + mu2c + noise,
            "theta_velocity": -ah * g * a + mu * (g - ah) * b + mu2c + noise,
            "velocity_sq": ah**2 * a - 2 * ah * mu * b + mu2c + noise,
        }

    def loss_per_direction(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Excess expected loss of every direction, ``½ h_i E[θ_i²]`` (shape ``(n,)``)."""
        return 0.5 * self.curvatures * state["theta_sq"]

    def expected_loss(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Excess expected loss ``½ Σ_i h_i E[θ_i²]`` (the constant ``½ Σ h_i σ_i²`` left out)."""
        return self.loss_per_direction(state).sum()

    def run(
        self, lrs: torch.Tensor | Sequence[float], momenta: torch.Tensor | Sequence[float] | float
    ) -> tuple[Moments, torch.Tensor]:
        """Apply a whole schedule; return the final moments and the loss per direction after
        every step (shape ``(T, n)``)."""
        lrs_t, momenta_t = _schedule_tensors(lrs, momenta, self.curvatures.dtype)
        state = self.initial_state()
        per_step = []
        for lr, mu in zip(lrs_t, momenta_t):
            state = self.step(state, {"lr": lr, "momentum": mu}, None)
            per_step.append(self.loss_per_direction(state))
        return state, torch.stack(per_step)

    def simulate(
        self,
        lrs: torch.Tensor | Sequence[float],
        momenta: torch.Tensor | Sequence[float] | float,
        n_runs: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Monte Carlo: run ``n_runs`` independent stochastic SGD-momentum trajectories.

        Returns the final iterates ``θ_T``, shape ``(n_runs, n)``; their empirical moments
        estimate those of :meth:`run`.
        """
        lrs_t, momenta_t = _schedule_tensors(lrs, momenta, self.curvatures.dtype)
        h = self.curvatures
        shape = (n_runs, self.dim)
        std0 = self.init_var.sqrt()
        noise_std = self.noise.sqrt()
        dtype = h.dtype
        theta = self.init_mean + std0 * torch.randn(shape, generator=generator, dtype=dtype)
        velocity = torch.zeros(shape, dtype=dtype)
        for lr, mu in zip(lrs_t, momenta_t):
            c = noise_std * torch.randn(shape, generator=generator, dtype=dtype)
            velocity = mu * velocity - lr * h * (theta - c)
            theta = theta + velocity
        return theta


def _schedule_tensors(
    lrs: torch.Tensor | Sequence[float],
    momenta: torch.Tensor | Sequence[float] | float,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    lrs_t = torch.as_tensor(lrs, dtype=dtype).reshape(-1)
    momenta_t = torch.as_tensor(momenta, dtype=dtype).reshape(-1)
    if momenta_t.numel() == 1:
        momenta_t = momenta_t.expand(lrs_t.numel())
    if momenta_t.numel() != lrs_t.numel():
        raise ValueError(
            f"momenta must be one number or one per step ({lrs_t.numel()}); got {momenta_t.numel()}"
        )
    return lrs_t, momenta_t


def greedy_step(
    problem: NoisyQuadratic,
    state: Mapping[str, torch.Tensor],
    momentum: float | None = None,
    max_momentum: float = 0.999,
) -> tuple[float, float]:
    """The one-step-optimal ``(α, μ)``: minimise the expected loss after the next step.

    The next-step loss ``f(α, μ) = ½ Σ h [g² A + 2μ g B + μ² C + α² h² σ²]`` (g = 1 − αh)
    is a convex quadratic in ``(α, μ)``; its stationarity conditions are

        α Σ h³(A + σ²) − μ Σ h² B = Σ h² A,       −α Σ h² B + μ Σ h C = −Σ h B.

    With ``momentum`` given, μ is fixed and ``α = Σ h²(A + μB) / Σ h³(A + σ²)``. Otherwise
    both are solved jointly (Wu et al.'s greedy schedule for SGD with momentum); μ is kept in
    ``[0, max_momentum]`` (at a bound, α is re-solved for that μ) and α ≥ 0 (at α = 0, μ is
    re-solved and clamped). While ``v = 0`` (first step) μ has no effect and is reported as 0.
    """
    h = problem.curvatures
    a, b, c = state["theta_sq"], state["theta_velocity"], state["velocity_sq"]
    haa = float((h**3 * (a + problem.noise)).sum())
    hb2 = float((h**2 * b).sum())
    hc = float((h * c).sum())
    ha = float((h**2 * a).sum())
    hb = float((h * b).sum())

    def lr_for(mu: float) -> float:
        return max((ha + mu * hb2) / haa, 0.0)

    def clamp(mu: float) -> float:
        return min(max(mu, 0.0), max_momentum)

    if momentum is not None:
        return lr_for(float(momentum)), float(momentum)
    if hc <= 0.0:
        return lr_for(0.0), 0.0
    det = haa * hc - hb2**2
    if det > 0:
        lr = (ha * hc - hb2 * hb) / det
        mu = (haa * (-hb) + hb2 * ha) / det
    else:
        lr, mu = lr_for(0.0), 0.0
    if not 0.0 <= mu <= max_momentum:
        mu = clamp(mu)
        lr = lr_for(mu)
    if lr <= 0.0:
        lr = 0.0
        mu = clamp(-hb / hc)
    return lr, mu


def greedy_schedule(
    problem: NoisyQuadratic,
    steps: int,
    momentum: float | None = None,
    max_momentum: float = 0.999,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy (one-step-optimal) schedule of ``steps`` steps (:func:`greedy_step` each).

    Returns ``(lrs, momenta)``, each of shape ``(steps,)``. This is the horizon-1
    meta-objective whose bias Wu et al. (2018) analyse: it decays the learning rate too
    fast because every step only trades off the next loss.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1) or be None; got {momentum!r}")
    state = problem.initial_state()
    lrs, momenta = [], []
    for _ in range(steps):
        lr, mu = greedy_step(problem, state, momentum, max_momentum)
        lrs.append(lr)
        momenta.append(mu)
        lr_t = torch.tensor(lr, dtype=problem.curvatures.dtype)
        state = problem.step(state, {"lr": lr_t, "momentum": torch.tensor(mu).to(lr_t)}, None)
    dtype = problem.curvatures.dtype
    return torch.tensor(lrs, dtype=dtype), torch.tensor(momenta, dtype=dtype)
