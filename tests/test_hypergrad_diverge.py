"""tune steps back from outer steps whose unroll diverges (UnrollDiverged)."""

import math

import pytest
import torch
from torch import nn

from moopt.hypergrad import (
    SGD,
    AdamStep,
    CuttingPlaneStep,
    History,
    HypergradResult,
    Schedule,
    SignStep,
    UnrollDiverged,
    fds_hypergradients,
    tune,
)

DT = torch.float64
LIMIT = 0.6  # the fake unroll diverges above this value


def _cliff(calls: list[float]):
    """A value in [0, 1] whose validation loss (1 − x)² falls up to a cliff at LIMIT,
    beyond which the unroll diverges."""
    schedule = Schedule(0.3, steps=4, bounds=(0.0, 1.0), dtype=DT)

    def objective(k: int) -> HypergradResult:
        x = float(schedule.values().reshape(()))
        calls.append(x)
        if x > LIMIT + 1e-12:
            raise UnrollDiverged(f"diverged at {x}", step=2, where="tangents")
        grad = torch.full_like(schedule.raw, -2 * (1 - x))
        loss = torch.tensor((1 - x) ** 2, dtype=DT)
        return HypergradResult(loss, {"x": grad}, {"x": grad}, state=None)

    return objective, {"x": schedule}


def test_sign_step_backtracks_with_half_the_step_and_never_passes_the_cliff():
    calls: list[float] = []
    objective, schedules = _cliff(calls)
    history = tune(objective, schedules, 7, outer=SignStep(fraction=0.4), progress=False)
    # 0.3 → 0.7 diverges → 0.3 + 0.2 → 0.7 diverges → 0.5 + 0.1 → 0.7 diverges → 0.6 + 0.05
    expected = [0.3, 0.7, 0.5, 0.7, 0.6, 0.7, 0.65]
    assert calls == pytest.approx(expected)
    assert sorted(history.diverged) == [1, 3, 5, 6]
    assert all("diverged at" in message for message in history.diverged.values())
    assert math.isnan(history.val_losses[1]) and history.val_losses[0] == pytest.approx(0.49)
    assert torch.isnan(history.hypergrads["x"][1]).all()
    assert history.best_step() == 4  # x = 0.6, the best finished run
    assert float(schedules["x"].values().reshape(())) == pytest.approx(0.625)
    assert History.from_state_dict(history.state_dict()).diverged == history.diverged


def test_a_history_with_diverged_steps_still_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    objective, schedules = _cliff([])
    history = tune(objective, schedules, 4, outer=SignStep(fraction=0.4), progress=False)
    assert history.diverged
    history.plot(tmp_path / "schedules.png")
    assert (tmp_path / "schedules.png").stat().st_size > 0


def test_steps_back_to_the_best_finished_run_not_the_last():
    schedule = Schedule(0.3, steps=4, bounds=(0.0, 1.0), dtype=DT)
    calls: list[float] = []

    def objective(k: int) -> HypergradResult:  # loss grows with x, hypergradient misleads
        x = float(schedule.values().reshape(()))
        calls.append(x)
        if x > 0.9 + 1e-12:
            raise UnrollDiverged(f"diverged at {x}", step=0, where="state")
        grad = torch.full_like(schedule.raw, -1.0)
        return HypergradResult(torch.tensor(1 + x, dtype=DT), {"x": grad}, {"x": grad}, None)

    history = tune(objective, {"x": schedule}, 6, outer=SignStep(0.4), progress=False)
    # 0.3 (best) → 0.7 (worse) → 1.0 diverges → back to 0.3 with 0.2 → 0.5 → 0.7 → 0.9
    assert calls == pytest.approx([0.3, 0.7, 1.0, 0.5, 0.7, 0.9])
    assert list(history.diverged) == [2] and history.best_step() == 0


def test_adam_and_cutting_plane_steps_also_step_back():
    for outer in (AdamStep(lr=0.5), CuttingPlaneStep(fraction=0.5)):
        calls: list[float] = []
        objective, schedules = _cliff(calls)
        history = tune(objective, schedules, 4, outer=outer, progress=False)
        assert calls[0] == pytest.approx(0.3) and calls[1] == pytest.approx(0.8)
        assert calls[2] == pytest.approx(0.55), type(outer).__name__  # half of the step
        assert 1 in history.diverged and 2 not in history.diverged


def test_on_diverge_raise_and_a_first_run_that_diverges_raise():
    calls: list[float] = []
    objective, schedules = _cliff(calls)
    with pytest.raises(UnrollDiverged, match="diverged at 0.7"):
        tune(objective, schedules, 3, outer=SignStep(0.4), progress=False, on_diverge="raise")
    objective, schedules = _cliff(calls)
    schedules["x"].set_values(torch.tensor([0.9], dtype=DT))
    with pytest.raises(UnrollDiverged):
        tune(objective, schedules, 3, outer=SignStep(0.4), progress=False)
    with pytest.raises(ValueError, match="on_diverge"):
        tune(objective, schedules, 3, progress=False, on_diverge="ignore")


class _Stop(Exception):
    pass


def _full_and_resumed(make, outer_steps: int, stop: int, path):
    """``tune`` on ``make([])``'s problem run through, and run again stopped by an exception
    after outer step ``stop`` and resumed from its checkpoint (a fresh problem each time)."""

    def stop_at(k, result, history):
        if k == stop:
            raise _Stop

    def run(**options):
        objective, schedules = make([])
        outer = SignStep(fraction=0.4)
        return tune(objective, schedules, outer_steps, outer=outer, progress=False, **options)

    full = run()
    with pytest.raises(_Stop):
        run(checkpoint=path, callback=stop_at)
    resumed = run(checkpoint=path)
    return full, resumed


def test_backtracking_survives_a_resume(tmp_path):
    full, resumed = _full_and_resumed(_cliff, 7, 2, tmp_path / "run.pt")
    assert resumed.diverged.keys() == full.diverged.keys()
    assert [float(v) for v in resumed.values["x"]] == [float(v) for v in full.values["x"]]


def test_a_real_unroll_that_blows_up_raises_unroll_diverged():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(16, 3, dtype=DT) * 10, torch.randn(16, 1, dtype=DT)

    def train_loss(model_fn, batch, hypers):
        return ((model_fn(x) - y) ** 2).mean()

    def val_loss(model_fn):
        return ((model_fn(x) - y) ** 2).mean()

    lr = Schedule(5.0, steps=400, bounds=(0.0, 10.0), dtype=DT)
    with pytest.raises(UnrollDiverged) as caught:
        fds_hypergradients(model, train_loss, val_loss, SGD(lr=lr), lambda t: None)
    assert caught.value.where in ("loss", "state", "tangents") and caught.value.step < 400


def test_a_finite_run_with_a_non_finite_validation_loss_raises_unroll_diverged():
    # The run stays finite, but the validation loss of its final state overflows: that is
    # a property of these hyperparameter values too, so tune can step back from it.
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(16, 3, dtype=DT), torch.randn(16, 1, dtype=DT)

    def train_loss(model_fn, batch, hypers):
        return ((model_fn(x) - y) ** 2).mean()

    def val_loss(model_fn):
        return torch.exp(1e4 * model_fn(x).abs().mean())

    lr = Schedule(0.01, steps=5, dtype=DT)
    with pytest.raises(UnrollDiverged) as caught:
        fds_hypergradients(model, train_loss, val_loss, SGD(lr=lr), lambda t: None)
    assert (caught.value.where, caught.value.step) == ("validation", 5)


def _chaotic_above(limit: float, calls: list[float], peak: float = 200.0):
    """Loss (1 − x)²; runs past ``limit`` finish but report tangents grown to e^peak."""
    schedule = Schedule(0.3, steps=4, bounds=(0.0, 1.0), dtype=DT)

    def objective(k: int) -> HypergradResult:
        x = float(schedule.values().reshape(()))
        calls.append(x)
        grad = torch.full_like(schedule.raw, -2 * (1 - x))
        log_peak = torch.full_like(schedule.raw, peak if x > limit + 1e-12 else 1.0)
        return HypergradResult(
            torch.tensor((1 - x) ** 2, dtype=DT),
            {"x": grad},
            {"x": grad},
            state=None,
            log_tangent_peaks={"x": log_peak},
        )

    return objective, {"x": schedule}


def test_a_chaotic_run_counts_but_tune_steps_back_from_it():
    calls: list[float] = []
    objective, schedules = _chaotic_above(LIMIT, calls)
    history = tune(objective, schedules, 4, outer=SignStep(fraction=0.4), progress=False)
    # as with a divergence (0.3 → 0.7 → back to 0.3 + 0.2 → 0.7 → 0.5 + 0.1), but the
    # chaotic runs finish: their validation losses count, and 0.7 is the best run
    assert calls == pytest.approx([0.3, 0.7, 0.5, 0.7])
    assert not history.diverged and sorted(history.rejected) == [1, 3]
    assert "chaotic run: tangents grew to e^200.0" in history.rejected[1]
    assert history.val_losses[1] == pytest.approx(0.09) and history.best_step() == 1
    assert history.log_tangent_peaks == [1.0, 200.0, 1.0, 200.0]
    restored = History.from_state_dict(history.state_dict())
    assert restored.rejected == history.rejected
    assert restored.log_tangent_peaks == history.log_tangent_peaks


def test_max_log_tangent_none_updates_from_chaotic_runs_and_the_threshold_is_exclusive():
    calls: list[float] = []
    objective, schedules = _chaotic_above(LIMIT, calls)
    history = tune(
        objective, schedules, 3, outer=SignStep(0.4), progress=False, max_log_tangent=None
    )
    assert calls == pytest.approx([0.3, 0.7, 1.0]) and not history.rejected
    objective, schedules = _chaotic_above(LIMIT, [], peak=50.0)
    history = tune(objective, schedules, 3, outer=SignStep(0.4), progress=False, max_log_tangent=50)
    assert not history.rejected


def test_max_log_tangent_bad_input_and_a_chaotic_first_run():
    objective, schedules = _chaotic_above(LIMIT, [])
    with pytest.raises(TypeError, match="max_log_tangent"):
        tune(objective, schedules, 2, progress=False, max_log_tangent="88")
    for bad in (math.nan, 0.0, -5):  # NaN would silently accept every run
        with pytest.raises(ValueError, match="max_log_tangent must be positive"):
            tune(objective, schedules, 2, progress=False, max_log_tangent=bad)
    objective, schedules = _chaotic_above(-1.0, [])
    with pytest.raises(ValueError, match="first run.*chaotic"):
        tune(objective, schedules, 2, outer=SignStep(0.4), progress=False)


@pytest.mark.parametrize("stop", [1, 2])  # interrupted right after a rejected run, or later
def test_a_resume_after_rejected_chaotic_runs_continues_exactly(tmp_path, stop):
    def make(calls):
        return _chaotic_above(LIMIT, calls)

    full, resumed = _full_and_resumed(make, 6, stop, tmp_path / "run.pt")
    assert full.rejected and resumed.rejected == full.rejected
    assert resumed.log_tangent_peaks == full.log_tangent_peaks
    assert resumed.val_losses == full.val_losses
    assert [float(v) for v in resumed.values["x"]] == [float(v) for v in full.values["x"]]
    assert torch.equal(resumed.final_values["x"], full.final_values["x"])


def test_a_checkpoint_without_rejected_and_tangent_peaks_still_resumes(tmp_path):
    """Checkpoints written before History had ``rejected`` and ``log_tangent_peaks``."""

    def stop_at(k, result, history):
        if k == 1:
            raise KeyboardInterrupt

    path = tmp_path / "run.pt"
    objective, schedules = _chaotic_above(LIMIT, [])
    with pytest.raises(KeyboardInterrupt):
        tune(
            objective,
            schedules,
            4,
            outer=SignStep(0.4),
            checkpoint=path,
            progress=False,
            callback=stop_at,
        )
    saved = torch.load(path, weights_only=True)
    del saved["history"]["rejected"], saved["history"]["log_tangent_peaks"]
    torch.save(saved, path)
    objective, schedules = _chaotic_above(LIMIT, [])
    history = tune(objective, schedules, 4, outer=SignStep(0.4), checkpoint=path, progress=False)
    assert history.log_tangent_peaks[:2] == [pytest.approx(math.nan, nan_ok=True)] * 2
    assert history.log_tangent_peaks[2:] == [1.0, 200.0] and list(history.rejected) == [3]
