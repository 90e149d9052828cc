"""Losses written for forward-mode differentiation."""

from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``mean_i(logsumexp(z_i) − z_i[y_i])`` of ``(B, C)`` logits and
    ``(B,)`` class indices: the value of ``F.cross_entropy(logits, targets)``.

    Use it in the training loss of an FDS unroll. In torch 2.13 ``F.cross_entropy``'s
    backward has no forward-mode formula, so under FDS it runs a Python decomposition,
    several times slower per step; this form uses only operations with forward-mode
    formulas (see ``benchmarks/bench_fds_one_weight.py``). No class weights, label
    smoothing or ignored index.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            "cross_entropy expects logits of shape (B, C) and targets of shape (B,); got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return (logits.logsumexp(1) - picked).mean()
