"""moopt: multi-objective and constrained optimisation for PyTorch.

``import moopt`` needs only torch and numpy; every other dependency is imported lazily
by the function that needs it.
"""

from moopt._base import Combiner, GradientCombiner, GramianWeighting, LossCombiner

# Adaptive loss weighting (issue 3, loss-level methods).
from moopt.adaptive import DWA, FAMO, RLW, GeometricMean, ScaleInvariant

__version__ = "0.1.0"

__all__ = [
    "Combiner",
    "GradientCombiner",
    "GramianWeighting",
    "LossCombiner",
    "__version__",
    # Adaptive loss weighting (issue 3, loss-level methods).
    "DWA",
    "FAMO",
    "GeometricMean",
    "RLW",
    "ScaleInvariant",
]
