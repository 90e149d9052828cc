"""ModuleTraining: a small model traced one run at a time and as one vmapped batch."""

import numpy as np
import pytest
import torch
from torch import nn

from moopt.frontier import ModuleTraining, trace

GENERATOR = torch.Generator().manual_seed(0)
X = torch.randn(32, 3, generator=GENERATOR)
TARGETS = torch.stack([X @ torch.tensor([1.0, -1.0, 0.5]), X @ torch.tensor([-1.0, 0.5, 1.0])])


def make_model():
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))


def losses(forward, step):
    out = forward(X)[:, 0]
    return ((out - TARGETS) ** 2).mean(dim=1)


def test_vmapped_batch_follows_the_runs_one_by_one():
    training = ModuleTraining(make_model, losses, n_objectives=2, steps=40, lr=0.02)
    kwargs = dict(methods=["linear", "smooth_chebyshev", "epsilon"], n_points=3)
    batched = trace(training, batched=True, **kwargs)
    single = trace(training, batched=False, **kwargs)
    assert batched.methods.tolist() == single.methods.tolist()
    np.testing.assert_allclose(batched.losses, single.losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched.multipliers, single.multipliers, rtol=1e-3, atol=1e-6)
    # a linear sweep of a shared-output model trades the two regressions off
    linear = single.select("linear").losses
    assert linear[0, 0] < linear[-1, 0] and linear[0, 1] > linear[-1, 1]


def test_module_training_rejects_bad_input():
    with pytest.raises(TypeError, match="make_model"):
        ModuleTraining(3, losses, n_objectives=2)
    with pytest.raises(ValueError, match="n_objectives"):
        ModuleTraining(make_model, losses, n_objectives=1)
    with pytest.raises(ValueError, match="steps"):
        ModuleTraining(make_model, losses, n_objectives=2, steps=0)
    with pytest.raises(ValueError, match="lr"):
        ModuleTraining(make_model, losses, n_objectives=2, lr=0.0)
