"""The small float64 MLP problem shared by the hypergradient exactness tests."""

import torch
from torch import nn

DT = torch.float64


def tiny_mlp_setup(steps: int, seed: int = 0):
    """A 4-8-3 tanh MLP with random weights, ``steps`` minibatches of 8 and a validation
    batch of 32: ``(model, (x, y), (x_val, y_val))``, all float64."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=DT))
    x = torch.randn(steps, 8, 4, generator=gen, dtype=DT)
    y = torch.randn(steps, 8, 3, generator=gen, dtype=DT)
    x_val = torch.randn(32, 4, generator=gen, dtype=DT)
    y_val = torch.randn(32, 3, generator=gen, dtype=DT)
    return model, (x, y), (x_val, y_val)


def two_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The two task losses of the tests: ``[mean (out − y)², mean out²]``."""
    return torch.stack([((out - y) ** 2).mean(), (out**2).mean()])
