"""``moopt tune`` and the digits tuning setup (tiny settings)."""

import math

import pytest
import torch

from moopt.cli import main
from moopt.hypergrad._digits import (
    DigitsSetup,
    fds_search,
    hd_search,
    random_search,
    retrained_scores,
)


def test_moopt_tune_smoke(tmp_path, capsys):
    out = tmp_path / "schedules.png"
    argv = ["tune", "--steps", "12", "--outer-steps", "2", "--windows", "3", "--hidden", "8"]
    status = main([*argv, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert status == 0
    assert out.exists() and out.stat().st_size > 0
    assert "learning rate per window" in printed
    accuracy = float(printed.split("test accuracy:")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0


def test_moopt_tune_resumes_from_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "fds.pt"
    common = ["tune", "--steps", "10", "--windows", "2", "--hidden", "8", "--no-progress"]
    common += ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "a.png")]
    assert main([*common, "--outer-steps", "1"]) == 0
    assert main([*common, "--outer-steps", "2"]) == 0
    resumed = capsys.readouterr().out.split("validation loss per outer step:")[-1]
    assert len(resumed.splitlines()[0].split(",")) == 2


def test_moopt_tune_bad_arguments(capsys):
    assert main(["tune", "--steps", "5", "--windows", "10"]) == 2
    assert "--windows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", "--steps", "0"])


def test_digits_tuners_on_a_tiny_setup():
    setup = DigitsSetup.create(steps=15, hidden=8)
    fds = fds_search(setup, runs=2, windows=3)
    assert len(fds.hyperparameters["lr"]) == 3
    assert fds.val_loss == min(fds.val_losses)
    # the first FDS run trains nothing (every hyperparameter starts at zero)
    model = setup.model()
    assert fds.val_losses[0] == pytest.approx(setup.evaluate(model)[0], rel=1e-5)
    hd = hd_search(setup, runs=2)
    rs = random_search(setup, runs=2)
    for outcome in (fds, hd, rs):
        assert 0.0 <= outcome.test_accuracy <= 1.0 and math.isfinite(outcome.val_loss)
    assert rs.val_loss == min(rs.val_losses)


def test_retraining_on_the_tuning_seed_reproduces_each_pick():
    setup = DigitsSetup.create(steps=15, hidden=8, seed=3)
    outcomes = [fds_search(setup, runs=3, windows=3), hd_search(setup, runs=2)]
    outcomes.append(random_search(setup, runs=3, seed=3))
    for outcome in outcomes:
        model = outcome.retrain(setup.with_training_seed(setup.training_seed))
        val, accuracy, _ = setup.evaluate(model)
        assert val == pytest.approx(outcome.val_loss, rel=1e-5), outcome.method
        assert accuracy == outcome.test_accuracy, outcome.method
        others = retrained_scores(outcome, setup, [11, 12])
        assert len(others) == 2 and all(0.0 <= a <= 1.0 and v > 0 for v, a in others)


def test_another_training_seed_keeps_the_split_and_redraws_weights_and_batches():
    setup = DigitsSetup.create(steps=6, hidden=4, seed=2)
    assert setup.training_seed == 2
    other = setup.with_training_seed(7)
    assert other.training_seed == 7 and other.seed == 2
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(setup, name).x, getattr(other, name).x)
    assert not torch.equal(setup.batch_indices, other.batch_indices)
    assert not torch.equal(setup.model()[0].weight, other.model()[0].weight)
    same = DigitsSetup.create(steps=6, hidden=4, seed=2, training_seed=7)
    assert torch.equal(same.batch_indices, other.batch_indices)
    assert torch.equal(same.model()[0].weight, other.model()[0].weight)


def test_retraining_needs_a_retrain_function():
    setup = DigitsSetup.create(steps=4, hidden=4)
    outcome = random_search(setup, runs=1)
    outcome.retrain = None
    with pytest.raises(ValueError, match="no retrain function"):
        retrained_scores(outcome, setup, [1])


def test_setup_is_deterministic_and_validates():
    a, b = DigitsSetup.create(steps=5, hidden=4), DigitsSetup.create(steps=5, hidden=4)
    assert torch.equal(a.batch_indices, b.batch_indices)
    for pa, pb in zip(a.model().parameters(), b.model().parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="steps"):
        DigitsSetup.create(steps=0)


def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_horizon_example_runs(tmp_path, capsys):
    out = tmp_path / "shb.png"
    argv = ["--steps", "20", "--windows", "2", "--outer-steps", "2", "--out", str(out)]
    assert _example("short_horizon_bias").main(argv) == 0
    assert out.exists() and "ratio greedy / FDS" in capsys.readouterr().out


def test_fds_digits_example_runs(tmp_path, capsys):
    out = tmp_path / "digits.png"
    argv = ["--steps", "12", "--runs", "2", "--compare", "--out", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the example's __main__: small batches, shared cores
    try:
        assert _example("fds_digits").main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert out.exists() and out.stat().st_size > 0
    for method in ("FDS (10-window lr, momentum, weight decay)", "greedy HD", "random search"):
        assert method in printed


def test_loss_weights_example_runs(tmp_path, capsys):
    out = tmp_path / "lw.png"
    argv = ["--steps", "8", "--seed", "1", "--criterion", "mean", "--out", str(out)]
    assert _example("fds_loss_weights").main(argv) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "grid of 11 fixed α" in printed and "budget" in printed
    assert "FDS α, cutting-plane step" in printed and "FDS α, sign step" in printed


def test_loss_weights_fds_runs_while_the_next_run_fits_the_budget(monkeypatch):
    """With a fake CPU clock (every run costs 1 s), FDS starts a run only while the time
    spent plus 1.1 times its longest run stays within the budget, and always makes one."""
    example = _example("fds_loss_weights")
    setup = example.TwoTaskSetup(4, hidden=4, seed=1)
    ticks = iter(float(x) for x in range(1000))
    monkeypatch.setattr(example.time, "process_time", lambda: next(ticks))
    for budget, runs in ((0.0, 1), (2.05, 1), (2.2, 2), (3.0, 2), (3.2, 3)):
        outer = example.CuttingPlaneStep()
        row, history = example.fds_search(setup, 0.1, 0.9, example.CRITERIA["worst"], outer, budget)
        assert row["runs"] == history.outer_steps == len(outer.points) == runs
        assert row["cpu"] == pytest.approx(runs)
        assert row["val"] == min(history.val_losses)
