"""Linear, Chebyshev and uncertainty weighting against their formulas and analytic answers."""

import math

import pytest
import torch

import moopt
from moopt.problems import Circle


def test_linear_is_weighted_sum_and_differentiable_in_weights():
    weights = torch.tensor([0.2, 0.8], requires_grad=True)
    losses = torch.tensor([3.0, 5.0], requires_grad=True)
    combined = moopt.Linear(weights)(losses)
    assert combined.item() == pytest.approx(0.2 * 3 + 0.8 * 5)
    grad_w, grad_l = torch.autograd.grad(combined, [weights, losses])
    torch.testing.assert_close(grad_w, losses.detach())
    torch.testing.assert_close(grad_l, weights.detach())


def test_backward_accumulates_like_loss_backward():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3)
    weights = [0.3, 1.7]

    def losses():
        out = model(x)
        return [out[:, 0].pow(2).mean(), out[:, 1].abs().mean()]

    l0, l1 = losses()
    (0.3 * l0 + 1.7 * l1).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    combiner = moopt.Linear(weights)
    combiner.backward(losses())
    combiner.backward(losses(), params=model.parameters())  # accumulates a second time
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, 2 * e)


def test_chebyshev_plain_and_smooth_formulas():
    losses = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    w, z = torch.tensor([1.0, 0.5, 3.0]), torch.tensor([0.1, 0.0, 0.2])
    plain = moopt.Chebyshev(w, ideal=z)(losses)
    assert plain.item() == pytest.approx(max(0.9, 1.0, 0.9))
    mu = 0.1
    smooth = moopt.Chebyshev(w, ideal=z, mu=mu)(losses)
    assert smooth.item() == pytest.approx(
        mu * math.log(sum(math.exp(v / mu) for v in (0.9, 1, 0.9)))
    )
    assert plain.item() <= smooth.item() <= plain.item() + mu * math.log(3) + 1e-12
    tiny = moopt.Chebyshev(w, ideal=z, mu=1e-4)(losses)
    assert tiny.item() == pytest.approx(plain.item(), abs=1e-3)


def test_chebyshev_is_differentiable_in_weights():
    weights = torch.tensor([1.0, 2.0], requires_grad=True)
    combined = moopt.Chebyshev(weights, mu=0.5)(torch.tensor([1.0, 1.0]))
    (grad,) = torch.autograd.grad(combined, weights)
    softmax = torch.softmax(torch.tensor([1.0, 2.0]) / 0.5, 0)
    torch.testing.assert_close(grad, softmax * torch.tensor([1.0, 1.0]))


def _train_batched(problem, weights_matrix, combine, theta0, steps, lr, decay=False):
    theta = torch.nn.Parameter(theta0.clone())
    optimizer = torch.optim.SGD([theta], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if decay else None
    for _ in range(steps):
        optimizer.zero_grad()
        combine(problem.losses(theta), weights_matrix).sum().backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return problem.losses(theta).detach()


def test_linear_weights_on_concave_circle_end_at_an_end():
    problem = Circle()
    w = torch.linspace(0.1, 0.9, 9, dtype=torch.float64).repeat_interleave(5)
    weights = torch.stack([w, 1 - w], dim=-1)
    theta0 = problem.sample_init(len(w), torch.Generator().manual_seed(0))
    final = _train_batched(
        problem,
        weights,
        lambda losses, wm: (wm * losses).sum(-1),
        theta0,
        steps=2000,
        lr=0.1,
    )
    ends = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    distance = torch.cdist(final, ends).min(dim=1).values
    assert bool((distance < 0.05).all()), final[distance >= 0.05]
    assert 0 < int((final[:, 0] < 0.5).sum()) < len(w)  # both ends are reached


@pytest.mark.parametrize("mu", [None, 0.002])
@pytest.mark.parametrize("convex", [False, True])
def test_chebyshev_reaches_tchebycheff_point(mu, convex):
    # The smooth form's optimum is biased by O(μ) (its softmax weights must balance the
    # front's slope), so it is checked with a small μ.
    problem = Circle(convex=convex)
    prefs = [(0.5, 0.5), (0.8, 0.2), (0.3, 0.7)]
    weights = torch.tensor(prefs, dtype=torch.float64)
    theta0 = torch.tensor([[0.0, 0.5]], dtype=torch.float64).repeat(len(prefs), 1)
    final = _train_batched(
        problem,
        weights,
        lambda losses, wm: torch.stack([moopt.Chebyshev(r, mu=mu)(l) for r, l in zip(wm, losses)]),
        theta0,
        steps=2000,
        lr=0.05,
        decay=True,
    )
    for row, pref in zip(final, prefs):
        exact = problem.chebyshev_point(list(pref))
        assert (row - exact).abs().max() < 1e-2, (pref, row, exact)


@pytest.mark.parametrize("kinds", ["regression", "classification"])
def test_uncertainty_weighting_learns_loss_scale(kinds):
    # Two linear regressions with noise variances 1 and 9: at the joint optimum the
    # per-task MSE is the noise variance, and σ² → 2·c·MSE (c = 1/2 or 1).
    generator = torch.Generator().manual_seed(0)
    n, dim = 1000, 3
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    noise_var = torch.tensor([1.0, 9.0], dtype=torch.float64)
    true_w = torch.randn(dim, 2, generator=generator, dtype=torch.float64)
    y = x @ true_w + noise_var.sqrt() * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    model = torch.nn.Linear(dim, 2).double()
    combiner = moopt.UncertaintyWeighting(2, kinds=kinds).double()
    optimizer = torch.optim.Adam([*model.parameters(), *combiner.parameters()], lr=0.05)
    for _ in range(500):
        optimizer.zero_grad()
        mse = ((model(x) - y) ** 2).mean(dim=0)
        combiner.backward(mse)
        optimizer.step()
    mse = ((model(x) - y) ** 2).mean(dim=0).detach()
    factor = 1.0 if kinds == "regression" else 2.0
    torch.testing.assert_close(combiner.variance, factor * mse, rtol=1e-3, atol=0)
    torch.testing.assert_close(mse, noise_var, rtol=0.1, atol=0)
    combiner.reset()
    assert bool((combiner.log_variance == 0).all())


def test_uncertainty_weighting_formula_and_state_dict():
    combiner = moopt.UncertaintyWeighting(2, kinds=["regression", "classification"])
    with torch.no_grad():
        combiner.log_variance.copy_(torch.tensor([0.4, -0.3]))
    losses = torch.tensor([2.0, 3.0])
    expected = 0.5 * math.exp(-0.4) * 2 + 0.2 + math.exp(0.3) * 3 - 0.15
    assert combiner(losses).item() == pytest.approx(expected, rel=1e-6)
    copy = moopt.UncertaintyWeighting(2, kinds=["regression", "classification"])
    copy.load_state_dict(combiner.state_dict())
    assert copy(losses).item() == pytest.approx(expected, rel=1e-6)


def test_linear_built_inside_torch_func_keeps_tangents():
    # Built inside jvp (as a hypergradient unroll does), the weights are wrapped tensors
    # that report requires_grad=False; the combiner must keep them, not copy them.
    losses = torch.tensor([3.0, 5.0], dtype=torch.float64)

    def combined(weights):
        return moopt.Linear(weights)(losses)

    weights = torch.tensor([0.2, 0.8], dtype=torch.float64)
    _, tangent = torch.func.jvp(combined, (weights,), (torch.tensor([1.0, 0.0]).double(),))
    assert tangent.item() == pytest.approx(3.0)
    _, tangent = torch.func.jvp(
        lambda w: moopt.Chebyshev(w, mu=1.0)(losses), (weights,), (torch.ones(2).double(),)
    )
    assert tangent.item() != 0.0
