"""FDS through MDMM-constrained training: multipliers ascend, bounds and damping are tunable."""

import pytest
import torch
from torch import nn

import moopt
from moopt.hypergrad import SGD, Schedule, fds_hypergradients, reverse_hypergradients

DT = torch.float64
T = 30


class _Constrained(nn.Module):
    """min mse(net(x), y) subject to mean(net(x)²) <= bound, as one module."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
        self.mdmm = moopt.MDMM([moopt.Constraint("<=", bound=0.01, damping=2.0)])

    def forward(self, x, y, bound=None, damping=None):
        out = self.net(x)
        mdmm = self.mdmm
        values = [(out**2).mean()]
        if bound is None and damping is None:
            return mdmm(((out - y) ** 2).mean(), values).lagrangian
        overrides = {"constraints.0.bound": bound, "constraints.0.damping": damping}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        objective = ((out - y) ** 2).mean()
        return torch.func.functional_call(mdmm, overrides, (objective, values)).lagrangian


def _setup():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _Constrained().to(DT)
    x = torch.randn(T, 8, 3, generator=gen, dtype=DT)
    y = 2 * torch.randn(T, 8, 2, generator=gen, dtype=DT)
    return model, x, y


def test_multipliers_ascend_exactly_as_with_torch_optim():
    model, x, y = _setup()
    reference = _Constrained().to(DT)
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.5)
    for t in range(T):
        optimizer.zero_grad()
        reference(x[t], y[t]).backward()
        optimizer.step()
    result = fds_hypergradients(
        model,
        lambda f, b, h: f(*b),
        lambda f: f(x[0], y[0]),
        SGD(lr=Schedule(0.05, steps=T, dtype=DT), momentum=0.5),
        lambda t: (x[t], y[t]),
    )
    multiplier = result.params["mdmm.constraints.0.multiplier"]
    assert float(multiplier) > 0  # ascended: the constraint is violated on this data
    for name, param in reference.named_parameters():
        torch.testing.assert_close(result.params[name], param.detach(), rtol=0, atol=1e-12)


def test_constraint_bound_and_learning_rate_hypergradients():
    model, x, y = _setup()
    x_val, y_val = x[0], y[0]

    def train_loss(model_fn, batch, hypers):
        return model_fn(*batch, bound=hypers["bound"])

    def run(make):
        return make(
            model,
            train_loss,
            lambda f: f(x_val, y_val, bound=torch.tensor(0.0, dtype=DT)),  # the Lagrangian
            SGD(lr=Schedule(0.05, steps=T, windows=2, dtype=DT), momentum=0.5),
            lambda t: (x[t], y[t]),
            hypers={"bound": Schedule(0.01, steps=T, dtype=DT)},
        )

    fds, rev = run(fds_hypergradients), run(reverse_hypergradients)
    for name in ("lr", "bound"):
        assert float(fds.hypergrads[name].abs().max()) > 0
        torch.testing.assert_close(fds.hypergrads[name], rev.hypergrads[name], rtol=1e-9, atol=0)


def test_constraint_damping_hypergradient_matches_reverse_mode_and_finite_differences():
    model, x, y = _setup()
    x_val, y_val = x[0], y[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def train_loss(model_fn, batch, hypers):
        return model_fn(*batch, damping=hypers["damping"])

    fixed = {"bound": torch.tensor(0.0, dtype=DT), "damping": torch.tensor(2.0, dtype=DT)}

    def val_loss(model_fn):  # the Lagrangian at bound 0 with c = 2 whatever c trained
        return model_fn(x_val, y_val, **fixed)

    def run(make):
        return make(
            model,
            train_loss,
            val_loss,
            SGD(lr=Schedule(0.05, steps=T, dtype=DT), momentum=0.5),
            lambda t: (x[t], y[t]),
            hypers={"damping": Schedule(2.0, steps=T, dtype=DT)},
        )

    fds, rev = run(fds_hypergradients), run(reverse_hypergradients)
    assert float(fds.hypergrads["damping"].abs()) > 0
    torch.testing.assert_close(
        fds.hypergrads["damping"], rev.hypergrads["damping"], rtol=1e-9, atol=0
    )

    def plain_run(damping: float) -> float:  # torch.optim, the damping set on the module
        reference = _Constrained().to(DT)
        reference.load_state_dict(state)
        reference.mdmm.constraints[0].damping.fill_(damping)
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.5)
        for t in range(T):
            optimizer.zero_grad()
            reference(x[t], y[t]).backward()
            optimizer.step()
        with torch.no_grad():
            return float(reference(x_val, y_val, **fixed))

    eps = 1e-5
    central = (plain_run(2.0 + eps) - plain_run(2.0 - eps)) / (2 * eps)
    assert float(fds.hypergrads["damping"].sum()) == pytest.approx(central, rel=1e-5)


def test_damping_is_a_setting_not_state():
    constraint = moopt.Constraint("<=", bound=0.5, damping=3.0)
    assert "damping" not in constraint.state_dict() and float(constraint.damping) == 3.0
    tuned = torch.tensor(2.0, requires_grad=True)
    assert moopt.Constraint("<=", damping=tuned).damping is tuned
    for bad, error in ((torch.ones(2), ValueError), (-1.0, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="damping"):
            moopt.Constraint("<=", damping=bad)
    with pytest.raises(ValueError, match="damping must be positive for inequality"):
        moopt.Constraint("<=", damping=torch.tensor(0.0))


def test_other_gradient_hooks_are_refused():
    model = nn.Linear(3, 2).to(DT)
    model.weight.register_hook(lambda g: 2 * g)
    with pytest.raises(ValueError, match="'weight' has a gradient hook"):
        fds_hypergradients(
            model,
            lambda f, b, h: f(b).sum(),
            lambda f: f(torch.ones(1, 3, dtype=DT)).sum(),
            SGD(lr=Schedule(0.1, steps=2, dtype=DT)),
            lambda t: torch.ones(1, 3, dtype=DT),
        )
