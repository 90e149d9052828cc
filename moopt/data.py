"""Offline real data from scikit-learn's embedded ``load_digits`` (no download).

* :func:`digits_split` — the 1797 8×8 digits as float tensors, split into train,
  validation and test sets.
* :func:`multi_digits` — MultiDigits: two digits overlapped on a 12×12 canvas (the left
  one at (0, 0), the right one at (4, 4), pixel-wise maximum), one classification task per
  digit, built from disjoint train and test pools of source images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("moopt.data needs scikit-learn: pip install 'moopt[examples]'") from error
    bunch = load_digits()
    return bunch.images.astype(np.float64) / 16.0, bunch.target.astype(np.int64)


@dataclass
class Split:
    """Inputs ``x`` (N×64, scaled to [0, 1]) and integer labels ``y`` of one split."""

    x: torch.Tensor
    y: torch.Tensor


def digits_split(
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Split, Split, Split]:
    """Shuffle the digits once with ``seed`` and return ``(train, val, test)``.

    The validation split is carved from what is not test, so that tuning on it never
    touches the test images.
    """
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must lie in [0, 1) and (0, 1) and sum to less "
            f"than 1; got {val_fraction} and {test_fraction}"
        )
    images, labels = _load_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    n_val = int(round(val_fraction * len(labels)))
    parts = np.split(order, [n_test, n_test + n_val])
    test_idx, val_idx, train_idx = parts

    def make(idx: np.ndarray) -> Split:
        x = torch.as_tensor(images[idx].reshape(len(idx), -1), dtype=dtype)
        return Split(x, torch.as_tensor(labels[idx]))

    return make(train_idx), make(val_idx), make(test_idx)


@dataclass
class MultiSplit:
    """MultiDigits inputs ``x`` (N×144) and the labels of the left and right digits."""

    x: torch.Tensor
    y_left: torch.Tensor
    y_right: torch.Tensor


def _overlay(images: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    canvas = np.zeros((len(left), 12, 12))
    canvas[:, 0:8, 0:8] = images[left]
    canvas[:, 4:12, 4:12] = np.maximum(canvas[:, 4:12, 4:12], images[right])
    return canvas.reshape(len(left), 144)


def multi_digits(
    n_train: int = 4000,
    n_test: int = 1000,
    test_pool_fraction: float = 0.3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[MultiSplit, MultiSplit]:
    """Return ``(train, test)`` MultiDigits sets.

    The source images are split once into disjoint train and test pools; every composite
    image draws both of its digits from one pool, so no test digit image is seen in
    training.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive; got {n_train} and {n_test}")
    if not 0 < test_pool_fraction < 1:
        raise ValueError(f"test_pool_fraction must lie in (0, 1); got {test_pool_fraction}")
    images, labels = _load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_test_pool = int(round(test_pool_fraction * len(labels)))
    test_pool, train_pool = order[:n_test_pool], order[n_test_pool:]

    def make(pool: np.ndarray, n: int) -> MultiSplit:
        left = rng.choice(pool, size=n)
        right = rng.choice(pool, size=n)
        x = torch.as_tensor(_overlay(images, left, right), dtype=dtype)
        return MultiSplit(x, torch.as_tensor(labels[left]), torch.as_tensor(labels[right]))

    return make(train_pool, n_train), make(test_pool, n_test)
