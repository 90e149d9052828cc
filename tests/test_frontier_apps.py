"""ZDT problems against pymoo, the MultiDigits and VAE training functions, ``moopt trace``."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from moopt.problems import ZDT1, ZDT2

ZDT = [(ZDT1, "zdt1"), (ZDT2, "zdt2")]


# --- ZDT1 / ZDT2 -----------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "name"), ZDT)
def test_zdt_matches_pymoo(cls, name):
    from pymoo.problems import get_problem

    x = np.random.default_rng(0).random((64, 30))
    x[:5, 1:] = 0.0  # on the Pareto set
    x[5, 0] = 0.0  # f1 = 0: the square root of ZDT1 at its edge
    ours = cls(30).evaluate(torch.as_tensor(x)).numpy()
    theirs = get_problem(name).evaluate(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("cls", "name"), ZDT)
def test_zdt_front_matches_pymoo(cls, name):
    from pymoo.problems import get_problem

    ours = cls(30).pareto_front(100).numpy()
    theirs = get_problem(name).pareto_front()
    order = np.argsort(ours[:, 0])
    np.testing.assert_allclose(ours[order], theirs[np.argsort(theirs[:, 0])], atol=1e-12)


@pytest.mark.parametrize(("cls", "name"), ZDT)
def test_zdt_losses_are_evaluate_at_sigmoid_and_batched(cls, name):
    problem = cls(7)
    theta = torch.randn(3, 4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    losses = problem.losses(theta)
    assert losses.shape == (3, 4, 2)
    torch.testing.assert_close(losses, problem.evaluate(torch.sigmoid(theta)))
    init = problem.sample_init(500, torch.Generator().manual_seed(2))
    x = torch.sigmoid(init)
    assert init.shape == (500, 7)
    assert 0.4 < float(x.mean()) < 0.6 and float(x.min()) >= 0 and float(x.max()) <= 1


@pytest.mark.parametrize(("cls", "name"), ZDT)
@pytest.mark.parametrize("eps", [0.1, 0.35, 0.8])
def test_zdt_epsilon_point_is_the_constrained_minimum(cls, name, eps):
    """Brute force over the front (g = 1) and a finite-difference multiplier."""
    problem = cls(30)
    point = problem.epsilon_point(eps)
    f1 = np.linspace(0.0, 1.0, 200001)
    f2 = problem.evaluate(torch.as_tensor(np.c_[f1, np.zeros((f1.size, 29))])).numpy()[:, 1]
    feasible = f2 <= eps
    assert point.losses[0].item() == pytest.approx(f1[feasible].min(), abs=1e-5)
    assert point.losses[1].item() == pytest.approx(eps)
    h = 1e-6
    slope = problem.epsilon_point(eps + h).losses[0] - problem.epsilon_point(eps - h).losses[0]
    assert point.multiplier == pytest.approx(-slope.item() / (2 * h), rel=1e-6)


@pytest.mark.parametrize(("cls", "name"), ZDT)
def test_zdt_chebyshev_point_closed_form(cls, name):
    """Equal weights, ideal 0: w·f1 = w·f2 on the front; golden-ratio points."""
    golden = (math.sqrt(5) - 1) / 2
    expected = 1 - golden if cls is ZDT1 else golden  # ZDT1: √f1 = φ⁻¹; ZDT2: f1 = φ⁻¹
    point = cls(30).chebyshev_point([0.5, 0.5])
    assert point[0].item() == pytest.approx(expected, abs=1e-9)
    assert point[1].item() == pytest.approx(expected, abs=1e-9)


def test_zdt_rejects_bad_input():
    with pytest.raises(ValueError, match="n"):
        ZDT1(1)
    with pytest.raises(ValueError, match="n"):
        ZDT2(True)
    with pytest.raises(ValueError, match="last dimension"):
        ZDT1(5).losses(torch.zeros(4))
    with pytest.raises(TypeError, match="theta"):
        ZDT1(5).evaluate([0.0] * 5)
    with pytest.raises(ValueError, match="eps"):
        ZDT2(5).epsilon_point(-0.1)


def test_epsilon_sweep_on_zdt1_reaches_the_exact_points(one_thread):
    """An 11-point warm-started ε sweep on ZDT1 (n = 5) lands on its exact ε points."""
    from moopt.frontier import ProblemTraining, hypervolume, trace

    problem = ZDT1(5)
    front = trace(ProblemTraining(problem, steps=400, lr=0.1), methods="epsilon", n_points=11)
    runs = front.select(method="epsilon")
    exact = np.array([problem.epsilon_point(e).losses.numpy() for e in runs.epsilon[:, 1]])
    np.testing.assert_allclose(runs.losses, exact, atol=2e-2)
    ratio = hypervolume(runs.losses, [1.1, 1.1]) / hypervolume(exact, [1.1, 1.1])
    assert ratio > 0.99


# --- MultiDigits and VAE training functions --------------------------------------------


@pytest.fixture
def one_thread():
    """Small models train several times faster on one intra-op thread (no oversubscription
    of the shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(method, seed, **config):
    from moopt.frontier import PointConfig
    from moopt.frontier.run import Run, build_combiner

    point = PointConfig(method, seed, **config)
    torch.manual_seed(seed)
    scales = (1 / math.log(10),) * 2 if method == "epsilon" else None
    return Run(point, build_combiner(point, 10.0, scales), 2)


def test_bottleneck_net_shapes_and_bad_input():
    from moopt._digits_models import BottleneckNet, MultiDigitsTraining, VAETraining

    net = BottleneckNet(hidden=8, bottleneck=2, head_hidden=0)
    logits = net(torch.zeros(5, 144))
    assert [tuple(z.shape) for z in logits] == [(5, 10), (5, 10)]
    with pytest.raises(ValueError, match="bottleneck"):
        BottleneckNet(bottleneck=0)
    with pytest.raises(TypeError, match="hidden"):
        BottleneckNet(hidden=2.5)
    with pytest.raises(ValueError, match="evaluate_on"):
        MultiDigitsTraining(evaluate_on="val")
    with pytest.raises(ValueError, match="lr"):
        VAETraining(lr=-1.0)


def test_vae_losses_are_kl_and_bce():
    """Rate against the closed-form KL from torch.distributions; distortion by hand."""
    from moopt._digits_models import DigitsVAE

    torch.manual_seed(0)
    vae = DigitsVAE(hidden=16, latent=3)
    x = torch.rand(6, 64)
    noise = torch.randn(6, 3)
    rate, distortion = vae.losses(x, noise)
    mu, log_var = vae.encoder(x).chunk(2, dim=-1)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    kl = torch.distributions.kl_divergence(q, p).sum(-1).mean()
    torch.testing.assert_close(rate, kl)
    probs = torch.sigmoid(vae.decoder(mu + torch.exp(0.5 * log_var) * noise))
    bce = -(x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1).mean()
    torch.testing.assert_close(distortion, bce, rtol=1e-5, atol=1e-5)


def test_vae_beta_sweep_trades_rate_for_distortion(one_thread):
    """A larger weight on the rate gives a lower rate and a higher distortion."""
    from moopt._digits_models import VAETraining

    training = VAETraining(steps=150, hidden=32)
    low_beta = training(_run("linear", 0, weights=(0.2, 0.8)))
    high_beta = training(_run("linear", 0, weights=(0.6, 0.4)))
    assert low_beta[0] > high_beta[0] + 0.5
    assert low_beta[1] < high_beta[1] - 0.5


def test_multidigits_linear_weights_fail_by_basins(one_thread):
    """The MultiDigits claim on one seed, with four short runs.

    Linear weights (½, ½) leave one task at chance; an ε run (min CE_left s.t.
    CE_right ≤ 1.2) learns both and beats the linear run on the linear run's own weighted
    sum (a basin, not a limit of linear weights); and it lies below the chord between two
    all-or-nothing linear runs, so the front there is convex: linear weights could reach it.
    """
    from moopt._digits_models import MultiDigitsTraining

    training = MultiDigitsTraining()
    chance = 0.9 * math.log(10)
    half = training(_run("linear", 0, weights=(0.5, 0.5))).numpy()
    assert (half > chance).sum() == 1
    eps = training(_run("epsilon", 0, epsilon=(None, 1.2), objective=0)).numpy()
    assert eps.max() < 1.5
    assert 0.5 * eps.sum() < 0.5 * half.sum() - 0.05
    left = training(_run("linear", 0, weights=(2 / 3, 1 / 3))).numpy()
    right = training(_run("linear", 0, weights=(1 / 3, 2 / 3))).numpy()
    assert left[1] > chance and right[0] > chance
    t = (eps[0] - left[0]) / (right[0] - left[0])
    chord = left[1] + t * (right[1] - left[1])
    assert eps[1] < chord - 0.2


# --- moopt trace ------------------------------------------------------------------------


def test_moopt_trace_smoke_and_resume(tmp_path, capsys, monkeypatch):
    from moopt.cli import main

    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "circle"
    argv = ["trace", "circle", "--points", "3", "--steps", "200", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "epsilon" in printed and "linear" in printed and "hypervolume" in printed
    assert (out / "front.png").stat().st_size > 0
    saved = json.loads((out / "front.json").read_text())
    first = {os.path.getmtime(p) for p in (out / "store").iterdir()}
    assert len(saved["records"]) == 2 + 3 + 3  # anchors, linear, epsilon
    assert main([*argv, "--no-plot"]) == 0  # resumes: nothing is retrained
    assert {os.path.getmtime(p) for p in (out / "store").iterdir()} == first


def test_moopt_trace_rejects_bad_options(capsys):
    from moopt.cli import main

    with pytest.raises(SystemExit) as bad_method:
        main(["trace", "circle", "--methods", "linear,bogus"])
    assert bad_method.value.code == 2
    assert "--methods" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["trace", "nosuchproblem"])
    with pytest.raises(SystemExit):
        main(["trace", "circle", "--points", "1"])
    with pytest.raises(SystemExit):
        main(["trace", "circle", "--workers", "2", "--dask", "tcp://x:1"])


def test_moopt_trace_multidigits_tiny(tmp_path, capsys):
    from moopt.cli import main

    out = tmp_path / "md"
    argv = ["trace", "multidigits", "--methods", "linear", "--points", "2", "--steps", "5"]
    assert main([*argv, "--out", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "CE left digit" in printed
    assert len(json.loads((out / "front.json").read_text())["records"]) == 2


def test_moopt_trace_on_a_process_pool_matches_in_process(tmp_path, capsys):
    from moopt.cli import main

    argv = ["trace", "circle-convex", "--methods", "linear", "--points", "3", "--steps", "50"]
    assert main([*argv, "--out", str(tmp_path / "inline"), "--no-plot"]) == 0
    assert main([*argv, "--out", str(tmp_path / "pool"), "--no-plot", "--workers", "2"]) == 0
    capsys.readouterr()

    def losses(name):
        records = json.loads((tmp_path / name / "front.json").read_text())["records"]
        return sorted(tuple(r["losses"]) for r in records)

    np.testing.assert_allclose(losses("inline"), losses("pool"), rtol=1e-6, atol=1e-9)


def test_moopt_trace_epsilon_spacing_arc(tmp_path, capsys):
    from moopt.cli import main

    out = tmp_path / "arc"
    argv = ["trace", "circle", "--methods", "epsilon", "--points", "5", "--steps", "300"]
    argv += ["--epsilon-spacing", "arc", "--damping", "1000", "--out", str(out), "--no-plot"]
    assert main(argv) == 0
    capsys.readouterr()
    records = json.loads((out / "front.json").read_text())["records"]
    points = np.array([r["losses"] for r in records if r["config"]["method"] == "epsilon"])
    steps = np.hypot(*np.diff(points[np.argsort(points[:, 1])], axis=0).T)
    assert steps.max() < 1.2 * steps.min()  # evenly along the arc, not evenly in ε
    with pytest.raises(SystemExit):
        main(["trace", "circle", "--epsilon-spacing", "log"])
