"""moopt: multi-objective and constrained optimisation for PyTorch.

``import moopt`` needs only torch and numpy; every other dependency is imported lazily
by the function that needs it.
"""

from moopt import problems
from moopt._base import Combiner, GradientCombiner, GramianWeighting, LossCombiner

# Adaptive loss weighting (issue 3, loss-level methods).
from moopt.adaptive import DWA, FAMO, RLW, GeometricMean, ScaleInvariant

# Gradient-level combiners (gradient surgery: moopt/gradsurgery.py)
from moopt.gradsurgery import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    FairGrad,
    GradDrop,
    GradVac,
    NashMTL,
    PCGrad,
    UPGrad,
)
from moopt.mdmm import MDMM, Constraint, MDMMOutput
from moopt.scalarize import Chebyshev, Linear, UncertaintyWeighting

# isort: split
# Per-task gradient engine and GradNorm (issue 3, engine)
from moopt.gradnorm import GradNorm

__version__ = "0.1.0"

__all__ = [
    # gradient-level combiners (gradsurgery)
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "UPGrad",
    "Chebyshev",
    "Combiner",
    "Constraint",
    "GradientCombiner",
    "GramianWeighting",
    "Linear",
    "LossCombiner",
    "MDMM",
    "MDMMOutput",
    "UncertaintyWeighting",
    "problems",
    "__version__",
    # Adaptive loss weighting (issue 3, loss-level methods).
    "DWA",
    "FAMO",
    "GeometricMean",
    "RLW",
    "ScaleInvariant",
    # engine
    "GradNorm",
]
