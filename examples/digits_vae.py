"""Digits VAE: rate against distortion, the control case with a convex front.

A small Gaussian-latent VAE (``moopt._digits_models.DigitsVAE``) on scikit-learn's 8×8
digits has two losses: the rate ``R = KL(q(z|x) ‖ N(0, I))`` and the distortion
``D = −E_q log p(x|z)`` (nats per image). The β-VAE objective ``D + β·R`` is a linear
scalarization; its optimal trade-offs form the rate–distortion curve, which is convex
(Alemi et al. 2018, "Fixing a Broken ELBO"), so linear weights can reach every point of
it.

We trace it two ways with ``moopt.frontier.trace``:

* ``linear`` — minimise ``w·R + (1 − w)·D``, i.e. a β-VAE with ``β = w / (1 − w)``;
* ``epsilon`` — minimise the rate subject to ``D ≤ ε`` through MDMM (the constrained
  form of GECO, Rezende & Viola 2018), ε swept along a warm-started chain.

What to look for: both sweeps lie on one convex curve, up to optimisation error, and
the ε multipliers (the slope ``−dR/dD``) fall steadily along it. The diagnosis finds no
unsupported point of the ε sweep; the few linear points it calls unsupported are linear
runs that stopped a little short of their own optimum (an ε point beats them on their
own weighted sum), which a perfectly optimised linear run never does — optimisation
error, not concavity.

Run: ``python examples/digits_vae.py`` (about a minute on 2 CPU cores; the sweep is stored
under ``--out`` so a re-run resumes). Writes ``digits_vae.png`` there.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys


def interior_weights(n: int) -> list[tuple[float, float]]:
    """``n`` weights ``(w, 1 − w)`` evenly inside (0, 1): the corners are degenerate here
    (``w = 1`` ignores the reconstruction, ``w = 0`` lets the rate grow without bound)."""
    return [(k / (n + 1), 1 - k / (n + 1)) for k in range(n, 0, -1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=7, help="weights / ε values per method")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per point")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per run")
    parser.add_argument("--workers", type=int, default=2, help="process pool size (0: inline)")
    parser.add_argument("--out", default="digits-vae-out", help="output directory")
    args = parser.parse_args(argv)

    import torch
    from _diagnosis_notes import explain_unsupported

    from moopt._digits_models import VAETraining
    from moopt.frontier import trace

    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    pool = concurrent.futures.ProcessPoolExecutor(args.workers) if args.workers else None
    try:
        front = trace(
            VAETraining(steps=args.steps),
            methods=["linear", "epsilon"],
            n_points=args.points,
            weights=interior_weights(args.points),
            seeds=args.seeds,
            executor=pool,
            store=os.path.join(args.out, "store"),
            loss_names=["rate (nats)", "distortion (nats)"],
        )
    finally:
        if pool is not None:
            pool.shutdown()
    front.save(os.path.join(args.out, "front.json"))
    print(front.table())
    print()
    diagnosis = front.diagnose()
    print(diagnosis)
    print()
    print(explain_unsupported(front, diagnosis))
    figure = front.plot(diagnosis=diagnosis, title="Digits VAE: rate vs distortion (training set)")
    path = os.path.join(args.out, "digits_vae.png")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nfigure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
