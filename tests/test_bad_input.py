"""Bad input fails loudly, with a message that names the argument."""

import math

import pytest
import torch

import moopt
from moopt.problems import Circle, FonsecaFleming


def scalar(value):
    return torch.tensor(float(value), requires_grad=True)


CASES = [
    # (description, callable, exception type, text the message must contain)
    ("NaN loss", lambda: moopt.Linear([1, 1])([scalar(1), scalar(math.nan)]), ValueError, "losses"),
    ("Inf loss", lambda: moopt.Linear([1, 1])(torch.tensor([1.0, math.inf])), ValueError, "losses"),
    (
        "non-scalar loss",
        lambda: moopt.Linear([1, 1])([torch.ones(3), scalar(1)]),
        ValueError,
        "losses[0]",
    ),
    ("2-D loss tensor", lambda: moopt.Linear([1, 1])(torch.ones(2, 2)), ValueError, "losses"),
    ("wrong number of losses", lambda: moopt.Linear([1, 1])(torch.ones(3)), ValueError, "losses"),
    ("empty losses", lambda: moopt.Linear([1, 1])([]), ValueError, "losses"),
    ("losses not tensors", lambda: moopt.Linear([1, 1])([1.0, 2.0]), TypeError, "losses[0]"),
    ("losses a string", lambda: moopt.Linear([1, 1])("ab"), TypeError, "losses"),
    ("integer losses", lambda: moopt.Linear([1, 1])(torch.tensor([1, 2])), TypeError, "losses"),
    ("negative weight", lambda: moopt.Linear([1.0, -0.5]), ValueError, "weights"),
    ("all-zero weights", lambda: moopt.Linear([0.0, 0.0]), ValueError, "weights"),
    ("2-D weights", lambda: moopt.Linear(torch.ones(2, 2)), ValueError, "weights"),
    ("NaN weight", lambda: moopt.Chebyshev([1.0, math.nan]), ValueError, "weights"),
    ("non-numeric weights", lambda: moopt.Linear(["a", "b"]), TypeError, "weights"),
    ("ideal of wrong shape", lambda: moopt.Chebyshev([1, 1], ideal=[0, 0, 0]), ValueError, "ideal"),
    ("non-positive mu", lambda: moopt.Chebyshev([1, 1], mu=0.0), ValueError, "mu"),
    (
        "unknown task kind",
        lambda: moopt.UncertaintyWeighting(2, kinds="ranking"),
        ValueError,
        "kinds",
    ),
    (
        "kinds of wrong length",
        lambda: moopt.UncertaintyWeighting(2, kinds=["regression"]),
        ValueError,
        "kinds",
    ),
    ("n_tasks zero", lambda: moopt.UncertaintyWeighting(0), ValueError, "n_tasks"),
    ("unknown relation", lambda: moopt.Constraint("<"), ValueError, "relation"),
    ("negative damping", lambda: moopt.Constraint("<=", damping=-1.0), ValueError, "damping"),
    (
        "zero damping on inequality",
        lambda: moopt.Constraint(">=", damping=0.0),
        ValueError,
        "damping",
    ),
    ("non-positive scale", lambda: moopt.Constraint(scale=0.0), ValueError, "scale"),
    ("non-finite bound", lambda: moopt.Constraint(bound=math.inf), ValueError, "bound"),
    (
        "bound of wrong shape",
        lambda: moopt.Constraint(bound=torch.ones(3), shape=(2,)),
        ValueError,
        "bound",
    ),
    ("string bound", lambda: moopt.Constraint(bound="1"), TypeError, "bound"),
    ("not a constraint", lambda: moopt.MDMM([object()]), TypeError, "constraints[0]"),
    (
        "mismatched constraint count",
        lambda: moopt.MDMM([moopt.Constraint()])(scalar(1), [scalar(1), scalar(2)]),
        ValueError,
        "values",
    ),
    (
        "constraint value of wrong shape",
        lambda: moopt.MDMM([moopt.Constraint(shape=(2,))])(scalar(1), [torch.ones(3)]),
        ValueError,
        "values[0]",
    ),
    (
        "NaN constraint value",
        lambda: moopt.MDMM([moopt.Constraint()])(scalar(1), [scalar(math.nan)]),
        ValueError,
        "values[0]",
    ),
    (
        "non-scalar objective",
        lambda: moopt.MDMM([moopt.Constraint()])(torch.ones(2), [scalar(1)]),
        ValueError,
        "objective",
    ),
    (
        "NaN objective",
        lambda: moopt.MDMM([moopt.Constraint()])(scalar(math.nan), [scalar(1)]),
        ValueError,
        "objective",
    ),
    (
        "params without grad",
        lambda: moopt.Linear([1, 1]).backward(
            [scalar(1) * 2, scalar(2) * 2], params=[torch.ones(2)]
        ),
        ValueError,
        "params[0]",
    ),
    (
        "losses without graph",
        lambda: moopt.Linear([1, 1]).backward(torch.ones(2)),
        ValueError,
        "losses",
    ),
    ("theta of wrong width", lambda: Circle().losses(torch.zeros(3)), ValueError, "theta"),
    ("superellipse p out of range", lambda: Circle(p=3.0), ValueError, "p"),
    ("Fonseca-Fleming n zero", lambda: FonsecaFleming(0), ValueError, "n"),
    ("front with one point", lambda: Circle().pareto_front(1), ValueError, "n_points"),
]


@pytest.mark.parametrize("call, error, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value)


def test_there_are_at_least_fifteen_distinct_cases():
    assert len({c[0] for c in CASES}) >= 15
