"""moopt: multi-objective and constrained optimisation for PyTorch.

``import moopt`` needs only torch and numpy; every other dependency is imported lazily
by the function that needs it.
"""

from moopt._base import Combiner, GradientCombiner, GramianWeighting, LossCombiner

# Per-task gradient engine and GradNorm (issue 3, engine)
from moopt.gradnorm import GradNorm

__version__ = "0.1.0"

__all__ = [
    "Combiner",
    "GradientCombiner",
    "GramianWeighting",
    "LossCombiner",
    # engine
    "GradNorm",
    "__version__",
]
