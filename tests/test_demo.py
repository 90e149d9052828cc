"""`moopt demo` and the CLI dispatch."""

import pytest
import torch

from moopt import _demo
from moopt.cli import main
from moopt.problems import Circle


def test_demo_shows_the_point_of_the_library():
    result = _demo.run_demo(n_inits=3, steps=3000)
    ends = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert bool((torch.cdist(result.linear_losses, ends).min(1).values < 0.05).all())
    for eps, losses in zip(result.epsilons.tolist(), result.epsilon_losses):
        assert (losses - Circle().epsilon_point(eps).losses).abs().max() < 1e-2
    table = _demo.format_table(result)
    assert "27 of 27 linear runs ended at an end of the front" in table


def test_demo_command_writes_figure_and_table(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), "--steps", "100", "--inits", "1"]) == 0
    assert out.stat().st_size > 10_000
    assert "MDMM  min L1 s.t. L2 <= ε" in capsys.readouterr().out


def test_cli_usage_and_unknown_command(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
