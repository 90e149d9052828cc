"""moopt: multi-objective and constrained optimisation for PyTorch.

* Loss-level combiners (``Linear``, ``Chebyshev``, ``UncertaintyWeighting``, ``RLW``,
  ``DWA``, ``FAMO``, ``GeometricMean``, ``ScaleInvariant``) and gradient-level combiners
  (``PCGrad``, ``MGDA``, ``CAGrad``, ``NashMTL``, ``IMTLG``, ``GradVac``, ``AlignedMTL``,
  ``UPGrad``, ``DualProj``, ``GradDrop``, ``ConFIG``, ``FairGrad``, ``GradNorm``): each a
  ``torch.nn.Module`` whose ``backward(losses)`` replaces ``sum(losses).backward()``.
* Constraints: ``Constraint`` and ``MDMM`` (Platt & Barr 1988).
* ``moopt.problems`` (toy problems with analytic fronts), ``moopt.hypergrad`` (FDS
  hypergradients) and ``moopt.frontier`` (Pareto fronts) are subpackages.

``import moopt`` needs only torch and numpy; every other dependency is imported lazily
by the function that needs it.
"""

from moopt import problems

# GramianWeighting.watch: linear layers' Gramian and update from activations
from moopt._activations import LinearWatch, WatchReport
from moopt._base import Combiner, GradientCombiner, GramianWeighting, LossCombiner
from moopt.adaptive import DWA, FAMO, RLW, GeometricMean, ScaleInvariant
from moopt.gradnorm import GradNorm
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

__version__ = "0.1.0"

__all__ = [
    # the combiner contract
    "Combiner",
    "GradientCombiner",
    "GramianWeighting",
    "LossCombiner",
    # loss-level combiners
    "Chebyshev",
    "DWA",
    "FAMO",
    "GeometricMean",
    "Linear",
    "RLW",
    "ScaleInvariant",
    "UncertaintyWeighting",
    # gradient-level combiners
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "IMTLG",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "UPGrad",
    # GramianWeighting.watch: its handle and report
    "LinearWatch",
    "WatchReport",
    # constraints
    "Constraint",
    "MDMM",
    "MDMMOutput",
    # toy problems
    "problems",
    "__version__",
]
