"""Trace, score, diagnose and plot the achievable Pareto front of a training setup.

Usage on a toy problem (moopt trains it with plain ``torch.optim``)::

    from moopt.problems import Circle
    from moopt.frontier import trace

    front = trace(Circle(), methods=["linear", "epsilon"], n_points=11, seeds=2)
    print(front.hypervolume([1.1, 1.1]), front.igd())
    print(front.diagnose())            # says where linear weights cannot reach, in words
    front.plot().savefig("front.png")

On a real model, write a training function: a configured combiner in (``run``), the final
task losses out::

    def train(run):                      # run: moopt.frontier.Run
        model = Net()                    # trace has called torch.manual_seed(run.seed)
        run.warm_start(model)            # ε chains start from the neighbour's weights
        opt = torch.optim.Adam(run.parameters(model), lr=1e-3)   # + MDMM multipliers
        for x, y in loader:
            opt.zero_grad()
            run.loss(torch.stack([loss_a(model, x, y), loss_b(model, x, y)])).backward()
            opt.step()
        return [val_loss_a(model), val_loss_b(model)]

    front = trace(train, methods=["linear", "chebyshev", "epsilon"], n_objectives=2,
                  seeds=3, store="sweeps/mine", executor=ProcessPoolExecutor(4))

Beyond one machine, give a Dask executor (``pip install 'moopt[dist]'``)::

    from dask.distributed import Client
    with Client("scheduler-address:8786") as client:
        front = trace(train, ..., executor=client.get_executor(), store="/shared/sweep")

Each finished run is written at once to the store; re-running the same call skips them.

How a sweep splits into executor tasks: the single-task anchors (one task each) come
first, since they fix the ideal point and the ε range; then every weighted run
(linear / Chebyshev) is a task of its own, and every warm-started ε chain is one
sequential task — chains of different seeds (and, with three or more losses, the
chains of each continuation phase) run in parallel. For ``ProblemTraining`` the runs of
a task are batched into one stacked parameter (``batched=``, ``batch_size=``), and for
small models :class:`ModuleTraining` does the same with ``torch.func.vmap`` over
stacked module parameters.
"""

from moopt.frontier._config import METHODS, PointConfig, simplex_lattice
from moopt.frontier._sweep import InlineExecutor, trace
from moopt.frontier.diagnose import Diagnosis, diagnose
from moopt.frontier.front import Front
from moopt.frontier.indicators import hypervolume, igd, igd_plus, nondominated_mask
from moopt.frontier.module_training import ModuleTraining
from moopt.frontier.plot import plot_front
from moopt.frontier.run import Run
from moopt.frontier.store import PointRecord, PointStore
from moopt.frontier.training import ProblemTraining

__all__ = [
    "METHODS",
    "Diagnosis",
    "Front",
    "InlineExecutor",
    "ModuleTraining",
    "PointConfig",
    "PointRecord",
    "PointStore",
    "ProblemTraining",
    "Run",
    "diagnose",
    "hypervolume",
    "igd",
    "igd_plus",
    "nondominated_mask",
    "plot_front",
    "simplex_lattice",
    "trace",
]
