"""The functional inner optimizers reproduce torch.optim over many steps (float64)."""

import pytest
import torch

from moopt.hypergrad import SGD, Adam, AdamW, Schedule

STEPS = 80


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "w": torch.randn(5, 3, generator=gen, dtype=torch.float64),
        "b": torch.randn(3, generator=gen, dtype=torch.float64),
    }
    data = torch.randn(STEPS, 8, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(STEPS, 8, 3, generator=gen, dtype=torch.float64)

    def loss(p, t):
        return ((torch.tanh(data[t] @ p["w"] + p["b"]) - target[t]) ** 2).mean()

    return params, loss


def _run_torch(make_optimizer, lrs=None):
    params, loss = _problem()
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = make_optimizer(list(leaves.values()))
    for t in range(STEPS):
        if lrs is not None:
            optimizer.param_groups[0]["lr"] = lrs[t]
        optimizer.zero_grad()
        loss(leaves, t).backward()
        optimizer.step()
    return {k: v.detach() for k, v in leaves.items()}


def _run_functional(optimizer, values=None):
    params, loss = _problem()
    state = optimizer.init(params)
    for t in range(STEPS):
        grads = torch.func.grad(loss)(params, t)
        step_values = {} if values is None else {k: v[t] for k, v in values.items()}
        params, state = optimizer.update(params, state, grads, step_values)
    return params


def _assert_same(ours, theirs):
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
        assert float((ours[name] - theirs[name]).abs().max()) < 1e-10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.3},
        {"lr": 0.2, "momentum": 0.9},
        {"lr": 0.2, "momentum": 0.8, "dampening": 0.3},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"lr": 0.2, "momentum": 0.7, "dampening": 0.1, "weight_decay": 0.05},
        {"lr": 0.2, "weight_decay": 0.1},
    ],
)
def test_sgd_matches_torch(kwargs):
    theirs = _run_torch(lambda p: torch.optim.SGD(p, **kwargs))
    _assert_same(_run_functional(SGD(**kwargs)), theirs)


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.01},
        {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True},
    ],
)
def test_adam_matches_torch(cls, kwargs):
    reference = {Adam: torch.optim.Adam, AdamW: torch.optim.AdamW}[cls]
    theirs = _run_torch(lambda p: reference(p, **kwargs))
    _assert_same(_run_functional(cls(**kwargs)), theirs)


def _run_torch_per_step(make_optimizer, per_step):
    """torch.optim with the param group's hyperparameters set before every step."""
    params, loss = _problem()
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = make_optimizer(list(leaves.values()))
    group = optimizer.param_groups[0]
    for t in range(STEPS):
        for name, values in per_step.items():
            if name in ("beta1", "beta2"):
                betas = list(group["betas"])
                betas[name == "beta2"] = float(values[t])
                group["betas"] = tuple(betas)
            else:
                group[name] = float(values[t])
        optimizer.zero_grad()
        loss(leaves, t).backward()
        optimizer.step()
    return {k: v.detach() for k, v in leaves.items()}


def _changing(values):
    return Schedule(values, steps=STEPS, windows=len(values), dtype=torch.float64)


def test_every_sgd_hyperparameter_changing_per_step_matches_torch():
    schedules = {
        "lr": _changing([0.3, 0.1, 0.2]),
        "momentum": _changing([0.9, 0.5]),
        "dampening": _changing([0.1, 0.4]),
        "weight_decay": _changing([0.01, 0.1, 0.0]),
    }
    per_step = {name: s.per_step() for name, s in schedules.items()}
    theirs = _run_torch_per_step(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), per_step)
    _assert_same(_run_functional(SGD(**schedules), per_step), theirs)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_every_adam_hyperparameter_changing_per_step_matches_torch(cls, amsgrad):
    """Including β₁ and β₂: the bias corrections use the current β (as torch does when a
    param group's betas change between steps)."""
    schedules = {
        "lr": _changing([0.02, 0.005, 0.01, 0.03]),
        "beta1": _changing([0.9, 0.5, 0.8]),
        "beta2": _changing([0.99, 0.9]),
        "eps": _changing([1e-8, 1e-3]),
        "weight_decay": _changing([0.0, 0.1, 0.05]),
    }
    per_step = {name: s.per_step() for name, s in schedules.items()}
    reference = {Adam: torch.optim.Adam, AdamW: torch.optim.AdamW}[cls]
    theirs = _run_torch_per_step(lambda p: reference(p, amsgrad=amsgrad), per_step)
    ours = cls(
        lr=schedules["lr"],
        betas=(schedules["beta1"], schedules["beta2"]),
        eps=schedules["eps"],
        weight_decay=schedules["weight_decay"],
        amsgrad=amsgrad,
    )
    _assert_same(_run_functional(ours, per_step), theirs)


def test_per_step_learning_rate_matches_torch_with_changing_lr():
    schedule = Schedule(
        torch.tensor([0.3, 0.1, 0.05, 0.2], dtype=torch.float64), steps=STEPS, windows=4
    )
    lrs = schedule.per_step()
    theirs = _run_torch(lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9), lrs.tolist())
    ours = _run_functional(SGD(lr=schedule, momentum=0.9), {"lr": lrs})
    _assert_same(ours, theirs)


def test_tuned_momentum_schedule_matches_torch():
    momentum = Schedule(0.9, steps=STEPS, dtype=torch.float64)
    theirs = _run_torch(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.2))
    ours = _run_functional(
        SGD(lr=0.1, momentum=momentum, dampening=0.2), {"momentum": momentum.per_step()}
    )
    _assert_same(ours, theirs)


def test_adam_with_zero_gradient_entries_keeps_finite_tangents():
    params = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    optimizer = Adam(lr=Schedule(0.1, steps=3, dtype=torch.float64))
    state = optimizer.init(params)

    def run(lr):
        p, s = params, state
        for _ in range(3):
            grads = {"w": torch.stack([p["w"][0], torch.zeros((), dtype=torch.float64)])}
            p, s = optimizer.update(p, s, grads, {"lr": lr})
        return p["w"]

    lr = torch.tensor(0.1, dtype=torch.float64)
    _, tangent = torch.func.jvp(run, (lr,), (torch.ones_like(lr),))
    assert bool(torch.isfinite(tangent).all())
    assert float(tangent[1]) == 0.0


def test_unknown_or_bad_hyperparameters():
    with pytest.raises(TypeError, match="lr must be a number"):
        SGD(lr="fast")
    with pytest.raises(TypeError, match="momentum"):
        SGD(lr=0.1, momentum=torch.tensor(1))
    with pytest.raises(TypeError, match="unexpected keyword"):
        SGD(lr=0.1, foo=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov=True requires zero dampening"):
        SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov=True requires zero dampening"):
        SGD(lr=0.1, momentum=0.9, dampening=Schedule(0.1, steps=3), nesterov=True)
    with pytest.raises(TypeError, match="betas"):
        Adam(betas=0.9)
    with pytest.raises(ValueError, match="finite"):
        Adam(lr=float("nan"))
