"""Small real models on scikit-learn's digits for the frontier examples.

* :class:`BottleneckNet` and :class:`MultiDigitsTraining` — MultiDigits (two digits on a
  12×12 canvas, one 10-way classification task per digit) through a shared MLP trunk with
  a narrow ``tanh`` bottleneck and one head per digit. With a 2-unit bottleneck the two
  tasks compete for two numbers per image, and a weighted sum of the two cross-entropies
  lets whichever task wins early take the whole bottleneck.
* :class:`DigitsVAE` and :class:`VAETraining` — a Gaussian-latent VAE on the 8×8 digits,
  whose two losses are the rate (KL to the prior) and the distortion (reconstruction).

Both training classes follow the contract of :func:`moopt.frontier.trace`: an instance is
called with one ``Run`` (``run.seed``, ``run.warm_start(*modules)``,
``run.parameters(*modules)``, ``run.loss(losses)``) and returns the final task losses. They
are plain picklable objects, so a process pool or a Dask cluster can run them; the data
set is built on first use in each process and cached.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from moopt._validation import check_choice, check_positive
from moopt.frontier.training import cosine_decay

__all__ = ["BottleneckNet", "DigitsVAE", "MultiDigitsTraining", "VAETraining"]


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    return value


def _optimizer(
    run: object, model: nn.Module, lr: float, multiplier_lr: float | None
) -> torch.optim.Adam:
    """Adam over the model and the run's combiner (MDMM multipliers), which may get
    their own learning rate ``multiplier_lr`` (default: ``lr``)."""
    if multiplier_lr is None:
        return torch.optim.Adam(run.parameters(model), lr=lr)
    combiner = list(run.combiner.parameters())
    groups = [{"params": list(model.parameters())}]
    if combiner:
        groups.append({"params": combiner, "lr": multiplier_lr})
    return torch.optim.Adam(groups, lr=lr)


class BottleneckNet(nn.Module):
    """Shared trunk ``144 → hidden (ReLU) → bottleneck (tanh)`` and one head per task.

    Each head is ``bottleneck → head_hidden (ReLU) → 10`` (a linear ``bottleneck → 10``
    when ``head_hidden == 0``). ``forward(x)`` returns one logit tensor per task.
    """

    def __init__(
        self,
        n_in: int = 144,
        hidden: int = 32,
        bottleneck: int = 2,
        head_hidden: int = 16,
        n_tasks: int = 2,
        n_classes: int = 10,
    ) -> None:
        super().__init__()
        for name, value in (("n_in", n_in), ("hidden", hidden), ("bottleneck", bottleneck)):
            _check_int(value, name)
        _check_int(head_hidden, "head_hidden", minimum=0)
        _check_int(n_tasks, "n_tasks")
        _check_int(n_classes, "n_classes", minimum=2)
        self.trunk = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck), nn.Tanh()
        )

        def head() -> nn.Module:
            if head_hidden == 0:
                return nn.Linear(bottleneck, n_classes)
            return nn.Sequential(
                nn.Linear(bottleneck, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n_classes)
            )

        self.heads = nn.ModuleList(head() for _ in range(n_tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        code = self.trunk(x)
        return [head(code) for head in self.heads]


@functools.lru_cache(maxsize=4)
def _multi_digits_data(n_train: int, n_test: int, data_seed: int) -> tuple:
    from moopt.data import multi_digits

    return multi_digits(n_train=n_train, n_test=n_test, seed=data_seed)


def multi_digits_losses(
    model: BottleneckNet, x: torch.Tensor, labels: list[torch.Tensor]
) -> torch.Tensor:
    """The per-task mean cross-entropies ``CE_k = −mean log softmax(z_k)[y_k]`` (K-vector)."""
    logits = model(x)
    return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, labels)])


class MultiDigitsTraining:
    """Train a :class:`BottleneckNet` on MultiDigits for one run of a sweep.

    MultiDigits is a small, offline analogue of MultiMNIST (Sabour et al. 2017), the
    two-digit benchmark Sener & Koltun (2018, "Multi-Task Learning as Multi-Objective
    Optimization") used for multi-task learning, built from scikit-learn's 8×8 digits;
    the 2-unit bottleneck is ours, to make the tasks compete.

    Adam for ``steps`` steps on minibatches of ``batch_size`` composites drawn with
    replacement (the draws seeded by ``run.seed``), at learning rate ``lr`` with a cosine
    decay to ``lr * final_lr_fraction``, on ``run.loss([CE_left, CE_right])``; the initial
    weights come from ``torch.manual_seed(run.seed)`` (or from the neighbour run in an
    ε chain, through ``run.warm_start``). Returns the two cross-entropies on the training
    set (``evaluate_on="train"``, the objective the optimizer saw, which is what the
    basin diagnosis needs) or on the held-out composites (``"test"``). Chance level is
    ``ln 10 ≈ 2.303``.

    ``multiplier_lr`` gives the MDMM multipliers their own Adam learning rate.

    :meth:`accuracies` retrains nothing: it is a helper for reports, evaluating a model.
    """

    n_objectives = 2

    def __init__(
        self,
        steps: int = 600,
        lr: float = 1e-2,
        batch_size: int = 256,
        hidden: int = 32,
        bottleneck: int = 2,
        head_hidden: int = 16,
        n_train: int = 4000,
        n_test: int = 1000,
        data_seed: int = 0,
        evaluate_on: str = "train",
        final_lr_fraction: float = 0.1,
        multiplier_lr: float | None = None,
    ) -> None:
        self.steps = _check_int(steps, "steps")
        self.lr = check_positive(lr, "lr")
        self.batch_size = _check_int(batch_size, "batch_size")
        self.hidden = _check_int(hidden, "hidden")
        self.bottleneck = _check_int(bottleneck, "bottleneck")
        self.head_hidden = _check_int(head_hidden, "head_hidden", minimum=0)
        self.n_train = _check_int(n_train, "n_train")
        self.n_test = _check_int(n_test, "n_test")
        self.data_seed = _check_int(data_seed, "data_seed", minimum=0)
        self.evaluate_on = check_choice(evaluate_on, "evaluate_on", ("train", "test"))
        self.final_lr_fraction = check_positive(final_lr_fraction, "final_lr_fraction")
        self.multiplier_lr = (
            None if multiplier_lr is None else check_positive(multiplier_lr, "multiplier_lr")
        )

    def __repr__(self) -> str:
        return (
            f"MultiDigitsTraining(steps={self.steps}, lr={self.lr}, "
            f"batch_size={self.batch_size}, hidden={self.hidden}, "
            f"bottleneck={self.bottleneck}, head_hidden={self.head_hidden}, "
            f"n_train={self.n_train}, n_test={self.n_test}, data_seed={self.data_seed}, "
            f"evaluate_on={self.evaluate_on!r}, final_lr_fraction={self.final_lr_fraction}, "
            f"multiplier_lr={self.multiplier_lr})"
        )

    def fingerprint(self) -> str:
        """Identifies the training setup in store keys."""
        return repr(self)

    def data(self) -> tuple:
        """``(train, test)`` MultiDigits splits (cached per process)."""
        return _multi_digits_data(self.n_train, self.n_test, self.data_seed)

    def build_model(self) -> BottleneckNet:
        """A freshly initialised model (seeded by the caller)."""
        return BottleneckNet(
            hidden=self.hidden, bottleneck=self.bottleneck, head_hidden=self.head_hidden
        )

    def fit(self, run: object) -> BottleneckNet:
        """Train a model for ``run`` and return it."""
        train, _ = self.data()
        torch.manual_seed(int(run.seed))
        model = self.build_model()
        run.warm_start(model)
        optimizer = _optimizer(run, model, self.lr, self.multiplier_lr)
        schedule = cosine_decay(optimizer, self.steps, self.final_lr_fraction)
        batches = torch.Generator().manual_seed(int(run.seed))
        for _ in range(self.steps):
            index = torch.randint(len(train.x), (self.batch_size,), generator=batches)
            labels = [train.y_left[index], train.y_right[index]]
            optimizer.zero_grad()
            run.loss(multi_digits_losses(model, train.x[index], labels)).backward()
            optimizer.step()
            schedule.step()
        return model

    def evaluate(self, model: BottleneckNet, split: str | None = None) -> torch.Tensor:
        """The two cross-entropies of ``model`` on ``split`` (default ``evaluate_on``)."""
        split = self.evaluate_on if split is None else split
        check_choice(split, "split", ("train", "test"))
        data = self.data()[0 if split == "train" else 1]
        with torch.no_grad():
            return multi_digits_losses(model, data.x, [data.y_left, data.y_right])

    def accuracies(self, model: BottleneckNet, split: str = "test") -> torch.Tensor:
        """The two classification accuracies of ``model`` on ``split``."""
        check_choice(split, "split", ("train", "test"))
        data = self.data()[0 if split == "train" else 1]
        with torch.no_grad():
            logits = model(data.x)
        labels = [data.y_left, data.y_right]
        return torch.stack([(z.argmax(-1) == y).double().mean() for z, y in zip(logits, labels)])

    def __call__(self, run: object) -> torch.Tensor:
        """Train one run and return its two final cross-entropies."""
        return self.evaluate(self.fit(run))


class DigitsVAE(nn.Module):
    """A Gaussian-latent VAE for the 8×8 digits (pixels in [0, 1]).

    Encoder ``64 → hidden (ReLU) → (μ, log σ²)`` of a ``latent``-dimensional diagonal
    Gaussian; decoder ``latent → hidden (ReLU) → 64`` Bernoulli logits (Kingma & Welling
    2014). :meth:`losses` returns ``(rate, distortion)`` per image, averaged over the batch:

    * rate ``R = KL(q(z|x) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1)`` (nats);
    * distortion ``D = −E_q log p(x|z)``, the binary cross-entropy summed over the 64
      pixels (grey levels act as soft targets), estimated with one reparametrised sample
      ``z = μ + σ ε`` per image.

    The β-VAE objective (Higgins et al. 2017) is ``D + β R``, a linear scalarization.
    """

    def __init__(self, n_in: int = 64, hidden: int = 64, latent: int = 4) -> None:
        super().__init__()
        for name, value in (("n_in", n_in), ("hidden", hidden), ("latent", latent)):
            _check_int(value, name)
        self.encoder = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent)
        )
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_in))

    def losses(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``(rate, distortion)`` of the batch ``x``; ``noise`` overrides the sample ``ε``."""
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * log_var) * noise
        rate = 0.5 * (mu.square() + log_var.exp() - log_var - 1).sum(-1).mean()
        logits = self.decoder(z)
        distortion = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return torch.stack([rate, distortion.mean()])


@functools.lru_cache(maxsize=2)
def _digits_data(split_seed: int) -> tuple:
    from moopt.data import digits_split

    return digits_split(seed=split_seed)


class VAETraining:
    """Train a :class:`DigitsVAE` for one run of a sweep; losses ``(rate, distortion)``.

    Full-batch Adam on the digits training split (1079 images) for ``steps`` steps with a
    cosine learning-rate decay to ``lr * final_lr_fraction``, minimising
    ``run.loss([R, D])`` (a linear weight ``(w, 1 − w)`` is the β-VAE with
    ``β = w / (1 − w)``). The returned losses are evaluated on the training split
    (``evaluate_on="train"``) or the validation split (``"val"``) with ``eval_samples``
    fixed noise draws per image, so that repeated evaluations of one model agree.
    """

    n_objectives = 2

    def __init__(
        self,
        steps: int = 1500,
        lr: float = 1e-2,
        hidden: int = 64,
        latent: int = 4,
        split_seed: int = 0,
        evaluate_on: str = "train",
        eval_samples: int = 8,
        final_lr_fraction: float = 0.05,
        multiplier_lr: float | None = 0.5,
    ) -> None:
        self.steps = _check_int(steps, "steps")
        self.lr = check_positive(lr, "lr")
        self.hidden = _check_int(hidden, "hidden")
        self.latent = _check_int(latent, "latent")
        self.split_seed = _check_int(split_seed, "split_seed", minimum=0)
        self.evaluate_on = check_choice(evaluate_on, "evaluate_on", ("train", "val"))
        self.eval_samples = _check_int(eval_samples, "eval_samples")
        self.final_lr_fraction = check_positive(final_lr_fraction, "final_lr_fraction")
        self.multiplier_lr = (
            None if multiplier_lr is None else check_positive(multiplier_lr, "multiplier_lr")
        )

    def __repr__(self) -> str:
        return (
            f"VAETraining(steps={self.steps}, lr={self.lr}, hidden={self.hidden}, "
            f"latent={self.latent}, split_seed={self.split_seed}, "
            f"evaluate_on={self.evaluate_on!r}, eval_samples={self.eval_samples}, "
            f"final_lr_fraction={self.final_lr_fraction}, multiplier_lr={self.multiplier_lr})"
        )

    def fingerprint(self) -> str:
        """Identifies the training setup in store keys."""
        return repr(self)

    def fit(self, run: object) -> DigitsVAE:
        """Train a VAE for ``run`` and return it."""
        train = _digits_data(self.split_seed)[0]
        torch.manual_seed(int(run.seed))
        model = DigitsVAE(hidden=self.hidden, latent=self.latent)
        run.warm_start(model)
        optimizer = _optimizer(run, model, self.lr, self.multiplier_lr)
        schedule = cosine_decay(optimizer, self.steps, self.final_lr_fraction)
        for _ in range(self.steps):
            optimizer.zero_grad()
            run.loss(model.losses(train.x)).backward()
            optimizer.step()
            schedule.step()
        return model

    def evaluate(self, model: DigitsVAE, split: str | None = None) -> torch.Tensor:
        """``(rate, distortion)`` on ``split``, averaged over fixed noise draws."""
        split = self.evaluate_on if split is None else split
        check_choice(split, "split", ("train", "val"))
        data = _digits_data(self.split_seed)[0 if split == "train" else 1]
        generator = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            draws = [
                model.losses(data.x, torch.randn(len(data.x), self.latent, generator=generator))
                for _ in range(self.eval_samples)
            ]
        return torch.stack(draws).mean(0)

    def __call__(self, run: object) -> torch.Tensor:
        """Train one run and return its final ``(rate, distortion)``."""
        return self.evaluate(self.fit(run))
