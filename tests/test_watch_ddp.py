"""GramianWeighting.watch under torch.distributed: 2 gloo ranks take the Jacobian route
(the Gramian of rank-averaged gradients is not the sum of the ranks' Gramians), so a
watched combiner on the two halves of a batch gives the single-process update on the
whole batch, and consumes its records."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import moopt

WORLD = 2


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    y[:, 1] = -2 * y[:, 0]  # conflicting tasks
    return x, y


def step(x: torch.Tensor, y: torch.Tensor, watch: bool) -> tuple[torch.Tensor, list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    combiner = moopt.UPGrad()
    handle = combiner.watch(model) if watch else None
    out = model(x)
    combiner.backward([((out[:, k] - y[:, k]) ** 2).mean() for k in range(2)])
    flags = [combiner.watch_report is None, handle is None or handle.records == ()]
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), flags


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        x, y = batch()
        half = slice(rank * 4, rank * 4 + 4)
        torch.save(step(x[half], y[half], watch=True), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_watched_combiner_under_two_ranks_equals_single_process_on_whole_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    expected, _ = step(*batch(), watch=False)
    watched, flags = step(*batch(), watch=True)
    torch.testing.assert_close(watched, expected, rtol=1e-10, atol=1e-12)
    for rank in range(WORLD):
        grads, rank_flags = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(grads, expected, rtol=1e-10, atol=1e-12)
        assert rank_flags == [True, True]  # no activation route under a group; records consumed
    assert flags == [False, True]  # one process: the activation route
