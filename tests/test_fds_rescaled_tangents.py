"""Rescaled tangents: every tangent column is carried as a mantissa times a power of two,
so tangents that grow exponentially while the inner run stays finite do not overflow.

The problem has an analytic hypergradient: SGD from θ = 0 on the training loss
``-½ Σ a_i θ_i² + α Σ w_i θ_i`` with the loss weight α = 0. The gradient is zero, so θ
stays exactly 0 (the run is finite), while the tangent of α obeys
``z_{t+1} = (1 + η a_i) z_t - η w_i`` and grows like ``(1 + η a_i)^t``. With the validation
loss ``½ Σ (θ_i - 1)²`` (gradient -1 at θ = 0), the hypergradient of the window k of α is

    d val / d α_k = Σ_i η w_i Σ_{t in window k} (1 + η a_i)^{T-1-t}.
"""

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from moopt.hypergrad import (
    SGD,
    AdamStep,
    HypergradResult,
    Schedule,
    SignStep,
    UnrollDiverged,
    fds_hypergradients,
    forward_unroll,
    reverse_hypergradients,
    tune,
)
from moopt.hypergrad.schedule import window_index

LR = 0.5
CURVATURE = (2.0, 1.0, -0.5)  # growth factors 1 + ηa: 2, 1.5 and 0.75 per step
WEIGHTS = (1.0, -3.0, 2.0)


def _problem(dtype: torch.dtype, steps: int, windows: int, lr: float = LR):
    model = nn.Linear(len(CURVATURE), 1, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.zero_()
    a = torch.tensor(CURVATURE, dtype=dtype)
    w = torch.tensor(WEIGHTS, dtype=dtype)

    def train_loss(model_fn, batch, hypers):
        theta = _weights(model_fn, dtype)
        return -0.5 * (a * theta**2).sum() + hypers["alpha"] * (w * theta).sum()

    def val_loss(model_fn):
        return 0.5 * ((_weights(model_fn, dtype) - 1) ** 2).sum()

    alpha = Schedule(0.0, steps=steps, windows=windows, dtype=dtype)
    return model, train_loss, val_loss, SGD(lr=lr), {"alpha": alpha}


def _weights(model_fn, dtype: torch.dtype) -> torch.Tensor:
    """θ as a vector: the linear model's output on the identity matrix."""
    return model_fn(torch.eye(len(CURVATURE), dtype=dtype)).reshape(-1)


def _analytic(steps: int, windows: int, lr: float = LR) -> list[float]:
    """The hypergradient of every window of α, summed in Python floats (float64)."""
    window = window_index(steps, windows).tolist()
    grads = [0.0] * windows
    for t in range(steps):
        for a, w in zip(CURVATURE, WEIGHTS):
            grads[window[t]] += lr * w * (1 + lr * a) ** (steps - 1 - t)
    return grads


def _fds(dtype, steps, windows, lr=LR, **kwargs):
    model, train_loss, val_loss, optimizer, hypers = _problem(dtype, steps, windows, lr)
    return fds_hypergradients(
        model, train_loss, val_loss, optimizer, lambda t: None, hypers=hypers, **kwargs
    )


@pytest.mark.parametrize("windows", [1, 4])  # 1: the dual-tensor path; 4: vmap over columns
def test_tangents_that_overflow_float32_give_the_exact_sign_and_log_magnitude(windows):
    steps = 200  # the tangents reach ~2^200, past float32's 2^128
    with pytest.raises(UnrollDiverged) as caught:
        _fds(torch.float32, steps, windows, rescale_tangents=False)
    assert caught.value.where == "tangents" and caught.value.step < steps
    result = _fds(torch.float32, steps, windows)
    expected = torch.tensor(_analytic(steps, windows), dtype=torch.float64)
    assert torch.equal(result.params["weight"], torch.zeros(1, 3))  # the run itself is finite
    grads = result.hypergrads["alpha"]
    assert grads.dtype == torch.float32
    assert torch.equal(torch.sign(grads), torch.sign(expected))
    assert torch.isinf(grads[expected.abs() > torch.finfo(torch.float32).max]).all()
    log_abs = result.log_abs_hypergrads["alpha"]
    assert log_abs.dtype == torch.float64
    ratio = log_abs - expected.abs().log()  # log of (computed / analytic magnitude)
    torch.testing.assert_close(ratio, torch.zeros_like(ratio), rtol=0, atol=1e-5)
    if windows == 1:  # the largest tangent entry, at the last step: η·w_0·(2^T − 1)/(η·a_0)
        peak = result.log_tangent_peaks["alpha"]
        assert float(peak) == pytest.approx(math.log(0.5) + steps * math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("windows", [1, 4])
def test_rescaled_float64_hypergradient_equals_analytic_unscaled_and_reverse_mode(windows):
    steps, lr = 150, 1.5  # growth 4^150 = 2^300: past the float64 rescaling threshold
    expected = torch.tensor(_analytic(steps, windows, lr), dtype=torch.float64)
    rescaled = _fds(torch.float64, steps, windows, lr)
    plain = _fds(torch.float64, steps, windows, lr, rescale_tangents=False)
    model, train_loss, val_loss, optimizer, hypers = _problem(torch.float64, steps, windows, lr)
    reverse = reverse_hypergradients(
        model, train_loss, val_loss, optimizer, lambda t: None, hypers=hypers
    )
    for result in (rescaled, plain, reverse):
        torch.testing.assert_close(result.hypergrads["alpha"], expected, rtol=1e-12, atol=0)
    ratio = rescaled.log_abs_hypergrads["alpha"] - expected.abs().log()
    torch.testing.assert_close(ratio, torch.zeros_like(ratio), rtol=0, atol=1e-12)


def test_hypergradients_beyond_float64_are_signed_infinities_with_a_finite_log():
    steps, lr = 140, 127.5  # growth 256^140 = 2^1120 > float64's largest number
    result = _fds(torch.float64, steps, 1, lr)
    expected_log = math.log(0.5) + steps * math.log(256.0)  # the 256^t term dominates
    assert float(result.hypergrads["alpha"]) == math.inf  # the weights of 2^t sum > 0
    assert float(result.log_abs_hypergrads["alpha"]) == pytest.approx(expected_log, rel=1e-9)


def test_sign_step_uses_an_infinite_hypergradient_and_adam_refuses_it_clearly():
    schedule = Schedule(0.0, steps=4, bounds=(-1.0, 1.0))
    infinite = {"x": torch.tensor([-math.inf])}
    SignStep(fraction=0.25).step({"x": schedule}, infinite)
    assert float(schedule.values()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="infinite.*SignStep"):
        AdamStep().step({"x": schedule}, infinite)
    with pytest.raises(ValueError, match="NaN"):
        SignStep().step({"x": schedule}, {"x": torch.tensor([math.nan])})


def test_tune_steps_back_when_adam_meets_an_infinite_hypergradient():
    schedule = Schedule(0.2, steps=4, bounds=(0.0, 1.0), dtype=torch.float64)
    calls: list[float] = []

    def objective(k: int) -> HypergradResult:  # loss (1 - x)²; past 0.6 the gradient overflows
        x = float(schedule.values().reshape(()))
        calls.append(x)
        grad = torch.full_like(schedule.raw, -math.inf if x > 0.6 else -2 * (1 - x))
        loss = torch.tensor((1 - x) ** 2, dtype=torch.float64)
        return HypergradResult(loss, {"x": grad}, {"x": grad}, state=None)

    history = tune(objective, {"x": schedule}, 3, outer=AdamStep(lr=0.5), progress=False)
    # 0.2 → 0.7 (finished, best so far, but its hypergradient is infinite) → back to 0.2
    # with half the step: 0.45
    assert calls == pytest.approx([0.2, 0.7, 0.45])
    assert history.best_step() == 1 and not history.diverged
    assert math.isinf(float(history.hypergrads["x"][1]))


@pytest.mark.parametrize("val_scale", [-500, None])  # None: the validation loss ignores θ
def test_a_finite_or_zero_hypergradient_of_a_column_past_float64_is_exact(val_scale):
    """The tangent grows to ~2^1360 (its exponent ends past float64's 2^1023), while the
    validation loss scales θ by 2^-500 (hypergradient ~2^860, finite) or ignores it
    (hypergradient exactly 0): neither may turn into ±inf or NaN."""
    steps = 170

    def step(state, hypers, batch):  # θ stays 0; the tangent of α: z ← 256 z − 1
        return {"theta": state["theta"] * 256.0 - hypers["alpha"]}

    def val(state):
        scale = 0.0 if val_scale is None else math.ldexp(1.0, val_scale)
        return scale * state["theta"].sum()

    result = forward_unroll(
        step,
        val,
        {"theta": torch.zeros(1, dtype=torch.float64)},
        {"alpha": Schedule(0.0, steps=steps, dtype=torch.float64)},
        lambda t: None,
    )
    exact = -Fraction(256**steps - 1, 255) * (0 if val_scale is None else Fraction(2) ** val_scale)
    grad = float(result.hypergrads["alpha"])
    assert grad == pytest.approx(float(exact), rel=1e-12, abs=0)
    if val_scale is None:
        assert grad == 0 and float(result.log_abs_hypergrads["alpha"]) == -math.inf


@pytest.mark.parametrize("bad", ["no", None, 0, 1.0])
def test_rescale_tangents_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="rescale_tangents must be a bool"):
        _fds(torch.float64, 4, 1, rescale_tangents=bad)


def test_a_column_rescaled_down_then_back_up_stays_exact():
    """θ stays 0 while the tangent of α obeys z ← c_t z − 1 in α's window: c = 4 in the
    first 350 steps (window 0 grows to ~2^700, past the float64 threshold 2^256, and is
    rescaled down), then c = 1/16 (window 0, no longer seeded, decays by 2^-1400 to
    ~2^-700: without scaling back up, its mantissa, below 2^-1100, would underflow)."""
    half = 350
    steps = 2 * half
    factors = [4.0] * half + [1 / 16] * half

    def step(state, hypers, batch):
        return {"theta": state["theta"] * batch - hypers["alpha"]}

    schedules = {"alpha": Schedule(0.0, steps=steps, windows=2, dtype=torch.float64)}
    results = [
        forward_unroll(
            step,
            lambda state: state["theta"].sum(),
            {"theta": torch.zeros(1, dtype=torch.float64)},
            schedules,
            factors,
            rescale_tangents=rescale,
        )
        for rescale in (True, False)
    ]
    exact = [Fraction(0), Fraction(0)]
    for t in range(steps):
        later = math.prod(Fraction(c) for c in factors[t + 1 :])
        exact[0 if t < half else 1] -= later
    expected = torch.tensor([float(e) for e in exact], dtype=torch.float64)
    assert 2.0**-1000 < float(-expected[0]) < 2.0**-690  # tiny but normal in float64
    for result in results:
        torch.testing.assert_close(result.hypergrads["alpha"], expected, rtol=1e-12, atol=0)
    assert torch.equal(results[0].hypergrads["alpha"], results[1].hypergrads["alpha"])
    torch.testing.assert_close(
        results[0].log_tangent_peaks["alpha"], results[1].log_tangent_peaks["alpha"]
    )


def test_adam_step_moves_on_a_finite_hypergradient_whose_square_overflows_float32():
    """A float32 run can give a finite hypergradient of 1e20..3e38 (rescaled tangents):
    its square overflows float32. Adam's first step is lr·sign(g) whatever |g|, and the
    second moment must not stay inf (it would freeze the value for good)."""
    schedule = Schedule(0.5, steps=4, bounds=(0.0, 1.0))
    assert schedule.raw.dtype == torch.float32
    outer = AdamStep(lr=0.1)
    outer.step({"x": schedule}, {"x": torch.tensor([1e30])})
    assert float(schedule.values()) == pytest.approx(0.4)
    outer.step({"x": schedule}, {"x": torch.tensor([1.0])})
    assert float(schedule.values()) < 0.4 - 0.05  # m still points the same way
