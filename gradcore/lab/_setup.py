"""The documents' data set, networks and initialisations, built with gradcore.

The documents (``Lab 4.3`` and the week-5 notebook) train on scikit-learn's
``make_classification(1000, 20, n_informative=15, n_redundant=5)`` split 80/20, with
networks written out by hand in NumPy: weights ``W_l`` of shape (n_l, n_{l-1}) (gradcore's
Dense layout), zero biases, a sigmoid output unit and binary cross-entropy. This module
rebuilds exactly that with gradcore's layers, in float64 like the documents' NumPy code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .. import nn
from ..datasets import make_classification, train_test_split
from ..nn import init

# The documents' deep network (Parts 3-6 of Lab 4.3) and the one they train (Part 7).
DEEP_DIMS = (20, 50, 40, 30, 20, 10, 1)
COMPARE_DIMS = (20, 30, 20, 10, 1)

# The documents' ``init_type`` values, as gradcore initializers. Their "xavier" is
# randn * sqrt(1 / fan_in) (LeCun's variance, a plain normal) and their "he"
# randn * sqrt(2 / fan_in); "random" is randn * 0.01 and the exploding network's
# randn * 10. None of them is truncated.
INITIALIZERS = {
    "random": init.SmallRandomNormal(),
    "xavier": init.VarianceScaling(1.0, "fan_in", "untruncated_normal"),
    "he": init.VarianceScaling(2.0, "fan_in", "untruncated_normal"),
    "large": init.RandomNormal(stddev=10.0),
}
INIT_FORMULAS = {
    "random": "randn * 0.01",
    "xavier": "randn * sqrt(1 / fan_in)",
    "he": "randn * sqrt(2 / fan_in)",
    "large": "randn * 10",
}


@dataclass
class Data:
    """The standardised train / test split: X (n, 20) float64, y (n, 1) float64 in {0, 1}."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    seed: int

    def describe(self) -> str:
        return (f"make_classification(n_samples={len(self.X_train) + len(self.X_test)}, n_features=20, "
                f"n_informative=15, n_redundant=5, random_state={self.seed}), split 80/20 "
                f"({len(self.X_train)} train / {len(self.X_test)} test rows, random_state={self.seed}), "
                "standardised with the training rows' mean and standard deviation")


def load_data(seed: int, n_samples: int = 1000) -> Data:
    """The documents' classification problem from gradcore's own generator (same recipe
    as scikit-learn's, not the same numbers), split 80/20 and standardised with the
    training rows' statistics (the test rows are scaled with the same numbers)."""
    X, y = make_classification(n_samples=n_samples, n_features=20, n_informative=15, n_redundant=5,
                               random_state=seed, dtype=np.float64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=seed)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return Data((X_train - mean) / std, y_train.reshape(-1, 1).astype(np.float64),
                (X_test - mean) / std, y_test.reshape(-1, 1).astype(np.float64), seed)


def mlp(dims: Sequence[int], activation: str, init_type: str, *, batchnorm: bool = False,
        output: Optional[str] = "sigmoid", dtype=np.float64) -> nn.Sequential:
    """The documents' ``DeepNeuralNetwork(layer_dims, activation, init_type)``.

    ``dims`` [input, hidden..., output]; every Dense layer drawn from ``init_type`` (a key
    of INITIALIZERS), biases zero. Hidden layers apply ``activation`` (fused into Dense),
    the last one ``output`` (sigmoid, as the documents; None for logits). With
    ``batchnorm`` each hidden layer is Dense -> BatchNorm -> activation, the documents'
    ``BatchNormNetwork`` (normalisation before the activation, none on the output layer).
    """
    initializer = INITIALIZERS[init_type]
    layers = []
    last = len(dims) - 2
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i == last:
            layers.append(nn.Dense(fan_in, fan_out, activation=output, kernel_initializer=initializer, dtype=dtype))
        elif batchnorm:
            layers += [nn.Dense(fan_in, fan_out, kernel_initializer=initializer, dtype=dtype),
                       nn.BatchNorm(fan_out, dtype=dtype), nn.Activation(activation)]
        else:
            layers.append(nn.Dense(fan_in, fan_out, activation=activation, kernel_initializer=initializer,
                                   dtype=dtype))
    return nn.Sequential(*layers)


def describe_network(dims: Sequence[int], activation: str, init_type: str, batchnorm: bool = False) -> str:
    """One line naming what ``mlp`` builds, for the report."""
    bn = " + BatchNorm before each hidden activation" if batchnorm else ""
    return f"{list(dims)}, {activation} hidden layers, sigmoid output, {INIT_FORMULAS[init_type]}{bn}"
