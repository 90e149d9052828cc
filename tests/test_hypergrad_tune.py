"""Outer updates (FDS sign step, Adam), the tune loop, checkpoint/resume and the plot."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from moopt.hypergrad import (
    SGD,
    AdamStep,
    History,
    Schedule,
    SignStep,
    fds_hypergradients,
    plot_schedules,
    tune,
)

DT = torch.float64


def test_sign_step_moves_against_the_sign_and_halves_on_flip():
    schedule = Schedule(torch.tensor([0.5, 0.5]), steps=4, windows=2, bounds=(0.0, 1.0), dtype=DT)
    outer = SignStep(fraction=0.1)
    outer.step({"lr": schedule}, {"lr": torch.tensor([-2.0, 3.0], dtype=DT)})
    torch.testing.assert_close(schedule.values(), torch.tensor([0.6, 0.4], dtype=DT))
    # entry 0 keeps its sign (full step), entry 1 flips (half step)
    outer.step({"lr": schedule}, {"lr": torch.tensor([-1e-9, -5.0], dtype=DT)})
    torch.testing.assert_close(schedule.values(), torch.tensor([0.7, 0.45], dtype=DT))
    # flips again: halves again; a zero hypergradient does not move nor count as a flip
    outer.step({"lr": schedule}, {"lr": torch.tensor([0.0, 1.0], dtype=DT)})
    torch.testing.assert_close(schedule.values(), torch.tensor([0.7, 0.425], dtype=DT))
    torch.testing.assert_close(outer.gamma["lr"], torch.tensor([0.1, 0.025], dtype=DT))


def test_sign_step_clamps_into_the_search_range_and_needs_a_step_size():
    schedule = Schedule(0.95, steps=3, bounds=(0.0, 1.0), dtype=DT)
    SignStep(step_sizes=0.2).step({"m": schedule}, {"m": torch.tensor([-1.0], dtype=DT)})
    assert float(schedule.values()[0]) == 1.0
    unbounded = Schedule(0.0, steps=3, dtype=DT)
    with pytest.raises(ValueError, match="no finite search range"):
        SignStep().step({"a": unbounded}, {"a": torch.ones(1, dtype=DT)})
    SignStep(step_sizes={"a": 0.5}).step({"a": unbounded}, {"a": torch.ones(1, dtype=DT)})
    assert float(unbounded.values()[0]) == -0.5
    with pytest.raises(ValueError, match="shape"):
        SignStep(0.1).step({"a": unbounded}, {"a": torch.ones(2, dtype=DT)})
    with pytest.raises(KeyError, match="no hypergradient"):
        SignStep(0.1).step({"a": unbounded}, {})
    with pytest.raises(ValueError, match="fraction"):
        SignStep(fraction=2.0)
    with pytest.raises(ValueError, match="decay"):
        SignStep(0.1, decay=0.0)


def test_sign_step_decay_factor_and_constant_steps():
    for kwargs, expected in (({"decay": 0.25}, 0.025), ({"halve_on_flip": False}, 0.1)):
        schedule = Schedule(0.5, steps=3, dtype=DT)
        outer = SignStep(0.1, **kwargs)
        outer.step({"x": schedule}, {"x": torch.ones(1, dtype=DT)})
        outer.step({"x": schedule}, {"x": -torch.ones(1, dtype=DT)})
        assert abs(float(outer.gamma["x"][0]) - expected) < 1e-15


def test_adam_step_matches_torch_adam_on_the_raw_values():
    schedule = Schedule(torch.tensor([0.3, -0.2, 0.1]), steps=3, windows=3, dtype=DT)
    leaf = schedule.raw.clone().requires_grad_(True)
    reference = torch.optim.Adam([leaf], lr=0.05, betas=(0.8, 0.9), eps=1e-8)
    outer = AdamStep(lr=0.05, betas=(0.8, 0.9), eps=1e-8)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        g = torch.randn(3, generator=gen, dtype=DT)
        outer.step({"x": schedule}, {"x": g})
        leaf.grad = g.clone()
        reference.step()
    torch.testing.assert_close(schedule.raw, leaf.detach(), rtol=0, atol=1e-12)


def test_adam_step_clamps_into_the_search_range():
    schedule = Schedule(torch.tensor([0.95, 0.05]), steps=4, windows=2, bounds=(0.0, 1.0), dtype=DT)
    # the first Adam step moves each entry by about lr against its hypergradient's sign
    AdamStep(lr=0.2).step({"m": schedule}, {"m": torch.tensor([-1.0, 3.0], dtype=DT)})
    assert schedule.values().tolist() == [1.0, 0.0]


def _tiny_problem():
    """An FDS objective that also draws from the global RNGs (noise in every batch)."""
    steps = 8
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(steps, 6, 3, generator=gen, dtype=DT)
    y = torch.randn(steps, 6, 2, generator=gen, dtype=DT)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    lr = Schedule(0.0, steps=steps, windows=2, bounds=(0.0, 0.5), dtype=DT)
    momentum = Schedule(0.0, steps=steps, bounds=(0.0, 0.9), dtype=DT)
    optimizer = SGD(lr=lr, momentum=momentum)

    def objective(k):
        noise = 0.1 * torch.randn(steps, 6, 2, dtype=DT)
        noise = noise + 0.05 * torch.from_numpy(np.random.standard_normal((steps, 6, 2)))
        return fds_hypergradients(
            model,
            lambda f, b, h: ((f(b[0]) - b[1]) ** 2).mean(),
            lambda f: ((f(x[0]) - y[0]) ** 2).mean(),
            optimizer,
            lambda t: (x[t], y[t] + noise[t]),
        )

    return objective, {"lr": lr, "momentum": momentum}


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("make_outer", [lambda: SignStep(fraction=0.2), lambda: AdamStep(lr=0.05)])
def test_resumed_run_continues_exactly_where_it_stopped(tmp_path, make_outer):
    torch.manual_seed(123)
    np.random.seed(123)
    objective, schedules = _tiny_problem()
    full = tune(objective, schedules, 5, outer=make_outer(), progress=False)

    def stop_after_two(k, result, history):
        if k == 1:
            raise _Interrupt

    path = tmp_path / "run.pt"
    torch.manual_seed(123)
    np.random.seed(123)
    objective, schedules = _tiny_problem()
    with pytest.raises(_Interrupt):
        tune(
            objective,
            schedules,
            5,
            outer=make_outer(),
            checkpoint=path,
            progress=False,
            callback=stop_after_two,
        )
    torch.manual_seed(999)  # whatever happens in between is undone by the checkpoint
    np.random.seed(999)
    objective, schedules = _tiny_problem()
    resumed = tune(objective, schedules, 5, outer=make_outer(), checkpoint=path, progress=True)
    assert resumed.outer_steps == full.outer_steps == 5
    assert resumed.val_losses == full.val_losses
    for name in ("lr", "momentum"):
        for ours, theirs in zip(resumed.values[name], full.values[name]):
            assert torch.equal(ours, theirs)
        for ours, theirs in zip(resumed.hypergrads[name], full.hypergrads[name]):
            assert torch.equal(ours, theirs)
        assert torch.equal(resumed.final_values[name], full.final_values[name])
        assert torch.equal(schedules[name].values(), full.final_values[name])
    assert full.values["lr"][0].abs().sum() == 0  # FDS starts at zero
    assert full.final_values["lr"].abs().sum() > 0
    assert 0 <= full.best_step() < 5


def test_tune_shows_a_progress_bar_over_the_outer_steps(capsys):
    objective, schedules = _tiny_problem()
    tune(objective, schedules, 2, outer=SignStep(fraction=0.2), progress=True)
    shown = capsys.readouterr().err
    assert "FDS outer steps" in shown and "2/2" in shown and "val_loss=" in shown
    tune(objective, schedules, 1, outer=SignStep(fraction=0.2), progress=False)
    assert "FDS outer steps" not in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_other_schedules(tmp_path):
    objective, schedules = _tiny_problem()
    path = tmp_path / "run.pt"
    tune(objective, schedules, 1, outer=SignStep(0.1), checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="holds schedules"):
        tune(objective, {"lr": schedules["lr"]}, 2, checkpoint=path, progress=False)


def test_history_round_trip_and_plot(tmp_path):
    objective, schedules = _tiny_problem()
    history = tune(objective, schedules, 2, outer=SignStep(fraction=0.2), progress=False)
    again = History.from_state_dict(history.state_dict())
    assert again.val_losses == history.val_losses
    figure = history.plot(tmp_path / "schedules.png")
    assert (tmp_path / "schedules.png").stat().st_size > 0
    assert len(figure.axes) >= 2
    plot_schedules(schedules, tmp_path / "now.png")
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        history.plot(names=["nope"])


def test_tune_rejects_bad_arguments():
    objective, schedules = _tiny_problem()
    with pytest.raises(ValueError, match="outer_steps"):
        tune(objective, schedules, 0)
    with pytest.raises(TypeError, match="OuterOptimizer"):
        tune(objective, schedules, 1, outer=torch.optim.SGD)
    unbounded = {"a": Schedule(0.0, steps=8, dtype=DT)}
    with pytest.raises(ValueError, match="no finite search range"):
        tune(lambda k: pytest.fail("ran an inner run"), unbounded, 1, progress=False)
    with pytest.raises(TypeError, match="HypergradResult"):
        tune(lambda k: 1.0, schedules, 1, outer=SignStep(0.1), progress=False)


def test_import_moopt_hypergrad_is_light():
    # torch itself imports tqdm (torch.hub); check that moopt adds no heavy package
    code = (
        "import sys, torch\n"
        "before = {m.split('.')[0] for m in sys.modules}\n"
        "import moopt, moopt.hypergrad\n"
        "heavy = {'tqdm', 'matplotlib', 'scipy', 'sklearn'}\n"
        "print(sorted(({m.split('.')[0] for m in sys.modules} - before) & heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
