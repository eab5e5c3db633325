"""gradcore.nn: layers, containers and initializers.

    import gradcore.nn as nn
    net = nn.Sequential(nn.Dense(20, 64, activation="relu"), nn.BatchNorm(64),
                        nn.Dropout(0.1), nn.Dense(64, 3))
    logits = net(X)            # X (batch, 20); converted to the network's dtype
    net.summary()              # Keras-like table with parameter counts

Parameters live in one flat buffer per dtype (``net.flat_buffers()``); ``get_parameters``
returns live views of them, ``state_dict`` / ``load_state_dict`` copies (validated before
anything is written).
"""
from . import init
from .containers import Residual, Sequential
from .layers import (
    ACTIVATION_NAMES, ELU, GELU, SELU, Activation, BatchNorm, BatchNorm1d, Dense, Dropout, Flatten, Identity, LayerNorm,
    LeakyReLU, Linear, LogSoftmax, PReLU, ReLU, Sigmoid, SiLU, Softmax, Softplus, Swish, Tanh,
)
from .module import LoadResult, Model, Module

__all__ = [
    "init", "Module", "Model", "LoadResult", "Sequential", "Residual", "Dense", "Linear", "Identity", "ReLU",
    "LeakyReLU", "ELU",
    "SELU", "Sigmoid", "Tanh", "SiLU", "Swish", "GELU", "Softplus", "Softmax", "LogSoftmax", "Activation",
    "PReLU", "BatchNorm", "BatchNorm1d", "LayerNorm", "Dropout", "Flatten", "ACTIVATION_NAMES",
]
