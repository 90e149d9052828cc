"""Gradient combiners under torch.distributed: 2 gloo processes on CPU must produce the
single-process update on the same global batch (per-task gradients averaged across ranks
BEFORE aggregation)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from engine_aggregators import (
    InverseLoss,
    MeanOfGradients,
    MultiTaskNet,
    NormalisedSum,
    ProjectConflicting,
    task_losses,
)

from moopt import GradNorm

WORLD = 2
BATCH = 8


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(BATCH, 2, generator=generator, dtype=torch.float64)
    y[:, 1] = -3 * y[:, 0]  # makes the two tasks conflict, so the aggregators act
    return x, y


def fresh_net() -> MultiTaskNet:
    torch.manual_seed(0)
    return MultiTaskNet(n_tasks=2).double()


def flat_grads(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def param_mode(combiner_type):
    def run(x, y):
        net = fresh_net()
        combiner_type().backward(task_losses(net(x)[0], y))
        return flat_grads(net)

    return run


def feature_mode(combiner_type):
    def run(x, y):
        net = fresh_net()
        outputs, h = net(x)
        combiner_type().backward(task_losses(outputs, y), features=h)
        return flat_grads(net)

    return run


def ddp_recipe(x, y):
    net = fresh_net()
    if dist.is_initialized():
        wrapped = torch.nn.parallel.DistributedDataParallel(net)
        no_sync = wrapped.no_sync
    else:
        wrapped, no_sync = net, contextlib.nullcontext
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    combiner = NormalisedSum()
    for _ in range(2):
        optimizer.zero_grad()
        with no_sync():
            combiner.backward(task_losses(wrapped(x)[0], y))
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def gradnorm_steps(x, y):
    net = fresh_net()
    gradnorm = GradNorm(2, shared=net.trunk[2], alpha=1.5).double()
    optimizer = torch.optim.SGD([*net.parameters(), *gradnorm.parameters()], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        gradnorm.backward(task_losses(net(x)[0], y))
        optimizer.step()
    return torch.cat([gradnorm.task_weights.detach(), flat_grads(net)])


def unused_tensor(x, y):
    """A tensor in params that no loss uses keeps ``.grad = None`` (parameter mode,
    features= mode and GradNorm)."""
    results = []
    for mode in ("param", "features", "gradnorm"):
        net = fresh_net()
        extra = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        outputs, h = net(x)
        losses, params = task_losses(outputs, y), [*net.parameters(), extra]
        if mode == "param":
            ProjectConflicting().backward(losses, params=params)
        elif mode == "features":
            NormalisedSum().backward(losses, params=params, features=h)
        else:
            GradNorm(2, shared=net.trunk[2], alpha=1.0).double().backward(losses, params=params)
        results += [flat_grads(net), torch.tensor([float(extra.grad is None)])]
    return torch.cat(results)


def explicit_group(x, y):
    """The group passed explicitly (a new group holding both ranks)."""
    net = fresh_net()
    group = dist.new_group([0, 1]) if dist.is_initialized() else None
    ProjectConflicting().backward(task_losses(net(x)[0], y), process_group=group)
    return flat_grads(net)


def watched(x, y) -> tuple[torch.Tensor, list[bool]]:
    """A Gramian weighting that watches the net's linear layers: under a process group it
    takes the Jacobian route (the Gramian of rank-averaged gradients is not the sum of the
    ranks' Gramians), in one process the activation route; the update is the same. Also
    returns whether the activation route was skipped and whether the records were consumed."""
    net = fresh_net()
    combiner = NormalisedSum()
    handle = combiner.watch(net)
    combiner.backward(task_losses(net(x)[0], y))
    return flat_grads(net), [combiner.watch_report is None, handle.records == ()]


SCENARIOS = {
    "param-project-conflicting": param_mode(ProjectConflicting),
    "param-normalised-sum": param_mode(NormalisedSum),
    "param-inverse-loss": param_mode(InverseLoss),
    "features-project-conflicting": feature_mode(ProjectConflicting),
    "features-normalised-sum": feature_mode(NormalisedSum),
    "ddp-no-sync-recipe": ddp_recipe,
    "gradnorm": gradnorm_steps,
    "explicit-process-group": explicit_group,
    "unused-tensor-keeps-no-grad": unused_tensor,
    "param-watched-gramian-weighting": lambda x, y: watched(x, y)[0],
}


def uneven_features(x, y):
    """Rank 0 holds 5 samples, rank 1 holds 3 (features mode, all-gather path)."""
    net = fresh_net()
    outputs, h = net(x)
    ProjectConflicting().backward(task_losses(outputs, y), features=h)
    return flat_grads(net)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        x, y = global_batch()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {name: run(x[shard], y[shard]) for name, run in SCENARIOS.items()}
        uneven = slice(0, 5) if rank == 0 else slice(5, BATCH)
        results["uneven-features"] = uneven_features(x[uneven], y[uneven])
        results["watch-flags"] = watched(x[shard], y[shard])[1]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_equal_single_process_on_global_batch(rank_results, name):
    expected = SCENARIOS[name](*global_batch())
    for results in rank_results:
        torch.testing.assert_close(results[name], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_unused_tensor_has_no_grad_on_any_rank(rank_results):
    flags = rank_results[0]["unused-tensor-keeps-no-grad"]
    n_net = sum(p.numel() for p in fresh_net().parameters())
    assert flags[n_net] == 1 and flags[2 * n_net + 1] == 1 and flags[3 * n_net + 2] == 1


@pytest.mark.slow
def test_watched_combiner_takes_the_jacobian_route_under_a_group(rank_results):
    for results in rank_results:
        assert results["watch-flags"] == [True, True]  # J route; records consumed
    assert watched(*global_batch())[1] == [False, True]  # one process: activation route


@pytest.mark.slow
def test_uneven_shards_equal_the_mean_of_shard_losses(rank_results):
    x, y = global_batch()
    net = fresh_net()
    pieces = [net(x[:5]), net(x[5:])]
    losses = (task_losses(pieces[0][0], y[:5]) + task_losses(pieces[1][0], y[5:])) / 2
    ProjectConflicting().backward(losses, features=[pieces[0][1], pieces[1][1]])
    for results in rank_results:
        torch.testing.assert_close(results["uneven-features"], flat_grads(net))


@pytest.mark.slow
@pytest.mark.parametrize("combiner_type", [ProjectConflicting, NormalisedSum])
def test_aggregating_per_rank_then_averaging_would_differ(combiner_type):
    """The property the DDP path exists for: the aggregators are not linear in J."""
    x, y = global_batch()
    per_rank = []
    for rank in range(WORLD):
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        per_rank.append(param_mode(combiner_type)(x[shard], y[shard]))
    wrong = torch.stack(per_rank).mean(0)
    right = param_mode(combiner_type)(x, y)
    assert not torch.allclose(wrong, right, rtol=1e-3)
    linear = torch.stack(
        [param_mode(MeanOfGradients)(x[s], y[s]) for s in (slice(0, 4), slice(4, 8))]
    ).mean(0)
    torch.testing.assert_close(linear, param_mode(MeanOfGradients)(x, y))
