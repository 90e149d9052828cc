"""Tests of moopt.adaptive: RLW, DWA, FAMO, GeometricMean, ScaleInvariant.

Each method is checked against its defining formula on hand-computed cases, against the
official code's construction where it differs from ours in form only (FAMO's Adam step),
and against TorchJD where it implements the same method (RLW).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moopt._base import LossCombiner
from moopt.adaptive import DWA, FAMO, RLW, GeometricMean, ScaleInvariant

DTYPE = torch.float64


def value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


def leaf(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=DTYPE, requires_grad=True)


def task_losses(theta: torch.Tensor) -> torch.Tensor:
    """Three positive, non-linear losses of a 4-vector, on very different scales."""
    return torch.stack(
        [
            (theta - 1.0).pow(2).sum() + 0.5,
            1e3 * (theta[:2].sin().pow(2).sum() + 0.1),
            1e-3 * torch.exp(theta @ torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=DTYPE)),
        ]
    )


def jacobian(theta: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(task_losses, theta)


# --------------------------------------------------------------------------------- RLW


def draw(combiner: RLW, n_tasks: int, n_draws: int) -> torch.Tensor:
    losses = torch.ones(n_tasks, dtype=DTYPE)
    rows = []
    for _ in range(n_draws):
        combiner(losses)
        rows.append(combiner.last_weights)
    return torch.stack(rows)


@pytest.mark.parametrize("distribution", ["normal", "simplex", "onehot"])
def test_rlw_weights_on_simplex_and_combination_is_weighted_sum(distribution: str) -> None:
    rlw = RLW(distribution=distribution, generator=3)
    losses = leaf([0.5, 2.0, 7.0])
    total = rlw(losses)
    weights = rlw.last_weights
    assert weights.dtype == DTYPE and weights.shape == (3,)
    assert bool((weights >= 0).all())
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert value(total) == pytest.approx(value((weights * losses).sum()), rel=1e-12)
    total.backward()
    torch.testing.assert_close(losses.grad, weights)


def test_rlw_normal_two_tasks_follows_the_logistic_normal_law() -> None:
    """softmax(z)_0 = sigmoid(z_0 - z_1) with z_0 - z_1 ~ N(0, 2)."""
    stats = pytest.importorskip("scipy.stats")
    weights = draw(RLW(generator=0), 2, 4000)[:, 0]
    standardised = torch.logit(weights) / math.sqrt(2.0)
    assert stats.kstest(standardised.numpy(), "norm").pvalue > 1e-3


def test_rlw_simplex_is_uniform_on_the_simplex() -> None:
    """For Dirichlet(1, 1, 1) each marginal is Beta(1, 2)."""
    stats = pytest.importorskip("scipy.stats")
    weights = draw(RLW(distribution="simplex", generator=1), 3, 4000)
    for k in range(3):
        assert stats.kstest(weights[:, k].numpy(), stats.beta(1, 2).cdf).pvalue > 1e-3


def test_rlw_onehot_picks_each_task_uniformly() -> None:
    stats = pytest.importorskip("scipy.stats")
    weights = draw(RLW(distribution="onehot", generator=2), 4, 4000)
    assert bool(((weights == 0) | (weights == 1)).all())
    assert bool((weights.sum(dim=1) == 1).all())
    counts = weights.sum(dim=0).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_rlw_seeding_reset_and_state_dict_round_trip() -> None:
    first = draw(RLW(generator=7), 3, 5)
    again = draw(RLW(generator=7), 3, 5)
    other = draw(RLW(generator=8), 3, 5)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)

    rlw = RLW(generator=7)
    draw(rlw, 3, 2)
    state = rlw.state_dict()
    continued = draw(rlw, 3, 3)
    torch.testing.assert_close(continued, first[2:], rtol=0, atol=0)

    restored = RLW(generator=123)
    restored.load_state_dict(state)
    torch.testing.assert_close(draw(restored, 3, 3), first[2:], rtol=0, atol=0)

    rlw.reset()
    assert rlw.last_weights is None
    torch.testing.assert_close(draw(rlw, 3, 5), first, rtol=0, atol=0)


def test_rlw_accepts_a_generator_object() -> None:
    generator = torch.Generator().manual_seed(11)
    from_object = draw(RLW(generator=generator), 3, 3)
    torch.testing.assert_close(from_object, draw(RLW(generator=11), 3, 3), rtol=0, atol=0)


def test_rlw_global_rng_state_cannot_be_loaded_into_unseeded_rlw() -> None:
    state = RLW(generator=0).state_dict()
    with pytest.raises(ValueError, match="global RNG"):
        RLW().load_state_dict(state)


def test_rlw_matches_torchjd_random_weighting_under_the_same_seed() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for n_tasks in (2, 3, 8):
        matrix = torch.randn(n_tasks, 5, dtype=DTYPE)
        torch.manual_seed(1234 + n_tasks)
        expected = aggregation.RandomWeighting()(matrix)
        torch.manual_seed(1234 + n_tasks)
        rlw = RLW()
        rlw(torch.ones(n_tasks, dtype=DTYPE))
        torch.testing.assert_close(rlw.last_weights, expected, rtol=1e-12, atol=0)


def test_rlw_matches_torchjd_random_scalarizer_under_the_same_seed() -> None:
    scalarization = pytest.importorskip("torchjd.scalarization")
    losses = torch.tensor([0.3, 2.0, 5.0, 1.1], dtype=DTYPE)
    torch.manual_seed(99)
    expected = scalarization.Random()(losses)
    torch.manual_seed(99)
    torch.testing.assert_close(RLW()(losses), expected, rtol=1e-12, atol=0)


def test_rlw_bad_input() -> None:
    with pytest.raises(ValueError, match="distribution"):
        RLW(distribution="bernoulli")
    with pytest.raises(TypeError, match="generator"):
        RLW(generator=1.5)
    with pytest.raises(TypeError, match="generator"):
        RLW(generator=True)
    with pytest.raises(ValueError, match="expects 2"):
        RLW(n_tasks=2)(leaf([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="NaN"):
        RLW()(leaf([1.0, float("nan")]))


# --------------------------------------------------------------------------------- DWA


def dwa_reference(history: list[list[float]], temperature: float) -> list[float]:
    """Eq. 7 of Liu et al. 2019 written out with math.exp, as in the official loop."""
    previous, before = history[-1], history[-2]
    ratios = [p / b for p, b in zip(previous, before)]
    exps = [math.exp(r / temperature) for r in ratios]
    return [len(exps) * e / sum(exps) for e in exps]


def test_dwa_hand_computed_weights() -> None:
    dwa = DWA(n_tasks=2, temperature=2.0).double()
    losses = leaf([3.0, 5.0])
    assert value(dwa(losses)) == 8.0  # epoch 0: weights 1
    torch.testing.assert_close(dwa.end_epoch([1.0, 2.0]), torch.ones(2, dtype=DTYPE))
    assert value(dwa(losses)) == 8.0  # epoch 1: still 1
    weights = dwa.end_epoch([0.5, 1.8])
    # ratios (0.5, 0.9); λ_0 = 2 e^{0.25} / (e^{0.25} + e^{0.45}) = 2 / (1 + e^{0.2})
    expected = torch.tensor([0.9003320053750442, 1.0996679946249558], dtype=DTYPE)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        weights, torch.tensor(dwa_reference([[1.0, 2.0], [0.5, 1.8]], 2.0), dtype=DTYPE)
    )
    assert float(weights.sum()) == pytest.approx(2.0)
    total = dwa(losses)
    assert value(total) == pytest.approx(float(expected @ losses.detach()), rel=1e-12)
    total.backward()
    torch.testing.assert_close(losses.grad, expected)  # weights are constants (detached)


@pytest.mark.parametrize("temperature", [0.5, 2.0, 10.0])
def test_dwa_matches_the_official_recursion_over_many_epochs(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    epochs = (torch.rand(6, 3, generator=generator, dtype=DTYPE) + 0.1).tolist()
    dwa = DWA(n_tasks=3, temperature=temperature).double()
    for index, average in enumerate(epochs):
        weights = dwa.end_epoch(average)
        expected = dwa_reference(epochs[: index + 1], temperature) if index >= 1 else [1.0] * 3
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=DTYPE))


def test_dwa_records_the_epoch_average_of_training_calls_only() -> None:
    batches = [[1.0, 4.0], [3.0, 2.0], [2.0, 6.0]]
    recorded = DWA(n_tasks=2).double()
    explicit = DWA(n_tasks=2).double()
    for epoch in range(3):
        scale = 0.7**epoch * torch.tensor([1.0, 1.0 + epoch], dtype=DTYPE)
        for batch in batches:
            recorded(torch.tensor(batch, dtype=DTYPE) * scale)
        recorded.eval()
        recorded(torch.tensor([100.0, 0.01], dtype=DTYPE))  # validation: not recorded
        recorded.train()
        average = torch.tensor(batches, dtype=DTYPE).mean(dim=0) * scale
        torch.testing.assert_close(recorded.end_epoch(), explicit.end_epoch(average))
    assert not torch.allclose(recorded.weights, torch.ones(2, dtype=DTYPE))


def test_dwa_matches_torchjd_dwa() -> None:
    scalarization = pytest.importorskip("torchjd.scalarization")
    reference = scalarization.DWA(temperature=1.5)
    dwa = DWA(n_tasks=3, temperature=1.5).double()
    generator = torch.Generator().manual_seed(4)
    for epoch in range(5):
        for _ in range(3):
            losses = (torch.rand(3, generator=generator, dtype=DTYPE) + 0.2) * 0.8**epoch
            torch.testing.assert_close(dwa(losses), reference(losses), rtol=1e-12, atol=0)
        dwa.end_epoch()
        reference.step()
    assert not torch.allclose(dwa.weights, torch.ones(3, dtype=DTYPE))


def test_dwa_state_dict_round_trip_mid_epoch_and_reset() -> None:
    dwa = DWA(n_tasks=2, temperature=1.5)
    dwa.end_epoch([2.0, 1.0])
    dwa.end_epoch([1.0, 0.9])
    dwa(torch.tensor([0.8, 0.7]))
    restored = DWA(n_tasks=2, temperature=1.5)
    restored.load_state_dict(dwa.state_dict())
    for combiner in (dwa, restored):
        combiner(torch.tensor([0.6, 0.9]))
    torch.testing.assert_close(restored.end_epoch(), dwa.end_epoch())
    torch.testing.assert_close(restored.weights, dwa.weights)

    dwa.reset()
    assert int(dwa.epochs_completed) == 0 and int(dwa.epoch_batches) == 0
    torch.testing.assert_close(dwa.weights, torch.ones(2))
    dwa.end_epoch([5.0, 5.0])
    weights = dwa.end_epoch([1.0, 5.0])
    torch.testing.assert_close(weights, torch.tensor(dwa_reference([[5.0, 5.0], [1.0, 5.0]], 1.5)))
    assert float(weights[0]) < 1.0  # the task whose loss fell most gets less weight


def test_dwa_bad_input() -> None:
    with pytest.raises(TypeError, match="n_tasks"):
        DWA(n_tasks=None)
    with pytest.raises(ValueError, match="n_tasks"):
        DWA(n_tasks=0)
    with pytest.raises(ValueError, match="temperature"):
        DWA(n_tasks=2, temperature=0.0)
    with pytest.raises(TypeError, match="temperature"):
        DWA(n_tasks=2, temperature="hot")
    dwa = DWA(n_tasks=2)
    with pytest.raises(RuntimeError, match="no recorded losses"):
        dwa.end_epoch()
    with pytest.raises(ValueError, match="epoch_losses has 3"):
        dwa.end_epoch([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="epoch_losses must be positive"):
        dwa.end_epoch([1.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        dwa.end_epoch([1.0, float("nan")])
    dwa(torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="recorded epoch-average losses must be positive"):
        dwa.end_epoch()
    with pytest.raises(ValueError, match="expects 2"):
        dwa(torch.tensor([1.0]))


# -------------------------------------------------------------------------------- FAMO


def softmax_vjp(logits: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    """J_softmax(ξ)ᵀ δ by reverse-mode autograd, as the official update computes it."""
    logits = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.softmax(logits, -1), logits, grad_outputs=cotangent)
    return grad


def test_famo_combined_loss_matches_algorithm_1() -> None:
    famo = FAMO(n_tasks=3, min_losses=torch.tensor([0.1, 0.0, 0.2], dtype=DTYPE)).double()
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.3, -0.5, 0.1], dtype=DTYPE))
    losses = leaf([0.6, 2.0, 0.25])
    total = famo(losses)
    z = torch.softmax(torch.tensor([0.3, -0.5, 0.1], dtype=DTYPE), 0)
    gap = losses.detach() - torch.tensor([0.1, 0.0, 0.2], dtype=DTYPE) + 1e-8
    c = (z / gap).sum()
    assert value(total) == pytest.approx(float((gap.log() * z / c).sum()), rel=1e-12)
    total.backward()
    expected_weights = z / gap / c  # weights on the plain loss gradients
    torch.testing.assert_close(losses.grad, expected_weights)
    assert float(losses.grad.sum()) == pytest.approx(1.0, rel=1e-12)
    assert famo.logits.grad is None  # logits are never trained by the model's backward


def test_famo_gradient_on_the_model_is_the_normalised_log_gradient() -> None:
    theta = torch.tensor([0.2, -0.4, 0.9, 0.3], dtype=DTYPE, requires_grad=True)
    famo = FAMO(n_tasks=3).double()
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([1.0, 0.0, -1.0], dtype=DTYPE))
    famo.backward(task_losses(theta))
    values = task_losses(theta).detach()
    z = torch.softmax(torch.tensor([1.0, 0.0, -1.0], dtype=DTYPE), 0)
    log_gradient = (z / (values + 1e-8)) @ jacobian(theta.detach())  # Σ z_k ∇log L_k
    expected = log_gradient / (z / (values + 1e-8)).sum()
    torch.testing.assert_close(theta.grad, expected)


def test_famo_sgd_update_is_the_paper_step() -> None:
    """ξ_{t+1} = ξ_t − β (J_softmax(ξ_t)ᵀ δ_t + γ ξ_t), δ_t = log L(θ_t) − log L(θ_{t+1})."""
    beta, gamma = 0.3, 0.05
    famo = FAMO(n_tasks=3, lr=beta, gamma=gamma, logit_optimizer="sgd").double()
    logits = torch.zeros(3, dtype=DTYPE)
    steps = [([1.0, 2.0, 3.0], [0.5, 1.9, 3.1]), ([0.5, 1.9, 3.1], [0.45, 1.0, 2.0])]
    for before, after in steps:
        famo(leaf(before))
        famo.update(torch.tensor(after, dtype=DTYPE))
        delta = (torch.tensor(before, dtype=DTYPE) + 1e-8).log() - (
            torch.tensor(after, dtype=DTYPE) + 1e-8
        ).log()
        logits = logits - beta * (softmax_vjp(logits, delta) + gamma * logits)
        torch.testing.assert_close(famo.logits.detach(), logits)
    # task 0 fell most in step 1 and task 1 in step 2: both lose weight relative to task 2
    weights = famo.task_weights
    assert float(weights[2]) > float(weights[0]) and float(weights[2]) > float(weights[1])


def test_famo_adam_update_matches_the_official_torch_optim_adam_construction() -> None:
    n_tasks, lr, gamma = 4, 0.025, 0.01
    famo = FAMO(n_tasks=n_tasks, lr=lr, gamma=gamma)
    reference = torch.zeros(n_tasks, requires_grad=True)
    optimizer = torch.optim.Adam([reference], lr=lr, weight_decay=gamma)
    generator = torch.Generator().manual_seed(5)
    for _ in range(12):
        before = torch.rand(n_tasks, generator=generator) + 0.5
        after = before * (0.5 + torch.rand(n_tasks, generator=generator))
        famo(before)
        famo.update(after)
        delta = (before + 1e-8).log() - (after + 1e-8).log()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(
                torch.softmax(reference, -1), reference, grad_outputs=delta
            )
        optimizer.zero_grad()
        reference.grad = grad
        optimizer.step()
        torch.testing.assert_close(famo.logits.detach(), reference.detach(), rtol=1e-5, atol=1e-7)


def test_famo_matches_torchjd_famo() -> None:
    scalarization = pytest.importorskip("torchjd.scalarization")
    min_losses = torch.tensor([0.0, 0.1, 0.05])
    reference = scalarization.FAMO(3, min_losses=min_losses, lr=0.05, weight_decay=0.01)
    famo = FAMO(n_tasks=3, lr=0.05, gamma=0.01, min_losses=min_losses)
    generator = torch.Generator().manual_seed(3)
    for _ in range(10):
        before = torch.rand(3, generator=generator) + 0.3
        after = before * (0.6 + 0.5 * torch.rand(3, generator=generator))
        torch.testing.assert_close(famo(before), reference(before))
        famo.update(after)
        reference.update(after)
        torch.testing.assert_close(famo.logits.detach(), reference._w.detach())


def log_decrease_after_training(combiner: LossCombiner, seed: int) -> torch.Tensor:
    """``log L_k(θ_0) − log L_k(θ_T)`` after 100 Adam steps on ``combiner`` for two
    conflicting random least-squares tasks whose losses differ in scale by 1000."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(20, 5, generator=generator, dtype=DTYPE)
    b = torch.randn(20, generator=generator, dtype=DTYPE)
    c = torch.randn(20, 5, generator=generator, dtype=DTYPE)
    e = torch.randn(20, generator=generator, dtype=DTYPE)
    theta = torch.zeros(5, dtype=DTYPE, requires_grad=True)

    def losses() -> torch.Tensor:
        return torch.stack([(a @ theta - b).pow(2).mean(), 1e-3 * (c @ theta - e).pow(2).mean()])

    optimizer = torch.optim.Adam([theta], lr=0.05)
    start = losses().detach()
    for _ in range(100):
        optimizer.zero_grad()
        combiner.backward(losses())
        optimizer.step()
        if isinstance(combiner, FAMO):
            with torch.no_grad():
                combiner.update(losses())
    return start.log() - losses().detach().log()


def test_famo_raises_the_worst_task_log_loss_decrease_over_the_plain_sum() -> None:
    """FAMO's objective (the worst task's log-loss decrease), on 10 random instances: the
    sum neglects the small-scale task. Not a per-instance guarantee over a whole run."""
    from moopt.scalarize import Linear

    plain, famo = [], []
    for seed in range(10):
        plain.append(float(log_decrease_after_training(Linear([1.0, 1.0]), seed).min()))
        famo.append(float(log_decrease_after_training(FAMO(n_tasks=2).double(), seed).min()))
    wins = sum(f > p for f, p in zip(famo, plain))
    assert wins >= 8, (plain, famo)
    assert sum(famo) / 10 > sum(plain) / 10 + 0.1, (plain, famo)


def test_famo_update_contract_and_reset() -> None:
    famo = FAMO(n_tasks=2)
    with pytest.raises(RuntimeError, match="call famo"):
        famo.update(torch.tensor([1.0, 1.0]))
    famo(torch.tensor([1.0, 2.0]))
    famo.update(torch.tensor([0.5, 1.9]))
    with pytest.raises(RuntimeError, match="call famo"):
        famo.update(torch.tensor([0.4, 1.8]))
    assert float(famo.logits[0]) < float(famo.logits[1])
    famo.reset()
    torch.testing.assert_close(famo.logits.detach(), torch.zeros(2))
    assert int(famo.adam_step) == 0 and float(famo.adam_exp_avg_sq.abs().sum()) == 0.0


def test_famo_state_dict_round_trip() -> None:
    famo = FAMO(n_tasks=3, min_losses=[0.0, 0.1, 0.0])
    generator = torch.Generator().manual_seed(9)
    for _ in range(4):
        before = torch.rand(3, generator=generator) + 0.5
        famo(before)
        famo.update(before * 0.9 - torch.tensor([0.0, 0.01, 0.0]))
    restored = FAMO(n_tasks=3)
    restored.load_state_dict(famo.state_dict())
    assert {name for name, _ in restored.named_parameters()} == {"logits"}
    for combiner in (famo, restored):
        combiner(torch.tensor([1.0, 2.0, 3.0]))
        combiner.update(torch.tensor([0.7, 1.9, 2.5]))
    torch.testing.assert_close(restored.logits, famo.logits)
    torch.testing.assert_close(restored.adam_exp_avg, famo.adam_exp_avg)


def test_famo_bad_input() -> None:
    with pytest.raises(TypeError, match="n_tasks"):
        FAMO(n_tasks=None)
    with pytest.raises(ValueError, match="logit_optimizer"):
        FAMO(n_tasks=2, logit_optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        FAMO(n_tasks=2, lr=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        FAMO(n_tasks=2, gamma=-0.1)
    with pytest.raises(ValueError, match="min_losses has 3"):
        FAMO(n_tasks=2, min_losses=[0.0, 0.0, 0.0])
    famo = FAMO(n_tasks=2, min_losses=[0.5, 0.0])
    with pytest.raises(ValueError, match="losses must be >= min_losses"):
        famo(torch.tensor([0.4, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        famo(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="expects 2"):
        famo(torch.tensor([1.0, 1.0, 1.0]))
    famo(torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="new_losses must be >= min_losses"):
        famo.update(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="new_losses has 1"):
        famo.update(torch.tensor([0.9]))


# ------------------------------------------------------------- GeometricMean, ScaleInvariant


def test_geometric_mean_and_scale_invariant_values() -> None:
    assert value(GeometricMean()(leaf([2.0, 8.0]))) == pytest.approx(4.0, rel=1e-12)
    assert value(GeometricMean()(leaf([1.0, 3.0, 9.0]))) == pytest.approx(3.0, rel=1e-12)
    assert value(ScaleInvariant()(leaf([2.0, 8.0]))) == pytest.approx(math.log(16.0), rel=1e-12)
    losses = leaf([0.3, 1.7, 42.0, 5e-3])
    product_form = losses.detach().prod() ** (1 / 4)  # LibMTL's GLS definition
    assert value(GeometricMean()(losses)) == pytest.approx(float(product_form), rel=1e-12)


def test_geometric_mean_matches_torchjd() -> None:
    scalarization = pytest.importorskip("torchjd.scalarization")
    losses = leaf([0.3, 1.7, 42.0, 5e-3])
    expected = leaf([0.3, 1.7, 42.0, 5e-3])
    value_ours, value_theirs = GeometricMean()(losses), scalarization.GeometricMean()(expected)
    torch.testing.assert_close(value_ours, value_theirs, rtol=1e-12, atol=0)
    value_ours.backward()
    value_theirs.backward()
    torch.testing.assert_close(losses.grad, expected.grad, rtol=1e-12, atol=0)


def test_geometric_mean_stays_finite_where_the_product_underflows() -> None:
    losses = torch.full((20,), 1e-3, dtype=torch.float32)
    assert float(losses.prod()) == 0.0
    assert value(GeometricMean()(losses)) == pytest.approx(1e-3, rel=1e-5)


def test_gradient_relations_between_geometric_mean_and_scale_invariant() -> None:
    theta = torch.tensor([0.2, -0.4, 0.9, 0.3], dtype=DTYPE, requires_grad=True)
    values = task_losses(theta).detach()
    jac = jacobian(theta.detach())

    (grad_si,) = torch.autograd.grad(ScaleInvariant()(task_losses(theta)), theta)
    torch.testing.assert_close(grad_si, (1 / values) @ jac)  # Σ ∇L_k / L_k

    gm = GeometricMean()
    (grad_gm,) = torch.autograd.grad(gm(task_losses(theta)), theta)
    geometric_mean = float(gm(values))
    torch.testing.assert_close(grad_gm, geometric_mean / 3 * grad_si)  # ∇GM = (GM/K) ∇SI


def test_scale_invariant_gradient_ignores_loss_units() -> None:
    theta = torch.tensor([0.2, -0.4, 0.9, 0.3], dtype=DTYPE, requires_grad=True)
    scales = torch.tensor([1e-4, 1.0, 1e5], dtype=DTYPE)
    (plain,) = torch.autograd.grad(ScaleInvariant()(task_losses(theta)), theta)
    (scaled,) = torch.autograd.grad(ScaleInvariant()(scales * task_losses(theta)), theta)
    torch.testing.assert_close(plain, scaled)


@pytest.mark.parametrize("combiner_class", [GeometricMean, ScaleInvariant])
def test_log_methods_backward_matches_autograd(combiner_class: type) -> None:
    theta = torch.tensor([0.2, -0.4, 0.9, 0.3], dtype=DTYPE, requires_grad=True)
    combiner_class().backward(task_losses(theta))
    (expected,) = torch.autograd.grad(combiner_class()(task_losses(theta)), theta)
    torch.testing.assert_close(theta.grad, expected)


@pytest.mark.parametrize("combiner_class", [GeometricMean, ScaleInvariant])
def test_log_methods_bad_input(combiner_class: type) -> None:
    with pytest.raises(ValueError, match=r"losses must be positive.*index \[1\]"):
        combiner_class()(leaf([1.0, 0.0]))
    with pytest.raises(ValueError, match="losses must be positive"):
        combiner_class()(leaf([-1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        combiner_class()(leaf([1.0, float("nan")]))
    with pytest.raises(ValueError, match="expects 3"):
        combiner_class(n_tasks=3)(leaf([1.0, 2.0]))
    with pytest.raises(TypeError, match="losses"):
        combiner_class()("not losses")
    assert list(combiner_class().state_dict()) == []


def test_stateless_reset_and_module_semantics() -> None:
    for combiner in (GeometricMean(), ScaleInvariant()):
        combiner.reset()
        assert list(combiner.parameters()) == []
    assert [name for name, _ in FAMO(n_tasks=2).named_parameters()] == ["logits"]
    assert list(DWA(n_tasks=2).parameters()) == []
    assert "temperature=2.0" in repr(DWA(n_tasks=2))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RLW(generator=0),
        lambda: DWA(n_tasks=3),
        lambda: FAMO(n_tasks=3),
        GeometricMean,
        ScaleInvariant,
    ],
    ids=["RLW", "DWA", "FAMO", "GeometricMean", "ScaleInvariant"],
)
def test_backward_accumulates_the_gradient_of_the_combined_loss(
    make: Callable[[], LossCombiner],
) -> None:
    theta = torch.tensor([0.2, -0.4, 0.9, 0.3], dtype=DTYPE, requires_grad=True)
    other = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    expected_combiner, combiner = make().double(), make().double()
    (expected,) = torch.autograd.grad(expected_combiner(task_losses(theta) * other), theta)
    theta.grad = torch.ones_like(theta)
    combiner.backward(task_losses(theta) * other, params=[theta])
    torch.testing.assert_close(theta.grad, expected + 1)
    assert other.grad is None  # restricted to params


def test_example_trains_every_method(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sklearn")
    path = Path(__file__).resolve().parents[1] / "examples" / "adaptive_weighting.py"
    spec = importlib.util.spec_from_file_location("adaptive_weighting_example", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look the module up
    spec.loader.exec_module(example)
    argv = ["--epochs", "3", "--n-train", "256", "--batch-size", "64", "--out", ""]
    assert example.main(argv) == 0
    table = capsys.readouterr().out
    for name in example.METHODS:
        assert name in table
