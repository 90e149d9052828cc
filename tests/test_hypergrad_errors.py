"""Bad input and what forward mode cannot differentiate fail clearly."""

import warnings

import pytest
import torch
from torch import nn

from moopt.hypergrad import (
    SGD,
    Schedule,
    UnrollError,
    fds_hypergradients,
    forward_unroll,
    reverse_hypergradients,
)

DT = torch.float64
T = 6


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, 4, 3, generator=gen, dtype=DT)
    y = torch.randn(T, 4, 3, generator=gen, dtype=DT)
    return x, y


def _mse(model_fn, batch, hypers):
    x, y = batch
    return ((model_fn(x) - y) ** 2).mean()


def _run(model, optimizer=None, train_loss=_mse, **kwargs):
    x, y = _data()
    optimizer = optimizer or SGD(lr=Schedule(0.1, steps=T, dtype=DT), momentum=0.9)
    return fds_hypergradients(
        model,
        train_loss,
        lambda f: ((f(x[0]) - y[0]) ** 2).mean(),
        optimizer,
        lambda t: (x[t], y[t]),
        **kwargs,
    )


def _mlp():
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def test_schedule_length_must_match_horizon():
    optimizer = SGD(lr=Schedule(0.1, steps=T, dtype=DT), momentum=Schedule(0.5, steps=T + 1))
    with pytest.raises(ValueError, match="schedule length does not match the horizon"):
        _run(_mlp(), optimizer)
    with pytest.raises(ValueError, match="horizon of 4"):
        _run(_mlp(), steps=4)


def test_too_few_batches():
    x, y = _data()
    batches = [(x[t], y[t]) for t in range(T - 2)]
    optimizer = SGD(lr=Schedule(0.1, steps=T, dtype=DT))
    with pytest.raises(ValueError, match="holds 4 batches but the horizon is 6"):
        fds_hypergradients(_mlp(), _mse, lambda f: f(x[0]).sum(), optimizer, batches)
    with pytest.raises(ValueError, match="ran out at inner step 4"):
        fds_hypergradients(_mlp(), _mse, lambda f: f(x[0]).sum(), optimizer, iter(batches))


def test_non_differentiable_hyperparameters():
    with pytest.raises(TypeError, match="integer hyperparameter"):
        Schedule(torch.tensor(3), steps=T)
    with pytest.raises(TypeError, match="dtype must be floating"):
        Schedule(0.1, steps=T, dtype=torch.int64)
    with pytest.raises(TypeError, match="must be a Schedule"):
        _run(_mlp(), hypers={"alpha": 3})
    with pytest.raises(TypeError, match="must be a number"):
        SGD(lr=torch.tensor(1))
    with pytest.raises(ValueError, match="no hyperparameter to differentiate"):
        _run(_mlp(), SGD(lr=0.1))
    with pytest.raises(TypeError, match="torch.optim optimizers update in place"):
        model = _mlp()
        _run(model, torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("tuned_lr", [False, True])
def test_a_loss_hyperparameter_that_never_reaches_the_run_warns(tuned_lr):
    """``float(hypers["a"])`` cuts the hyperparameter off the derivative: its hypergradient
    is exactly zero, which nothing else would tell (N = 1 dual path and N = 2 vmap path)."""
    lr = Schedule(0.1, steps=T, dtype=DT) if tuned_lr else 0.1
    optimizer = SGD(lr=lr, momentum=0.9)
    alpha = {"a": Schedule(0.3, steps=T, dtype=DT)}

    def detached(model_fn, batch, hypers):
        return float(hypers["a"]) * _mse(model_fn, batch, hypers) + model_fn(batch[0]).mean()

    def used(model_fn, batch, hypers):
        return hypers["a"] * _mse(model_fn, batch, hypers) + model_fn(batch[0]).mean()

    with pytest.warns(UserWarning, match=r"hypers\['a'\] did not change the inner run.*float"):
        result = _run(_mlp(), optimizer, detached, hypers=alpha)
    assert float(result.hypergrads["a"].abs().max()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _run(_mlp(), optimizer, used, hypers=alpha)
    assert float(result.hypergrads["a"].abs().max()) > 0


def test_unknown_options():
    with pytest.raises(ValueError, match="tangents must be one of"):
        _run(_mlp(), tangents="fast")
    with pytest.raises(ValueError, match="transform must be one of"):
        Schedule(0.1, steps=T, transform="exp")
    with pytest.raises(ValueError, match="clash"):
        _run(_mlp(), hypers={"lr": Schedule(0.1, steps=T)})
    with pytest.raises(ValueError, match="init must be > 0"):
        Schedule(0.0, steps=T, transform="log")


@pytest.mark.parametrize("columns", [1, 3])
def test_nan_during_the_unroll_names_the_step(columns):
    """N = 1 runs as dual tensors after step 0, N = 3 as vmapped jvp: both name the step."""
    x, y = _data()
    x = x.clone()
    x[3] = float("nan")

    def batches(t):
        return x[t], y[t]

    lr = Schedule(0.1, steps=T, windows=min(columns, 2), dtype=DT)
    momentum = Schedule(0.5, steps=T, dtype=DT) if columns > 1 else 0.0
    optimizer = SGD(lr=lr, momentum=momentum)
    with pytest.raises(UnrollError, match="at inner step 3: the training loss is nan"):
        fds_hypergradients(_mlp(), _mse, lambda f: f(x[0]).sum(), optimizer, batches)
    # checked every 5 steps (as on accelerators): found late, still named exactly
    with pytest.raises(UnrollError, match="at inner step 3: the training loss is nan"):
        fds_hypergradients(_mlp(), _mse, lambda f: f(x[0]).sum(), optimizer, batches, check_every=5)
    with pytest.raises(ValueError, match="check_every must be a positive int"):
        fds_hypergradients(_mlp(), _mse, lambda f: f(x[0]).sum(), optimizer, batches, check_every=0)


def test_divergence_names_the_step():
    optimizer = SGD(lr=Schedule(1e6, steps=T, dtype=DT), momentum=0.9)

    def explode(model_fn, batch, hypers):
        x, _ = batch
        return (model_fn(x) ** 4).sum()

    with pytest.raises(UnrollError, match=r"NaN/inf during the unroll at inner step \d"):
        _run(_mlp(), optimizer, train_loss=explode)


def test_batchnorm_in_training_mode_is_refused_with_its_name():
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to(DT)
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm1d\).*\.eval\(\)"):
        _run(model)
    model.eval()
    assert torch.isfinite(_run(model).hypergrads["lr"]).all()
    train_bn = nn.Sequential(
        nn.Linear(3, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)
    ).to(DT)
    assert torch.isfinite(_run(train_bn).hypergrads["lr"]).all()


class _InPlaceCounter(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3).to(DT)
        self.register_buffer("calls", torch.zeros((), dtype=DT))

    def forward(self, x):
        self.calls.add_(1)
        return self.lin(x)


def test_in_place_buffer_update_is_refused():
    with pytest.raises(UnrollError, match=r"step 0 failed in module '<root>'.*in-place"):
        _run(_InPlaceCounter())


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)

    def forward(self, x):
        q = self.proj(x).unsqueeze(0)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q).squeeze(0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 3)
        self.attention = _Attention()

    def forward(self, x):
        return self.attention(torch.tanh(self.encoder(x)))


def test_attention_on_cpu_is_differentiated_exactly():
    """On CPU, SDPA on these 3-D inputs takes its math path, which forward mode
    differentiates (4-D inputs, as nn.MultiheadAttention passes, take the fused flash
    kernel, which it does not: see the TransformerEncoderLayer test below)."""
    x, y = _data()
    model = _Net().to(DT)

    def run(make):
        return make(
            model,
            _mse,
            lambda f: ((f(x[0]) - y[0]) ** 2).mean(),
            SGD(lr=Schedule(0.1, steps=T, dtype=DT), momentum=0.9),
            lambda t: (x[t], y[t]),
        )

    fds, rev = run(fds_hypergradients), run(reverse_hypergradients)
    torch.testing.assert_close(fds.hypergrads["lr"], rev.hypergrads["lr"], rtol=1e-9, atol=0)


class _NoJvp(torch.autograd.Function):
    """Like a fused kernel: a custom backward and no forward-mode (jvp) rule."""

    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3).to(DT)

    def forward(self, x):
        return _NoJvp.apply(self.lin(x))


def test_custom_function_without_jvp_names_the_module():
    model = nn.Sequential(nn.Linear(3, 3), _Custom()).to(DT)
    with pytest.raises(UnrollError, match=r"in module '1' \(_Custom\).*jvp") as info:
        _run(model)
    assert "SDPBackend.MATH" in str(info.value)


def test_low_level_engine_checks_state_and_losses():
    lr = Schedule(0.1, steps=3, dtype=DT)

    def step(state, hypers, batch):
        return {"x": state["x"] * (1 - hypers["lr"])}

    with pytest.raises(TypeError, match="floating-point tensor"):
        forward_unroll(step, lambda s: s["x"], {"x": torch.tensor(1)}, {"lr": lr}, range(3))
    state = {"x": torch.tensor(1.0, dtype=DT)}
    with pytest.raises(TypeError, match="batches must be"):
        forward_unroll(step, lambda s: s["x"], state, {"lr": lr}, 3)
    with pytest.raises(TypeError, match="batches must be"):
        forward_unroll(step, lambda s: s["x"], state, {"lr": lr}, torch.tensor(1.0))
    with pytest.raises(ValueError, match="holds 2 batches"):
        forward_unroll(step, lambda s: s["x"], state, {"lr": lr}, torch.zeros(2, 5))
    result = forward_unroll(step, lambda s: s["x"], state, {"lr": lr}, torch.zeros(3, 5))
    assert abs(float(result.hypergrads["lr"]) + 3 * 0.9**2) < 1e-12
    with pytest.raises(TypeError, match="train_loss must return a scalar tensor"):
        _run(_mlp(), train_loss=lambda f, b, h: 1.0)
    with pytest.raises(ValueError, match="train_loss must return a scalar"):
        _run(_mlp(), train_loss=lambda f, b, h: f(b[0]))


def _math_kernel(fn):
    def wrapped(*args):
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            return fn(*args)

    return wrapped


def _encoder_run(make, model, train_wrap=None, val_wrap=None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, 2, 5, 8, generator=gen, dtype=DT)
    y = torch.randn(T, 2, 5, 8, generator=gen, dtype=DT)

    def val_loss(f):
        return ((f(x[0]) - y[0]) ** 2).mean()

    return make(
        model,
        train_wrap(_mse) if train_wrap else _mse,
        val_wrap(val_loss) if val_wrap else val_loss,
        SGD(lr=Schedule(0.05, steps=T, dtype=DT), momentum=Schedule(0.5, steps=T, dtype=DT)),
        lambda t: (x[t], y[t]),
    )


def test_fused_attention_kernels_name_the_module_and_the_fix_works():
    """A real fused kernel: nn.TransformerEncoderLayer on CPU runs SDPA's flash kernel in
    the training step and, in eval mode (the validation loss), a fused fast path;
    neither has a forward-mode rule. Each failure names the step or the validation loss
    and the module, and says what to do; doing it gives reverse mode's answer."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).to(DT)
    model = nn.Sequential(nn.Linear(8, 8), layer).to(DT)
    with pytest.raises(UnrollError, match=r"inner step 0 failed in module '1.self_attn'") as info:
        _encoder_run(fds_hypergradients, model)
    assert "SDPBackend.MATH" in str(info.value)
    with pytest.raises(UnrollError, match=r"the validation loss failed in module '1") as info:
        _encoder_run(fds_hypergradients, model, train_wrap=_math_kernel)
    assert "set_fastpath_enabled(False)" in str(info.value)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        fds, rev = (
            _encoder_run(make, model, _math_kernel, _math_kernel)
            for make in (fds_hypergradients, reverse_hypergradients)
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    for name in ("lr", "momentum"):
        assert float(fds.hypergrads[name].abs().max()) > 0
        torch.testing.assert_close(fds.hypergrads[name], rev.hypergrads[name], rtol=1e-9, atol=0)
