"""GradNorm against a hand-computed example and the paper's definitions."""

from __future__ import annotations

import math

import pytest
import torch
from engine_aggregators import MultiTaskNet, task_losses
from torch import nn

from moopt import GradNorm


def hand_losses(s: torch.Tensor) -> torch.Tensor:
    """Shared scalar s; L_1 = (2s)², L_2 = 3s, so ∂L_1/∂s = 8s and ∂L_2/∂s = 3."""
    return torch.stack([(2 * s) ** 2, 3 * s])


def test_hand_computed_two_steps():
    s = torch.tensor(1.0, requires_grad=True)
    gradnorm = GradNorm(n_tasks=2, shared=s, alpha=1.0)
    gradnorm.backward(hand_losses(s))
    # Step 0: L(0) = (4, 3), r = (1, 1), G = (8, 3), Ḡ = 5.5, target = (5.5, 5.5)
    # ∂L_grad/∂w = (sign(8 - 5.5)·8, sign(3 - 5.5)·3) = (8, -3); ∂(L_1 + L_2)/∂s = 11
    torch.testing.assert_close(gradnorm.initial_losses, torch.tensor([4.0, 3.0]))
    torch.testing.assert_close(gradnorm.task_weights.grad, torch.tensor([8.0, -3.0]))
    torch.testing.assert_close(s.grad, torch.tensor(11.0))
    with torch.no_grad():  # an SGD step of 0.1 on w, s moved to 0.5 by hand
        gradnorm.task_weights -= 0.1 * gradnorm.task_weights.grad
        s.fill_(0.5)
    gradnorm.task_weights.grad = None
    s.grad = None
    # w = (0.2, 1.3) is renormalised to sum 2: (4/15, 26/15). L = (1, 1.5), L~ = (1/4, 1/2),
    # r = (2/3, 4/3); grads at s: (4, 3); G = (16/15, 78/15); Ḡ = 47/15;
    # target = (94/45, 188/45); G - target = (-46/45, 46/45) -> ∂/∂w = (-4, 3)
    torch.testing.assert_close(gradnorm.normalised_weights, torch.tensor([4 / 15, 26 / 15]))
    gradnorm.backward(hand_losses(s))
    torch.testing.assert_close(gradnorm.task_weights.detach(), torch.tensor([4 / 15, 26 / 15]))
    torch.testing.assert_close(gradnorm.task_weights.grad, torch.tensor([-4.0, 3.0]))
    torch.testing.assert_close(s.grad, torch.tensor(4 / 15 * 4 + 26 / 15 * 3))
    torch.testing.assert_close(gradnorm.initial_losses, torch.tensor([4.0, 3.0]))


def paper_reference(losses_fn, net, shared, weights, initial, alpha):
    """The paper's definitions, written out with one autograd.grad per task."""
    losses = losses_fn()
    norms = torch.stack(
        [
            torch.cat(
                [g.reshape(-1) for g in torch.autograd.grad(losses[i], shared, retain_graph=True)]
            ).norm()
            for i in range(losses.numel())
        ]
    )
    ratios = losses.detach() / initial
    r = ratios / ratios.mean()
    g = weights * norms
    target = g.mean() * r**alpha
    weight_grad = torch.sign(g - target) * norms
    net_grads = torch.autograd.grad((weights * losses).sum(), list(net.parameters()))
    return weight_grad, torch.cat([x.reshape(-1) for x in net_grads])


@pytest.mark.parametrize("alpha", [0.12, 1.5])
def test_matches_paper_definitions_on_a_network(alpha):
    torch.manual_seed(0)
    net = MultiTaskNet(n_tasks=3).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    shared_layer = net.trunk[2]
    gradnorm = GradNorm(n_tasks=3, shared=shared_layer, alpha=alpha).double()

    def losses_fn():
        return task_losses(net(x)[0], y)

    initial = losses_fn().detach()
    optimizer = torch.optim.SGD([*net.parameters(), *gradnorm.parameters()], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        gradnorm.backward(losses_fn())
        weights = gradnorm.task_weights.detach().clone()
        shared = list(shared_layer.parameters())
        expected_w, expected_net = paper_reference(losses_fn, net, shared, weights, initial, alpha)
        torch.testing.assert_close(gradnorm.task_weights.grad, expected_w)
        got_net = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(got_net, expected_net)
        assert math.isclose(float(weights.sum()), 3.0)
        optimizer.step()
    assert not torch.allclose(gradnorm.task_weights.detach(), torch.ones(3, dtype=torch.float64))


def test_weights_are_parameters_state_and_reset():
    s = torch.tensor(1.0, requires_grad=True)
    gradnorm = GradNorm(n_tasks=2, shared=[s])
    assert [p is gradnorm.task_weights for p in gradnorm.parameters()] == [True]
    assert set(gradnorm.state_dict()) == {"task_weights", "initial_losses"}
    assert bool(torch.isnan(gradnorm.initial_losses).all())
    gradnorm.backward(hand_losses(s))
    with torch.no_grad():
        gradnorm.task_weights.copy_(torch.tensor([0.5, 2.0]))
    restored = GradNorm(n_tasks=2, shared=s)
    restored.load_state_dict(gradnorm.state_dict())
    torch.testing.assert_close(restored.initial_losses, torch.tensor([4.0, 3.0]))
    gradnorm.reset()
    torch.testing.assert_close(gradnorm.task_weights.detach(), torch.ones(2))
    assert bool(torch.isnan(gradnorm.initial_losses).all())
    with torch.no_grad():
        s.fill_(2.0)
    gradnorm.backward(hand_losses(s))  # after reset, L(0) is taken again
    torch.testing.assert_close(gradnorm.initial_losses, torch.tensor([16.0, 6.0]))


def test_network_gradient_does_not_reach_the_weights_and_params_subset():
    s = torch.tensor(1.0, requires_grad=True)
    head = torch.tensor(2.0, requires_grad=True)
    gradnorm = GradNorm(n_tasks=2, shared=s, alpha=1.0)
    gradnorm.backward(torch.stack([(2 * s) ** 2 * head, 3 * s]), params=[s])
    assert head.grad is None
    torch.testing.assert_close(s.grad, torch.tensor(16.0 + 3.0))
    # only L_grad: G = (16, 3), Ḡ = 9.5 -> (16, -3); Σ w L would have added (8, 3)
    torch.testing.assert_close(gradnorm.task_weights.grad, torch.tensor([16.0, -3.0]))


def test_bad_input():
    s = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(2, shared=s, alpha=-1.0)
    with pytest.raises(TypeError, match="shared"):
        GradNorm(2, shared=3.0)
    with pytest.raises(ValueError, match="shared is empty"):
        GradNorm(2, shared=nn.ReLU())
    with pytest.raises(ValueError, match=r"shared\[0\].*does not require grad"):
        GradNorm(2, shared=torch.ones(2))
    with pytest.raises(ValueError, match="expects 2"):
        GradNorm(2, shared=s).backward(torch.stack([s, s, s]))
    other = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match=r"no loss depends on shared\[0\]"):
        GradNorm(2, shared=other).backward(hand_losses(s))
    with pytest.raises(ValueError, match=r"task\(s\) \[1\] have initial loss 0"):
        GradNorm(2, shared=s).backward(torch.stack([s, s * 0]))
    with pytest.raises(ValueError, match="min_weight"):
        GradNorm(2, shared=s, min_weight=1.0)
    strict = GradNorm(2, shared=s, min_weight=0.0)
    strict.backward(hand_losses(s))
    with torch.no_grad():
        strict.task_weights[1] = -0.5
    with pytest.raises(ValueError, match=r"not all positive.*task\(s\) \[1\]"):
        strict.backward(hand_losses(s))
    with torch.no_grad():
        strict.task_weights[1] = float("nan")
    with pytest.raises(ValueError, match=r"not all positive.*task\(s\) \[1\]"):
        strict.backward(hand_losses(s))


def test_weights_below_min_weight_are_raised_then_renormalised():
    s = torch.tensor(1.0, requires_grad=True)
    gradnorm = GradNorm(2, shared=s, min_weight=0.01)
    with torch.no_grad():
        gradnorm.task_weights.copy_(torch.tensor([3.0, -0.2]))
    gradnorm.backward(hand_losses(s))
    expected = torch.tensor([3.0, 0.01]) * (2 / 3.01)
    torch.testing.assert_close(gradnorm.task_weights.detach(), expected)


@pytest.mark.slow
def test_multitask_example_runs_and_writes_the_figure(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    monkeypatch.setenv("MPLBACKEND", "Agg")
    path = Path(__file__).parents[1] / "examples" / "multitask_methods.py"
    spec = importlib.util.spec_from_file_location("multitask_methods", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look the module up
    spec.loader.exec_module(example)
    out = tmp_path / "figure.png"
    results = example.main(["--epochs", "2", "--n-train", "256", "--out", str(out)])
    assert out.stat().st_size > 0
    assert set(results) == set(example.METHODS)
    for history in results.values():
        assert len(history.losses) == 3
        assert all(math.isfinite(v) for pair in history.losses for v in pair)
        assert history.losses[-1][1] < history.losses[0][1]  # the regression task learnt
