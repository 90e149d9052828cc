"""Greedy online Hypergradient Descent (Baydin et al. 2018)."""

import pytest
import torch

from moopt.hypergrad.hd import SGDHD, AdamHD

H = torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64)


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * (H * theta**2).sum()


def run(optimizer_cls, steps: int, **kwargs):
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_cls([theta], **kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        quadratic(theta).backward()
        optimizer.step()
    return theta.detach(), optimizer


def test_sgd_hd_matches_hand_computed_steps():
    lr0, beta, mu = 0.1, 0.005, 0.5
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    # step 1: no previous direction, lr stays lr0; the momentum buffer starts at the gradient
    g0 = H * theta0
    theta1 = theta0 - lr0 * g0
    # step 2: lr1 = lr0 + beta * g1 . d0 with d0 = b0 = g0
    g1 = H * theta1
    lr1 = lr0 + beta * float(g1 @ g0)
    b1 = mu * g0 + g1
    theta2 = theta1 - lr1 * b1
    # step 3: d1 = b1
    g2 = H * theta2
    lr2 = lr1 + beta * float(g2 @ b1)
    theta3 = theta2 - lr2 * (mu * b1 + g2)

    theta, optimizer = run(SGDHD, 3, lr=lr0, hyper_lr=beta, momentum=mu)
    assert torch.allclose(theta, theta3, rtol=1e-12)
    assert optimizer.lr_history == [[lr0], [pytest.approx(lr1)], [pytest.approx(lr2)]]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr2)


def test_sgd_hd_hypergradient_is_the_derivative_of_the_loss_in_the_previous_lr():
    """The rule's ``-g_t . d_{t-1}`` equals d f(θ_{t-1} - α d_{t-1}) / dα (autograd)."""
    theta, optimizer = run(SGDHD, 4, lr=0.1, hyper_lr=0.0, momentum=0.9, weight_decay=0.01)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    direction = state["previous_direction"]
    alpha = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    theta_prev = theta + 0.1 * direction  # undo the last step
    moved = theta_prev - alpha * direction
    loss = quadratic(moved) + 0.005 * (moved**2).sum()
    (autograd_value,) = torch.autograd.grad(loss, alpha)
    grad_now = H * theta + 0.01 * theta
    assert float(autograd_value) == pytest.approx(-float(grad_now @ direction), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
        dict(lr=0.1, momentum=0.5, dampening=0.3),
    ],
)
def test_sgd_hd_without_hypergradient_is_torch_sgd(kwargs):
    ours, _ = run(SGDHD, 25, hyper_lr=0.0, **kwargs)
    reference, _ = run(torch.optim.SGD, 25, **kwargs)
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs", [dict(lr=0.05), dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.1)]
)
def test_adam_hd_without_hypergradient_is_torch_adam(kwargs):
    ours, _ = run(AdamHD, 25, hyper_lr=0.0, **kwargs)
    reference, _ = run(torch.optim.Adam, 25, **kwargs)
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-12)


def test_adam_hd_matches_hand_computed_second_step():
    lr0, beta, (b1, b2), eps = 0.1, 0.01, (0.9, 0.999), 1e-8
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g0 = H * theta0
    m, v = (1 - b1) * g0, (1 - b2) * g0**2
    d0 = (m / (1 - b1)) / (v.sqrt() / (1 - b2) ** 0.5 + eps)
    theta1 = theta0 - lr0 * d0
    g1 = H * theta1
    lr1 = lr0 + beta * float(g1 @ d0)
    m, v = b1 * m + (1 - b1) * g1, b2 * v + (1 - b2) * g1**2
    d1 = (m / (1 - b1**2)) / (v.sqrt() / (1 - b2**2) ** 0.5 + eps)
    theta2 = theta1 - lr1 * d1

    theta, optimizer = run(AdamHD, 2, lr=lr0, hyper_lr=beta)
    assert torch.allclose(theta, theta2, rtol=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr1)


def test_hd_raises_the_learning_rate_when_steps_are_too_small():
    _, optimizer = run(SGDHD, 30, lr=1e-3, hyper_lr=1e-2)
    assert optimizer.param_groups[0]["lr"] > 1e-3


def test_lr_is_clamped_at_min_lr():
    _, optimizer = run(SGDHD, 10, lr=0.6, hyper_lr=10.0, min_lr=0.01)
    assert min(lr for (lr,) in optimizer.lr_history) >= 0.01


def test_bad_input():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="lr must be non-negative"):
        SGDHD(p, lr=-1.0)
    with pytest.raises(ValueError, match="hyper_lr"):
        SGDHD(p, lr=0.1, hyper_lr=-1.0)
    with pytest.raises(TypeError, match="momentum must be a number"):
        SGDHD(p, lr=0.1, momentum="high")
    with pytest.raises(ValueError, match="nesterov"):
        SGDHD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        AdamHD(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="betas"):
        AdamHD(p, betas=0.9)
