"""Probe for issue 3's workload (b): the Gramian of the per-task gradients of an MLP trunk
formed from activations and output gradients, without the K×D Jacobian.

For a linear layer ``y = x Wᵀ + b`` and task k with output gradient ``δ_k = ∂L_k/∂y``
(B×m), the weight gradient is ``δ_kᵀ x``, so

    ⟨∇_W L_i, ∇_W L_j⟩ = tr(δ_iᵀ (x xᵀ) δ_j),     ⟨∇_b L_i, ∇_b L_j⟩ = (1ᵀδ_i)·(1ᵀδ_j).

The K backward passes then need only the output gradients of the trunk's linear layers
(no weight gradients), the Gramian costs O(K·B²·m) per layer, and the update is one
backward of ``Σ w_k L_k``. This script times that pipeline (with mean weights) against the
floor of issue 3 (a forward and K ``autograd.grad`` calls to all trunk parameters) on the
benchmark's trunk (256-512-512-512, ReLU, batch 128, K linear heads) and checks the
Gramian against ``J Jᵀ``. It is a measurement for a future engine, not library code.

Run: ``python benchmarks/probe_gramian_from_activations.py`` (one thread, CPU time).
"""

from __future__ import annotations

import time

import torch
from torch import nn


def _setup(n_tasks: int, batch: int = 128):
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)
    )
    heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(n_tasks))
    x, targets = torch.randn(batch, 256), torch.randn(n_tasks, batch, 1)

    def forward():
        inputs, outputs, h = [], [], x
        for module in trunk:
            if isinstance(module, nn.Linear):
                inputs.append(h)
                h = module(h)
                outputs.append(h)
            else:
                h = module(h)
        h = torch.relu(h)
        losses = [((head(h) - y) ** 2).mean() for head, y in zip(heads, targets)]
        return losses, inputs, outputs

    return trunk, heads, forward


def floor_step(trunk, forward, n_tasks):
    losses, _, _ = forward()
    params = list(trunk.parameters())
    for k in range(n_tasks):
        torch.autograd.grad(losses[k], params, retain_graph=k < n_tasks - 1)


def gramian_step(forward, n_tasks):
    losses, inputs, outputs = forward()
    deltas = [torch.autograd.grad(losses[k], outputs, retain_graph=True) for k in range(n_tasks)]
    gramian = torch.zeros(n_tasks, n_tasks)
    with torch.no_grad():
        for layer, x in enumerate(inputs):
            d = torch.stack([delta[layer] for delta in deltas])  # K × B × m
            weighted = torch.matmul(x @ x.T, d)
            gramian += d.reshape(n_tasks, -1) @ weighted.reshape(n_tasks, -1).T
            gramian += d.sum(1) @ d.sum(1).T
    torch.stack(losses).mean().backward()
    return gramian


def main() -> None:
    torch.set_num_threads(1)
    print("| K | floor ms | Gramian from activations ms | ratio | max rel. error of G |")
    print("|---|---|---|---|---|")
    for n_tasks in (2, 4, 8):
        trunk, heads, forward = _setup(n_tasks)
        losses, _, _ = forward()
        params = list(trunk.parameters())
        rows = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
        jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
        exact = jacobian @ jacobian.T
        error = float((gramian_step(forward, n_tasks) - exact).abs().max() / exact.abs().max())
        times = {"floor": [], "gramian": []}
        for _ in range(11):
            for name, run, args in (
                ("floor", floor_step, (trunk, forward, n_tasks)),
                ("gramian", gramian_step, (forward, n_tasks)),
            ):
                for p in [*trunk.parameters(), *heads.parameters()]:
                    p.grad = None
                start = time.process_time()
                run(*args)
                times[name].append(time.process_time() - start)
        floor = sorted(times["floor"])[5] * 1e3
        ours = sorted(times["gramian"])[5] * 1e3
        print(f"| {n_tasks} | {floor:.1f} | {ours:.1f} | {ours / floor:.2f} | {error:.1e} |")


if __name__ == "__main__":
    main()
