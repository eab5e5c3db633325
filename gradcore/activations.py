"""The one list of activations: names, kernels, default parameters and families.

``gradcore.functional`` (``linear(..., activation=)``, ``leaky_relu``, ``elu``),
``gradcore.nn`` (Dense's fused activation, the activation layers, ``Activation(name)``),
the default initializers and ``gradcore.activation_names()`` all read this table, so a
name means the same thing, with the same default parameter, everywhere.

Each entry (an :class:`ActivationSpec`) records

- ``kernel``: the kind the C++ kernels are called with (``_C.activation_forward(kind, ...)``;
  "softmax" / "log_softmax" are row-wise kernels, "prelu" has its own);
- ``fused``: the dense kernel can apply it in place after the GEMM (``F.linear``);
- ``by_name``: it can be chosen by name (``Dense(activation=...)``, ``Activation(name)``);
  PReLU has a learned weight and exists only as a layer;
- ``alpha`` / ``alpha_name``: the default of its one scalar parameter and PyTorch's name for
  it (leaky_relu: negative_slope 0.01, elu: alpha 1.0, as in torch.nn); None if it has none;
- ``family``: ``RELU_LIKE`` (units can die: zero or near-zero gradient for negative
  inputs), ``SATURATING`` (bounded outputs whose gradient vanishes at the bounds) or
  ``LINEAR``; gradient monitors count dead units for the first and saturated units for
  the second;
- ``initializer``: the default kernel initializer of a Dense layer using it.

``linear`` is an alias of ``identity`` and ``swish`` of ``silu`` (Keras' names).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from . import _validate

RELU_LIKE = "relu_like"
SATURATING = "saturating"
LINEAR = "linear"
FAMILIES = (RELU_LIKE, SATURATING, LINEAR)


@dataclass(frozen=True)
class ActivationSpec:
    """One activation (see the module docstring for the fields)."""

    name: str
    kernel: str
    fused: bool
    family: str
    initializer: str = "glorot_uniform"
    alpha: Optional[float] = None
    alpha_name: Optional[str] = None
    by_name: bool = True


_SPECS = (
    ActivationSpec("identity", "identity", True, LINEAR),
    ActivationSpec("relu", "relu", True, RELU_LIKE, "he_normal"),
    ActivationSpec("leaky_relu", "leaky_relu", True, RELU_LIKE, "he_normal", 0.01, "negative_slope"),
    ActivationSpec("elu", "elu", True, RELU_LIKE, "he_normal", 1.0, "alpha"),
    ActivationSpec("selu", "selu", True, RELU_LIKE, "lecun_normal"),
    ActivationSpec("sigmoid", "sigmoid", True, SATURATING),
    ActivationSpec("tanh", "tanh", True, SATURATING),
    ActivationSpec("silu", "silu", True, RELU_LIKE),
    ActivationSpec("gelu", "gelu", True, RELU_LIKE),
    ActivationSpec("gelu_tanh", "gelu_tanh", True, RELU_LIKE),
    ActivationSpec("softplus", "softplus", True, RELU_LIKE),
    # Row-wise: applied after the dense kernel because each output needs the whole row.
    ActivationSpec("softmax", "softmax", False, SATURATING),
    ActivationSpec("log_softmax", "log_softmax", False, SATURATING),
    # A layer with a learned slope per unit; ``alpha`` is PReLU's initial slope.
    ActivationSpec("prelu", "prelu", False, RELU_LIKE, "he_normal", 0.25, "init", by_name=False),
)

#: canonical name -> spec (every activation, including the layer-only PReLU)
ACTIVATIONS: Dict[str, ActivationSpec] = {s.name: s for s in _SPECS}
#: alternative name -> canonical name
ALIASES: Dict[str, str] = {"linear": "identity", "swish": "silu"}


def _names(keep) -> Tuple[str, ...]:
    out = []
    for spec in _SPECS:
        if keep(spec):
            out.append(spec.name)
            out.extend(alias for alias, target in ALIASES.items() if target == spec.name)
    return tuple(out)


#: names ``F.linear`` fuses into the dense kernel (the same set as ``_C.activation_names()``)
FUSED_ACTIVATIONS = _names(lambda s: s.by_name and s.fused)
#: names applied after the dense kernel (they need the whole row)
ROWWISE_ACTIVATIONS = _names(lambda s: s.by_name and not s.fused)
#: every name accepted by ``Dense(activation=)`` and ``Activation(name)``
ACTIVATION_NAMES = FUSED_ACTIVATIONS + ROWWISE_ACTIVATIONS
#: default alpha of the activations that take one, by canonical name
DEFAULT_ALPHA: Dict[str, float] = {s.name: s.alpha for s in _SPECS if s.alpha is not None and s.by_name}


def get(name: str, op: str = "activation", *, fused_only: bool = False) -> ActivationSpec:
    """The spec of the activation called ``name`` (case-insensitive; aliases resolved).

    Only names that can be chosen by name are found (``fused_only``: only those the dense
    kernel fuses); anything else is a ValueError naming ``op`` and listing the choices.
    """
    choices = FUSED_ACTIVATIONS if fused_only else ACTIVATION_NAMES
    if not isinstance(name, str):
        raise TypeError(f"{op}: activation must be a name (one of {list(choices)}) or None, "
                        f"got {type(name).__name__}")
    key = name.lower()
    if key not in choices:
        raise ValueError(f"{op}: unknown activation {name!r}; choose from {list(choices)}")
    return ACTIVATIONS[ALIASES.get(key, key)]


def canonical(name: str) -> str:
    """The canonical name of ``name`` ("linear" -> "identity", "swish" -> "silu")."""
    key = name.lower()
    return ALIASES.get(key, key)


def family(name: str) -> str:
    """RELU_LIKE, SATURATING or LINEAR for any activation name (PReLU's "prelu" included)."""
    spec = ACTIVATIONS.get(canonical(name))
    if spec is None:
        raise ValueError(f"family: unknown activation {name!r}; choose from {sorted(ACTIVATIONS) + sorted(ALIASES)}")
    return spec.family


def resolve_alpha(op: str, spec: ActivationSpec, alpha: Optional[float], name: Optional[str] = None) -> float:
    """The alpha to pass to the kernels: the activation's default when ``alpha`` is None
    (0.0 for an activation that takes none), else ``alpha`` checked to be finite."""
    if alpha is None:
        return 0.0 if spec.alpha is None else spec.alpha
    return _validate.real(op, name or spec.alpha_name or "alpha", alpha)


def default_alpha(name: str) -> float:
    """The default alpha of ``name`` (a KeyError for an activation that takes none)."""
    return DEFAULT_ALPHA[canonical(name)]


__all__ = [
    "ActivationSpec", "ACTIVATIONS", "ALIASES", "FUSED_ACTIVATIONS", "ROWWISE_ACTIVATIONS", "ACTIVATION_NAMES",
    "DEFAULT_ALPHA", "RELU_LIKE", "SATURATING", "LINEAR", "FAMILIES", "get", "canonical", "family",
    "resolve_alpha", "default_alpha",
]
