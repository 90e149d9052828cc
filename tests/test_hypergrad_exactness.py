"""FDS hypergradients are exact: they equal the reverse-mode baseline (1e-8 relative) and
central finite differences of an independent torch.optim training loop (1e-5 relative),
on a small MLP over 60 steps with momentum on (float64)."""

import copy

import pytest
import torch
from tiny_mlp import tiny_mlp_setup, two_losses
from torch import nn

import moopt
from moopt.hypergrad import (
    SGD,
    Adam,
    Schedule,
    fds_hypergradients,
    forward_unroll,
    reverse_hypergradients,
)

T = 60
DT = torch.float64


def _setup(seed=0):
    return tiny_mlp_setup(T, seed)


COMBINER = moopt.Linear(torch.tensor([1.0, 1.0], dtype=DT))


def _train_loss(model_fn, batch, hypers):
    x, y = batch
    losses = two_losses(model_fn(x), y)
    if "alpha" not in hypers:
        return losses[0]
    # L1 + alpha * L2 through moopt.Linear; functional_call keeps the weights' tangents.
    weights = torch.cat([torch.ones(1, dtype=DT), hypers["alpha"].reshape(1)])
    return torch.func.functional_call(COMBINER, {"weights": weights}, (losses,))


def _reference_val(model, data, val, make_optimizer, per_step):
    """Independent reference: plain torch.optim training, hyperparameters set per step."""
    x, y = data
    net = copy.deepcopy(model)
    optimizer = make_optimizer(net.parameters())
    for t in range(T):
        group = optimizer.param_groups[0]
        values = {name: float(v[t]) for name, v in per_step.items()}
        for name, value in values.items():
            if name == "beta1":
                group["betas"] = (value, group["betas"][1])
            elif name != "alpha":
                group[name] = value
        optimizer.zero_grad()
        out = net(x[t])
        losses = two_losses(out, y[t])
        loss = losses[0] + values["alpha"] * losses[1] if "alpha" in values else losses[0]
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(((net(val[0]) - val[1]) ** 2).mean())


def _finite_differences(schedules, evaluate, eps=1e-6):
    grads = {}
    for name, schedule in schedules.items():
        flat = torch.zeros(schedule.numel, dtype=DT)
        base = schedule.raw.clone()
        for n in range(schedule.numel):
            values = []
            for sign in (1, -1):
                raw = base.clone().reshape(-1)
                raw[n] += sign * eps
                schedule.raw = raw.reshape(base.shape)
                per_step = {k: s.per_step() for k, s in schedules.items()}
                values.append(evaluate(per_step))
            schedule.raw = base
            flat[n] = (values[0] - values[1]) / (2 * eps)
        grads[name] = flat.reshape(base.shape)
    return grads


def _max_rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _check_all(model, data, val, optimizer, hypers, make_torch_optimizer):
    def val_loss(model_fn):
        return ((model_fn(val[0]) - val[1]) ** 2).mean()

    def batches(t):
        return data[0][t], data[1][t]

    fds = fds_hypergradients(model, _train_loss, val_loss, optimizer, batches, hypers=hypers)
    rev = reverse_hypergradients(model, _train_loss, val_loss, optimizer, batches, hypers=hypers)
    schedules = {**optimizer.schedules(), **hypers}
    fd = _finite_differences(
        schedules, lambda ps: _reference_val(model, data, val, make_torch_optimizer, ps)
    )
    assert abs(float(fds.val_loss) - float(rev.val_loss)) < 1e-12
    for name in schedules:
        assert float(fds.hypergrads[name].abs().max()) > 0, name
        assert _max_rel(fds.hypergrads[name], rev.hypergrads[name]) < 1e-8, name
        assert _max_rel(fds.hypergrads[name], fd[name]) < 1e-5, name
    return fds


def test_sgd_lr_windows_momentum_weight_decay_and_loss_weight():
    model, data, val = _setup()
    lr = Schedule(torch.tensor([0.3, 0.2, 0.15, 0.1, 0.05], dtype=DT), steps=T, windows=5, dtype=DT)
    momentum = Schedule(0.7, steps=T, dtype=DT)
    weight_decay = Schedule(0.01, steps=T, dtype=DT)
    alpha = Schedule(0.3, steps=T, dtype=DT)
    optimizer = SGD(lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=0.1)
    result = _check_all(
        model,
        data,
        val,
        optimizer,
        {"alpha": alpha},
        lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.7, weight_decay=0.01, dampening=0.1),
    )
    assert result.hypergrads["lr"].shape == (5,)
    assert result.train_losses.shape == (T,)


def test_combiner_built_inside_the_loss_matches_functional_call():
    model, data, val = _setup()
    optimizer = SGD(lr=0.1, momentum=0.5)

    def inline_loss(model_fn, batch, hypers):
        x, y = batch
        weights = torch.cat([torch.ones(1, dtype=DT), hypers["alpha"].reshape(1)])
        return moopt.Linear(weights)(two_losses(model_fn(x), y))

    def val_loss(model_fn):
        return ((model_fn(val[0]) - val[1]) ** 2).mean()

    def batches(t):
        return data[0][t], data[1][t]

    results = [
        fds_hypergradients(
            model,
            loss,
            val_loss,
            optimizer,
            batches,
            hypers={"alpha": Schedule(0.3, steps=T, dtype=DT)},
        ).hypergrads["alpha"]
        for loss in (inline_loss, _train_loss)
    ]
    assert float(results[0].abs().max()) > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=0)


def test_adam_lr_and_beta1():
    model, data, val = _setup(1)
    lr = Schedule(torch.tensor([0.02, 0.01], dtype=DT), steps=T, windows=2, dtype=DT)
    beta1 = Schedule(0.8, steps=T, dtype=DT)
    optimizer = Adam(lr=lr, betas=(beta1, 0.99), weight_decay=0.01)
    _check_all(
        model,
        data,
        val,
        optimizer,
        {},
        lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.99), weight_decay=0.01),
    )


def test_one_learning_rate_per_step_and_reparametrised_schedules():
    model, data, val = _setup(2)
    horizon = 12
    lr = Schedule(0.1, steps=horizon, windows=horizon, transform="log", dtype=DT)
    momentum = Schedule(0.5, steps=horizon, transform="sigmoid", dtype=DT)
    optimizer = SGD(lr=lr, momentum=momentum)

    def val_loss(model_fn):
        return ((model_fn(val[0]) - val[1]) ** 2).mean()

    def batches(t):
        return data[0][t], data[1][t]

    fds = fds_hypergradients(model, _train_loss, val_loss, optimizer, batches)
    rev = reverse_hypergradients(model, _train_loss, val_loss, optimizer, batches)
    columns = fds_hypergradients(
        model, _train_loss, val_loss, optimizer, batches, tangents="columns"
    )
    for name in ("lr", "momentum"):
        assert _max_rel(fds.hypergrads[name], rev.hypergrads[name]) < 1e-8
        assert _max_rel(columns.hypergrads[name], rev.hypergrads[name]) < 1e-10
        chain = fds.hypergrads[name] / optimizer.hypers[name].value_derivative()
        torch.testing.assert_close(fds.value_hypergrads[name], chain)
    assert fds.hypergrads["lr"].shape == (horizon,)


def test_forward_unroll_matches_closed_form_on_a_quadratic():
    """Gradient descent on f(θ) = a θ²/2: θ_T = (1 − η a)^T θ_0, val = θ_T²/2, so
    d val / d η = −a T θ_0² (1 − η a)^(2T − 1)."""
    a, theta0, eta, horizon = 0.7, 1.3, 0.2, 25

    def step(state, hypers, batch):
        return {"theta": state["theta"] - hypers["lr"] * a * state["theta"]}

    def val(state):
        return 0.5 * state["theta"] ** 2

    lr = Schedule(eta, steps=horizon, dtype=DT)
    result = forward_unroll(
        step, val, {"theta": torch.tensor(theta0, dtype=DT)}, {"lr": lr}, lambda t: None
    )
    expected = -a * horizon * theta0**2 * (1 - eta * a) ** (2 * horizon - 1)
    assert abs(float(result.hypergrads["lr"]) - expected) < 1e-12 * abs(expected)
    assert abs(float(result.val_loss) - 0.5 * (theta0 * (1 - eta * a) ** horizon) ** 2) < 1e-14


@pytest.mark.parametrize("windows", [3, 7])
def test_window_hypergradients_sum_to_the_shared_one(windows):
    """Sharing is a sum: d val/d λ with one shared λ equals the sum of the per-window ones."""
    model, data, val = _setup(3)
    horizon = 20

    def val_loss(model_fn):
        return ((model_fn(val[0]) - val[1]) ** 2).mean()

    def batches(t):
        return data[0][t], data[1][t]

    shared = fds_hypergradients(
        model, _train_loss, val_loss, SGD(lr=Schedule(0.1, steps=horizon, dtype=DT)), batches
    )
    split = fds_hypergradients(
        model,
        _train_loss,
        val_loss,
        SGD(lr=Schedule(0.1, steps=horizon, windows=windows, dtype=DT)),
        batches,
    )
    total = split.hypergrads["lr"].sum()
    assert abs(float(total - shared.hypergrads["lr"][0])) < 1e-12


def test_vector_valued_loss_weights_per_window():
    """K = 2 weights of moopt.Linear, one pair per window (a (W, K) schedule), with
    per-window learning rates and momenta."""
    model, data, val = _setup(6)
    horizon = 12
    weights = Schedule(
        torch.tensor([1.0, 0.4], dtype=DT), steps=horizon, windows=3, shape=(2,), dtype=DT
    )

    def train_loss(model_fn, batch, hypers):
        losses = two_losses(model_fn(batch[0]), batch[1])
        return torch.func.functional_call(COMBINER, {"weights": hypers["w"]}, (losses,))

    def run(make):
        return make(
            model,
            train_loss,
            lambda f: ((f(val[0]) - val[1]) ** 2).mean(),
            SGD(
                lr=Schedule(0.2, steps=horizon, windows=4, dtype=DT),
                momentum=Schedule(0.8, steps=horizon, windows=5, dtype=DT),
            ),
            lambda t: (data[0][t], data[1][t]),
            hypers={"w": weights},
        )

    # interleaved windows of three schedules: exercises the ordering of tangent columns
    fds, rev = run(fds_hypergradients), run(reverse_hypergradients)
    assert fds.hypergrads["w"].shape == (3, 2)
    for name in ("w", "lr", "momentum"):
        assert _max_rel(fds.hypergrads[name], rev.hypergrads[name]) < 1e-8, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model, data, val = _setup(4)
    horizon = 10

    def run(device):
        net = copy.deepcopy(model)
        net.to(device)
        x, y = (d.to(device) for d in data)
        xv, yv = (v.to(device) for v in val)
        optimizer = SGD(lr=Schedule(0.1, steps=horizon, windows=2, dtype=DT), momentum=0.9)
        return fds_hypergradients(
            net,
            _train_loss,
            lambda f: ((f(xv) - yv) ** 2).mean(),
            optimizer,
            lambda t: (x[t], y[t]),
        )

    cpu, cuda = run("cpu"), run("cuda")
    assert cuda.state["params"]["0.weight"].device.type == "cuda"
    torch.testing.assert_close(cuda.hypergrads["lr"], cpu.hypergrads["lr"], rtol=1e-9, atol=0)


@pytest.mark.slow
def test_compiled_unroll_equals_eager():
    model, data, val = _setup(5)
    horizon = 8

    def run(compile):
        optimizer = SGD(
            lr=Schedule(0.1, steps=horizon, windows=3, dtype=DT),
            momentum=Schedule(0.6, steps=horizon, dtype=DT),
        )
        return fds_hypergradients(
            model,
            _train_loss,
            lambda f: ((f(val[0]) - val[1]) ** 2).mean(),
            optimizer,
            lambda t: (data[0][t], data[1][t]),
            compile=compile,
        )

    eager, compiled = run(False), run(True)
    for name in ("lr", "momentum"):
        assert _max_rel(compiled.hypergrads[name], eager.hypergrads[name]) < 1e-10
    with pytest.raises(ValueError, match='compile=True needs tangents="batched"'):
        fds_hypergradients(
            model,
            _train_loss,
            lambda f: f(val[0]).sum(),
            SGD(lr=Schedule(0.1, steps=horizon, dtype=DT)),
            lambda t: (data[0][t], data[1][t]),
            compile=True,
            tangents="columns",
        )


def test_dropout_trains_in_train_mode_and_validates_in_eval_mode():
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).to(DT)
    x = torch.randn(10, 6, 4, generator=gen, dtype=DT)
    y = torch.randn(10, 6, 3, generator=gen, dtype=DT)

    def run(make):
        torch.manual_seed(3)  # same dropout masks for both engines
        return make(
            model,
            lambda f, b, h: ((f(b[0]) - b[1]) ** 2).mean(),
            lambda f: ((f(x[0]) - y[0]) ** 2).mean(),
            SGD(lr=Schedule(0.1, steps=10, windows=2, dtype=DT), momentum=0.5),
            lambda t: (x[t], y[t]),
        )

    fds, rev = run(fds_hypergradients), run(reverse_hypergradients)
    assert model.training and model[2].training  # modes restored
    assert _max_rel(fds.hypergrads["lr"], rev.hypergrads["lr"]) < 1e-10
    model.eval()
    with torch.no_grad():
        expected = ((torch.func.functional_call(model, fds.params, (x[0],)) - y[0]) ** 2).mean()
    model.train()
    assert abs(float(fds.val_loss) - float(expected)) < 1e-12
