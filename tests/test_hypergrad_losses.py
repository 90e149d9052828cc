"""moopt.hypergrad.cross_entropy: F.cross_entropy's value and derivatives, forward mode too."""

import pytest
import torch
from torch.func import jvp
from torch.nn import functional as F

from moopt.hypergrad import cross_entropy


def test_value_gradient_and_tangent_equal_torch_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=gen, dtype=torch.float64) * 4
    targets = torch.randint(5, (16,), generator=gen)
    direction = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    ours = jvp(lambda z: cross_entropy(z, targets), (logits,), (direction,))
    theirs = jvp(lambda z: F.cross_entropy(z, targets), (logits,), (direction,))
    torch.testing.assert_close(ours, theirs)
    grad = torch.func.grad(lambda z: cross_entropy(z, targets))(logits)
    torch.testing.assert_close(grad, torch.func.grad(lambda z: F.cross_entropy(z, targets))(logits))


def test_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        cross_entropy(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
