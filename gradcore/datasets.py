"""Synthetic data sets for examples and tests."""
from __future__ import annotations

import math
import numbers
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


def _split_size(name: str, value, n: int):
    """(kind, value) of a test_size / train_size: "f" a fraction in (0, 1), "i" a count in
    [1, n), None when not given; ValueError otherwise (scikit-learn's limits)."""
    if value is None:
        return None, None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"train_test_split: {name} must be a float in (0, 1) or an int in [1, {n - 1}], got {value!r}")
    if isinstance(value, numbers.Integral):
        kind, ok = "i", 0 < value < n
    elif isinstance(value, numbers.Real):
        kind, ok = "f", 0 < value < 1  # (NaN fails too)
    else:
        raise ValueError(f"train_test_split: {name} must be a float in (0, 1) or an int, got {type(value).__name__}")
    if not ok:
        raise ValueError(f"train_test_split: {name}={value} should be either positive and smaller than the "
                         f"number of samples {n} or a float in the (0, 1) range")
    return kind, (int(value) if kind == "i" else float(value))


def split_sizes(n: int, test_size=None, train_size=None) -> Tuple[int, int]:
    """(n_train, n_test) of ``train_test_split`` with scikit-learn's rules: a float
    test_size takes ceil(test_size * n) rows, a float train_size floor(train_size * n), an
    int that many; the one not given is the rest (test_size 0.25 when neither is given);
    both may leave rows out, never take more than n or leave the training set empty."""
    if test_size is None and train_size is None:
        test_size = 0.25
    test_kind, test = _split_size("test_size", test_size, n)
    train_kind, train = _split_size("train_size", train_size, n)
    if test_kind == "f" and train_kind == "f" and test + train > 1:
        raise ValueError(f"train_test_split: test_size + train_size = {test + train} should be in the (0, 1) range; "
                         "reduce test_size and/or train_size")
    n_test = None if test is None else (math.ceil(test * n) if test_kind == "f" else test)
    n_train = None if train is None else (math.floor(train * n) if train_kind == "f" else train)
    if n_train is None:
        n_train = n - n_test
    elif n_test is None:
        n_test = n - n_train
    if n_train + n_test > n:
        raise ValueError(f"train_test_split: train_size and test_size add up to {n_train + n_test} rows, more than "
                         f"the {n} samples; reduce test_size and/or train_size")
    if n_train == 0:
        raise ValueError(f"train_test_split: with {n} samples, test_size={test_size} and train_size={train_size} "
                         "the training set is empty; adjust them")
    return int(n_train), int(n_test)


def train_test_split(*arrays, test_size=None, train_size=None, random_state: Optional[int] = None,
                     shuffle: bool = True, stratify=None):
    """Split arrays (of one length) into train and test parts, as scikit-learn's function of
    this name: returns ``[a_train, a_test, b_train, b_test, ...]``, so
    ``X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2)``.

    Sizes follow scikit-learn (``split_sizes``): a float ``test_size`` holds out
    ceil(test_size * n) rows, a float ``train_size`` trains on floor(train_size * n), ints
    count rows, and with neither given 25 % is held out. ``shuffle`` (default) permutes
    the rows with ``random_state`` first (NumPy's generator: the same sizes as
    scikit-learn, not the same rows); ``shuffle=False`` takes the first rows for training
    and the next ones for testing. ``stratify`` is accepted only as None.
    """
    if not arrays:
        raise ValueError("train_test_split: at least one array is required")
    if stratify is not None:
        raise NotImplementedError("train_test_split: stratify= is not supported by gradcore; pass None")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"train_test_split: the arrays have different numbers of rows: {lengths}")
    n = lengths[0]
    n_train, n_test = split_sizes(n, test_size, train_size)
    if shuffle:
        order = np.random.default_rng(random_state).permutation(n)
        test, train = order[:n_test], order[n_test:n_test + n_train]
    else:
        train, test = np.arange(n_train), np.arange(n_train, n_train + n_test)
    out = []
    for a in arrays:
        a = np.asarray(a)
        out += [a[train], a[test]]
    return out
