"""One tuned hyperparameter (N = 1): the unroll carries its tangent as dual tensors
(``torch.autograd.forward_ad``) after the first step, and the module-level step takes its
gradient with ``torch.autograd``. Its hypergradients must equal reverse mode and central
finite differences of an independent ``torch.optim`` loop, as the batched path's do."""

import copy

import pytest
import torch
from tiny_mlp import tiny_mlp_setup, two_losses
from torch import nn

import moopt
from moopt.hypergrad import SGD, Adam, Schedule, fds_hypergradients, reverse_hypergradients
from moopt.hypergrad.engine import forward_unroll

T = 40
DT = torch.float64


def _setup(seed=0):
    return tiny_mlp_setup(T, seed)


def _train_loss(model_fn, batch, hypers):
    x, y = batch
    losses = two_losses(model_fn(x), y)
    if "alpha" not in hypers:
        return losses[0]
    alpha = hypers["alpha"]
    return moopt.Linear(torch.stack([1 - alpha, alpha]))(losses)


def _torch_val(model, data, val, make_optimizer, alpha=None):
    """Independent reference: plain torch.optim training with fixed hyperparameters."""
    x, y = data
    net = copy.deepcopy(model)
    optimizer = make_optimizer(net.parameters())
    for t in range(T):
        optimizer.zero_grad()
        losses = two_losses(net(x[t]), y[t])
        loss = losses[0] if alpha is None else (1 - alpha) * losses[0] + alpha * losses[1]
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(((net(val[0]) - val[1]) ** 2).mean())


CASES = {
    # name: (optimizer with the one tuned value, tuned hypers, torch.optim at value v, value)
    "loss weight, SGD momentum": (
        lambda: SGD(lr=0.1, momentum=0.9),
        lambda: {"alpha": Schedule(0.3, steps=T, dtype=DT)},
        lambda v: (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), v),
        0.3,
    ),
    "lr, SGD nesterov + weight decay": (
        lambda: SGD(
            lr=Schedule(0.05, steps=T, dtype=DT), momentum=0.8, weight_decay=0.01, nesterov=True
        ),
        dict,
        lambda v: (
            lambda p: torch.optim.SGD(p, lr=v, momentum=0.8, weight_decay=0.01, nesterov=True),
            None,
        ),
        0.05,
    ),
    "lr, SGD dampening": (
        lambda: SGD(lr=Schedule(0.1, steps=T, dtype=DT), momentum=0.5, dampening=0.3),
        dict,
        lambda v: (lambda p: torch.optim.SGD(p, lr=v, momentum=0.5, dampening=0.3), None),
        0.1,
    ),
    "lr, Adam": (
        lambda: Adam(lr=Schedule(0.01, steps=T, dtype=DT)),
        dict,
        lambda v: (lambda p: torch.optim.Adam(p, lr=v), None),
        0.01,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_hyperparameter_matches_reverse_mode_and_finite_differences(case):
    make_optimizer, make_hypers, reference, value = CASES[case]
    model, data, val = _setup()

    def val_loss(model_fn):
        return ((model_fn(val[0]) - val[1]) ** 2).mean()

    def batches(t):
        return data[0][t], data[1][t]

    args = (model, _train_loss, val_loss, make_optimizer(), batches)
    hypers = make_hypers()
    fds = fds_hypergradients(*args, hypers=hypers)
    rev = reverse_hypergradients(*args, hypers=hypers)
    (name,) = fds.hypergrads
    eps = 1e-6
    ends = [_torch_val(model, data, val, *reference(value + s * eps)) for s in (1, -1)]
    fd = (ends[0] - ends[1]) / (2 * eps)
    assert abs(float(fds.val_loss) - float(rev.val_loss)) < 1e-12
    assert abs(float(fds.val_loss) - _torch_val(model, data, val, *reference(value))) < 1e-10
    grad = float(fds.hypergrads[name])
    assert grad != 0
    assert abs(grad - float(rev.hypergrads[name])) < 1e-8 * abs(grad)
    assert abs(grad - fd) < 1e-5 * abs(grad)
    assert fds.train_losses.shape == (T,)


def test_single_column_equals_the_batched_path():
    """N = 1 (dual tensors) against N = 2 (batched jvp) with the second hyperparameter idle:
    the shared column's hypergradient and the trained state must agree."""
    model, data, val = _setup(seed=1)

    def val_loss(model_fn):
        return ((model_fn(val[0]) - val[1]) ** 2).mean()

    def batches(t):
        return data[0][t], data[1][t]

    one = fds_hypergradients(
        model,
        _train_loss,
        val_loss,
        SGD(lr=0.1, momentum=0.9),
        batches,
        hypers={"alpha": Schedule(0.4, steps=T, dtype=DT)},
    )
    two = fds_hypergradients(
        model,
        _train_loss,
        val_loss,
        SGD(lr=0.1, momentum=0.9, dampening=Schedule(0.0, steps=T, dtype=DT)),
        batches,
        hypers={"alpha": Schedule(0.4, steps=T, dtype=DT)},
    )
    torch.testing.assert_close(one.hypergrads["alpha"], two.hypergrads["alpha"], rtol=1e-10, atol=0)
    for key in one.params:
        torch.testing.assert_close(one.params[key], two.params[key], rtol=1e-12, atol=1e-14)


def test_forward_unroll_single_column_with_a_counter_that_carries_no_tangent():
    """A pure step whose state holds a leaf that does not depend on the hyperparameter
    (a step counter, detached): its tangent is zero, and the derivative is the closed form
    of gradient descent on ½·a·x², x_T = (1 − η·a)^T · x_0."""
    a, x0, eta, horizon = 2.0, 1.5, 0.1, 25

    def step(state, hypers, batch):
        x = state["x"]
        return {"x": x - hypers["lr"] * a * x, "count": state["count"].detach() + 1}

    state = {"x": torch.tensor(x0, dtype=DT), "count": torch.zeros((), dtype=DT)}
    lr = Schedule(eta, steps=horizon, dtype=DT)
    result = forward_unroll(step, lambda s: s["x"], state, {"lr": lr}, lambda t: None)
    expected = -horizon * a * x0 * (1 - eta * a) ** (horizon - 1)
    assert abs(float(result.hypergrads["lr"]) - expected) < 1e-12 * abs(expected)
    assert float(result.state["count"]) == horizon


def test_one_weight_benchmark_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_fds_one_weight.py"
    spec = importlib.util.spec_from_file_location("bench_fds_one_weight", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--steps", "3", "--repeat", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "F.cross_entropy" in printed and "logsumexp - gather" in printed


def test_dropout_draws_the_same_masks_as_reverse_mode():
    """The dual-tensor steps consume the random stream like the reverse-mode unroll."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)).to(DT)
    x, y = torch.randn(20, 8, 4, dtype=DT), torch.randn(20, 8, 3, dtype=DT)

    def train_loss(model_fn, batch, hypers):
        return ((model_fn(batch[0]) - batch[1]) ** 2).mean()

    def val_loss(model_fn):
        return ((model_fn(x[0]) - y[0]) ** 2).mean()

    results = []
    for unroll in (fds_hypergradients, reverse_hypergradients):
        torch.manual_seed(5)
        optimizer = SGD(lr=Schedule(0.1, steps=20, dtype=DT), momentum=0.9)
        results.append(unroll(model, train_loss, val_loss, optimizer, lambda t: (x[t], y[t])))
    assert float(results[0].val_loss) == pytest.approx(float(results[1].val_loss), rel=1e-12)
    torch.testing.assert_close(
        results[0].hypergrads["lr"], results[1].hypergrads["lr"], rtol=1e-9, atol=0
    )
