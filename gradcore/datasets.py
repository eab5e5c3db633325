"""Synthetic data sets for examples and tests."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def make_classification(n_samples: int = 100, n_features: int = 20, n_informative: int = 2,
                        n_redundant: int = 2, n_classes: int = 2, n_clusters_per_class: int = 2,
                        class_sep: float = 1.0, flip_y: float = 0.01, shuffle: bool = True,
                        random_state: Optional[int] = None, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """A classification problem in the manner of scikit-learn's ``make_classification``.

    Each class owns ``n_clusters_per_class`` Gaussian clusters centred on vertices of a
    hypercube of side ``2 * class_sep`` in the informative subspace; redundant features
    are random linear mixtures of the informative ones, the rest is noise, and a fraction
    ``flip_y`` of labels is reassigned at random. Returns X (n_samples, n_features) and
    integer labels y (n_samples,).
    """
    if n_informative + n_redundant > n_features:
        raise ValueError(f"make_classification: n_informative + n_redundant ({n_informative + n_redundant}) "
                         f"exceeds n_features ({n_features})")
    n_clusters = n_classes * n_clusters_per_class
    if n_clusters > 2 ** n_informative:
        raise ValueError(f"make_classification: {n_classes} classes x {n_clusters_per_class} clusters need "
                         f"n_informative >= {int(np.ceil(np.log2(n_clusters)))}")
    rng = np.random.default_rng(random_state)

    # distinct hypercube vertices for the cluster centres
    vertices = rng.choice(2 ** n_informative, size=n_clusters, replace=False)
    bits = (vertices[:, None] >> np.arange(n_informative)) & 1
    centres = (2.0 * bits - 1.0) * class_sep

    counts = np.full(n_clusters, n_samples // n_clusters)
    counts[: n_samples % n_clusters] += 1
    X = np.empty((n_samples, n_features))
    y = np.empty(n_samples, dtype=np.int64)
    start = 0
    for k in range(n_clusters):
        stop = start + counts[k]
        mixing = rng.uniform(-1, 1, size=(n_informative, n_informative))
        X[start:stop, :n_informative] = rng.standard_normal((counts[k], n_informative)) @ mixing + centres[k]
        y[start:stop] = k % n_classes
        start = stop

    if n_redundant:
        B = rng.uniform(-1, 1, size=(n_informative, n_redundant))
        X[:, n_informative:n_informative + n_redundant] = X[:, :n_informative] @ B
    X[:, n_informative + n_redundant:] = rng.standard_normal((n_samples, n_features - n_informative - n_redundant))

    if flip_y > 0:
        flip = rng.random(n_samples) < flip_y
        y[flip] = rng.integers(0, n_classes, size=int(flip.sum()))
    if shuffle:
        order = rng.permutation(n_samples)
        X, y = X[order], y[order]
        X = X[:, rng.permutation(n_features)]
    return X.astype(dtype), y


def train_test_split(X: np.ndarray, y: np.ndarray, test_size: float = 0.2, random_state: Optional[int] = None):
    """Shuffle and split into X_train, X_test, y_train, y_test."""
    if not 0 < test_size < 1:
        raise ValueError(f"train_test_split: test_size must be in (0, 1), got {test_size}")
    if len(X) != len(y):
        raise ValueError(f"train_test_split: X has {len(X)} rows but y has {len(y)}")
    order = np.random.default_rng(random_state).permutation(len(X))
    n_test = int(round(len(X) * test_size))
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]
