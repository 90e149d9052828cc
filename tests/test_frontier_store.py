"""The store: atomic points, re-runs that skip finished work, resumed ε chains, killed workers."""

import concurrent.futures
import json
import os
import signal

import numpy as np
import pytest
import torch

from moopt.frontier import PointConfig, PointRecord, PointStore, ProblemTraining, trace
from moopt.problems import Circle, SphereOctant

PROBLEM = Circle()
SWEEP = dict(methods=["linear", "epsilon"], n_points=4, n_objectives=2, fingerprint="circle-test")
TOTAL = 2 + 4 + 4  # anchors, linear, ε


class CountingTraining:
    """A user-style training function that logs each call to a file and can die mid-sweep.

    ``kill_at``: on that call (1-based), the process kills itself with SIGKILL before
    training (a crashed worker); ``fail_at``: raise instead.
    """

    def __init__(self, log, kill_at=None, fail_at=None):
        self.log = str(log)
        self.kill_at = kill_at
        self.fail_at = fail_at

    def __call__(self, run):
        with open(self.log, "a") as file:
            file.write(json.dumps({"method": run.method, "warm": run.is_warm}) + "\n")
        with open(self.log) as file:
            calls = sum(1 for _ in file)
        if calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if calls == self.fail_at:
            raise RuntimeError("simulated crash")
        params = torch.nn.Parameter(
            PROBLEM.sample_init(1, torch.Generator().manual_seed(run.seed))[0]
        )
        module = torch.nn.Module()
        module.theta = params
        run.warm_start(module)
        opt = torch.optim.Adam(run.parameters(module), lr=0.05)
        for _ in range(150):
            opt.zero_grad()
            run.loss(PROBLEM.losses(module.theta)).backward()
            opt.step()
        return PROBLEM.losses(module.theta).detach()


def _calls(log):
    if not os.path.exists(log):
        return []
    with open(log) as file:
        return [json.loads(line) for line in file]


def test_store_writes_atomically_and_round_trips(tmp_path):
    store = PointStore(tmp_path / "s")
    config = PointConfig("epsilon", 3, epsilon=(None, 0.5), objective=0, chain=0, step=1)
    record = PointRecord(config, (0.1, 0.5), (2.0,), 1.5, key=config.key("fp"))
    state = {"modules": [{"theta": torch.arange(3.0)}], "combiner": {}}
    store.put(record, state)
    assert record.key in store and len(store) == 1
    loaded = store.get(record.key)
    assert loaded.config == config and loaded.losses == (0.1, 0.5) and loaded.from_store
    torch.testing.assert_close(store.state(record.key)["modules"][0]["theta"], torch.arange(3.0))
    assert not [p for p in os.listdir(tmp_path / "s") if p.startswith(".tmp")]
    assert store.get("missing") is None


def test_keys_depend_on_configuration_and_fingerprint():
    a = PointConfig("linear", 0, weights=(0.5, 0.5))
    assert a.key("x") == PointConfig("linear", 0, weights=(0.5, 0.5)).key("x")
    assert a.key("x") != PointConfig("linear", 1, weights=(0.5, 0.5)).key("x")
    assert a.key("x") != a.key("y")


def test_rerun_skips_every_finished_point(tmp_path):
    log = tmp_path / "calls.log"
    first = trace(CountingTraining(log), store=tmp_path / "store", **SWEEP)
    assert len(_calls(log)) == TOTAL and not first.from_store.any()
    second = trace(CountingTraining(log), store=tmp_path / "store", **SWEEP)
    assert len(_calls(log)) == TOTAL  # nothing trained again
    assert second.from_store.all()
    np.testing.assert_array_equal(second.losses, first.losses)


def test_changing_the_damping_retrains_only_the_epsilon_points(tmp_path):
    log = tmp_path / "calls.log"
    trace(CountingTraining(log), store=tmp_path / "store", **SWEEP)
    again = trace(CountingTraining(log), store=tmp_path / "store", damping=10.0, **SWEEP)
    assert len(_calls(log)) == TOTAL + 4  # the four ε points, nothing else
    assert not again.from_store[again.methods == "epsilon"].any()
    assert again.from_store[again.methods != "epsilon"].all()


def test_crashed_chain_resumes_from_its_last_stored_state(tmp_path):
    log = tmp_path / "calls.log"
    with pytest.raises(RuntimeError, match="re-run to resume"):
        # anchors (2) and linear (4) finish, the ε chain dies at its third run
        trace(CountingTraining(log, fail_at=2 + 4 + 3), store=tmp_path / "store", **SWEEP)
    store = PointStore(tmp_path / "store")
    assert len(store) == 2 + 4 + 2
    before = {r.key: r.losses for r in store.records()}
    open(log, "w").close()
    front = trace(CountingTraining(log), store=tmp_path / "store", **SWEEP)
    calls = _calls(log)
    assert len(calls) == 2 and all(c["method"] == "epsilon" and c["warm"] for c in calls)
    assert len(front) == TOTAL and front.from_store.sum() == 8
    for record in front.records:
        if record.key in before:
            assert record.losses == before[record.key]


def test_killed_worker_process_loses_no_finished_point(tmp_path):
    log = tmp_path / "calls.log"
    kill_at = 2 + 3  # the anchors and two linear runs finish; the worker dies on the third
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(RuntimeError, match="failed"):
            trace(
                CountingTraining(log, kill_at=kill_at),
                store=tmp_path / "store",
                executor=pool,
                **SWEEP,
            )
    store = PointStore(tmp_path / "store")
    finished = {r.key: r.losses for r in store.records()}
    assert len(finished) == kill_at - 1
    open(log, "w").close()
    front = trace(CountingTraining(log), store=tmp_path / "store", **SWEEP)
    assert len(_calls(log)) == TOTAL - len(finished)
    assert front.from_store.sum() == len(finished) and len(front) == TOTAL
    for record in front.records:
        if record.key in finished:
            assert record.losses == finished[record.key]


@pytest.mark.slow
def test_sweep_on_a_dask_local_cluster_matches_in_process(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    training = ProblemTraining(Circle(), steps=40)
    sweep = dict(methods=["linear", "epsilon"], n_points=3, seeds=2, batched=False)
    local = trace(training, **sweep)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = {f"{host}:{pid}" for host, pid in client.run(_host_pid).values()}
        front = trace(training, executor=client.get_executor(), store=tmp_path / "s", **sweep)
    assert len(workers) == 2
    processes = {record.process for record in front.records}
    assert processes <= workers  # every point was trained in a worker process
    assert len(front) == len(local) and len(PointStore(tmp_path / "s")) == len(local)
    assert [c.key("") for c in front.configs] == [c.key("") for c in local.configs]
    np.testing.assert_allclose(front.losses, local.losses, rtol=1e-12)


def _host_pid():
    import socket

    return socket.gethostname(), os.getpid()


class CrashInSecondPhase(ProblemTraining):
    """Dies at the second run of the second ε phase (K = 3), after its first run is stored."""

    def train_batch(self, configs, init_states, damping, scales):
        if any(c.method == "epsilon" and c.chain >= 1 and c.step == 1 for c in configs):
            raise RuntimeError("simulated crash")
        return super().train_batch(configs, init_states, damping, scales)


def test_three_objective_phases_resume_to_the_uninterrupted_result(tmp_path):
    problem = SphereOctant()
    sweep = dict(methods="epsilon", n_points=3)
    clean = trace(ProblemTraining(problem, steps=40), **sweep)
    with pytest.raises(RuntimeError, match="re-run to resume"):
        trace(CrashInSecondPhase(problem, steps=40), store=tmp_path / "s", **sweep)
    stored = len(PointStore(tmp_path / "s"))
    assert stored == 3 + 3 + 3  # anchors, phase 0 chain, first run of each phase-1 chain
    resumed = trace(ProblemTraining(problem, steps=40), store=tmp_path / "s", **sweep)
    assert resumed.from_store.sum() == stored and len(resumed) == len(clean) == 3 + 9
    assert [c.key() for c in resumed.configs] == [c.key() for c in clean.configs]
    np.testing.assert_allclose(resumed.losses, clean.losses, rtol=1e-9, atol=1e-12)
