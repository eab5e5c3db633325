"""Layers: Dense / Linear, activations, PReLU, BatchNorm, LayerNorm, Dropout, Flatten.

Each layer's forward is one ``gradcore.functional`` call (Dense fuses its activation into
the dense kernel). Weights are stored (out_features, in_features) like torch.nn.Linear
(and the documents' W, of shape (n_l, n_{l-1})), so Dense computes
``act(x @ weight.T + bias)`` and a torch state_dict loads as it is.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from .. import _validate as _v
from .. import activations as _act
from .. import functional as F
# The activation names and default alphas come from the one table in gradcore.activations
# (shared with the functional API); re-exported here as gradcore.nn.ACTIVATION_NAMES etc.
from ..activations import ACTIVATION_NAMES, DEFAULT_ALPHA, FUSED_ACTIVATIONS, ROWWISE_ACTIVATIONS  # noqa: F401
from ..tensor import Tensor, tensor
from . import init as _init
from .module import Module, check_float_dtype


def _activation_name(op: str, activation) -> Optional[str]:
    """The lower-case name of a known activation, None for no / the identity activation."""
    if activation is None:
        return None
    spec = _act.get(activation, op)
    return None if spec.name == "identity" else activation.lower()


_FUSED_SET = frozenset(FUSED_ACTIVATIONS)
_ROWWISE_SET = frozenset(ROWWISE_ACTIVATIONS)


# ---------------------------------------------------------------------- Dense
class Dense(Module):
    """Fully connected layer ``act(x @ weight.T + bias)``: weight (out, in), bias (out,).

    The weight layout is torch.nn.Linear's (the transpose is taken inside the GEMM).
    ``activation``: None or a name (``gradcore.nn.ACTIVATION_NAMES``), fused into the dense
    kernel (softmax / log_softmax are applied after it). ``alpha``: slope of leaky_relu
    (default 0.01) or alpha of elu (default 1.0).
    ``kernel_initializer``: a name or an Initializer (fans computed for the (out, in)
    layout: fan_in = in_features); by default He normal for the ReLU family, LeCun normal
    for selu, Glorot uniform otherwise (Keras' truncated / uniform forms). ``l2``: the
    layer's penalty ``l2 * sum(weight ** 2)`` (Keras' kernel_regularizer), returned by
    ``regularization_loss()``.
    """

    # Internal: a GradientMonitor's tap (see F.linear's ``_tap``); None when unmonitored.
    _monitor_tap = None

    def __init__(self, in_features: int, out_features: int, activation: Optional[str] = None,
                 use_bias: bool = True, kernel_initializer=None, bias_initializer="zeros", l2: float = 0.0,
                 dtype=np.float32, alpha: Optional[float] = None):
        super().__init__()
        self.in_features = _v.positive_int(self._op, "in_features", in_features)
        self.out_features = _v.positive_int(self._op, "out_features", out_features)
        self.activation = _activation_name(self._op, activation)
        self.use_bias = bool(use_bias)
        self.l2 = _v.nonnegative(self._op, "l2", l2)
        self.alpha = _act.resolve_alpha(self._op, _act.get(self.activation or "identity", self._op), alpha, "alpha")
        dt = check_float_dtype(self._op, dtype)
        self._dtype = dt
        self.kernel_initializer = (_init.default_kernel_initializer(self.activation) if kernel_initializer is None
                                   else _init.get(kernel_initializer))
        self.bias_initializer = _init.get(bias_initializer)
        self.weight = Tensor(self.kernel_initializer((self.out_features, self.in_features), dt), requires_grad=True)
        if self.use_bias:
            self.bias = Tensor(self.bias_initializer((self.out_features,), dt), requires_grad=True)
        else:
            self.register_parameter("bias", None)

    @property
    def _op(self) -> str:
        return type(self).__name__

    def forward(self, x) -> Tensor:
        x = self._as_input(x)
        self.check_input(x)
        activation = self.activation
        if activation is not None and activation not in _FUSED_SET and activation not in _ROWWISE_SET:
            # set after construction: the constructor's check and spelling (an unknown name
            # raises instead of running as the identity)
            activation = _activation_name(self._op, activation)
        fused = activation if activation is None or activation in _FUSED_SET else None
        tap = self._monitor_tap
        params = self._parameters
        try:  # the registry directly: ``self.weight`` is found by Module.__getattr__ after a failed lookup
            weight, bias = params["weight"], params["bias"]
        except KeyError:
            weight, bias = self.weight, self.bias
        y = F.linear(x, weight, bias, activation=fused, alpha=self.alpha, _tap=tap)
        if fused is not None or activation is None:
            return y
        if activation == "softmax":
            y = F.softmax(y, dim=-1)
        elif activation == "log_softmax":
            y = F.log_softmax(y, dim=-1)
        if tap is not None:
            tap.output(y.data)  # the layer's output is the row-wise activation's, not the dense kernel's
        return y

    def own_regularization(self) -> Optional[Tensor]:
        l2 = self.l2
        if type(l2) is not float or not 0.0 <= l2 < math.inf:  # set after construction: the constructor's check
            l2 = _v.nonnegative(f"{self._op} (l2 set after construction)", "l2", l2)
        if l2 == 0.0:
            return None
        w = self.weight
        return (w * w).sum() * l2

    def input_width(self) -> Optional[int]:
        return self.in_features

    def output_shape(self, input_shape):
        if input_shape is None:
            return (None, self.out_features)
        return tuple(input_shape[:-1]) + (self.out_features,)

    def extra_repr(self) -> str:
        s = f"{self.in_features} -> {self.out_features}"
        if self.activation:
            s += f", activation={self.activation}"
            if self.activation in DEFAULT_ALPHA and self.alpha != DEFAULT_ALPHA[self.activation]:
                s += f", alpha={self.alpha:g}"
        if not self.use_bias:
            s += ", use_bias=False"
        if self.l2:
            s += f", l2={self.l2:g}"
        return s


class Linear(Dense):
    """torch.nn.Linear: ``x @ weight.T + bias`` with torch's signature and initialisation.

    ``Linear(in_features, out_features, bias=True, dtype=float32)``; weight (out, in) drawn
    from U(-1/sqrt(in), 1/sqrt(in)) (torch's kaiming_uniform with a=sqrt(5)), bias from the
    same range. Everything else is Dense: ``activation``, ``l2``, ``alpha`` and explicit
    initializers may be given by keyword.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32, *,
                 activation: Optional[str] = None, kernel_initializer=None, bias_initializer=None,
                 l2: float = 0.0, alpha: Optional[float] = None):
        fan_in = _v.positive_int("Linear", "in_features", in_features)
        if kernel_initializer is None:
            kernel_initializer = _init.KaimingUniform(a=math.sqrt(5.0))
        if bias_initializer is None:
            bound = 1.0 / math.sqrt(fan_in)
            bias_initializer = _init.RandomUniform(-bound, bound)
        super().__init__(in_features, out_features, activation=activation, use_bias=bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, l2=l2,
                         dtype=dtype, alpha=alpha)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.use_bias}"
        if self.activation:
            s += f", activation={self.activation}"
        if self.l2:
            s += f", l2={self.l2:g}"
        return s


# ---------------------------------------------------------------------- activations
class _Elementwise(Module):
    """A parameter-free layer applying one activation; keeps the input's dtype and shape."""

    preserves_shape = True
    activation_name = "identity"

    def _input(self, x) -> Tensor:
        if isinstance(x, Tensor):
            return x
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{self.describe()}: input must be numeric, got dtype {arr.dtype}")
        return tensor(arr)

    @property
    def alpha(self) -> float:
        return 0.0


class Identity(_Elementwise):
    activation_name = "identity"

    def forward(self, x):
        return self._input(x)


class ReLU(_Elementwise):
    activation_name = "relu"

    def forward(self, x):
        return F.relu(self._input(x))


class LeakyReLU(_Elementwise):
    """``x if x > 0 else negative_slope * x``."""

    activation_name = "leaky_relu"

    def __init__(self, negative_slope: float = _act.default_alpha("leaky_relu")):
        super().__init__()
        self.negative_slope = _v.real("LeakyReLU", "negative_slope", negative_slope)

    @property
    def alpha(self):
        return self.negative_slope

    def forward(self, x):
        return F.leaky_relu(self._input(x), self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope:g}"


class ELU(_Elementwise):
    """``x if x > 0 else alpha * (exp(x) - 1)``."""

    activation_name = "elu"

    def __init__(self, alpha: float = _act.default_alpha("elu")):
        super().__init__()
        self._alpha = _v.real("ELU", "alpha", alpha)

    @property
    def alpha(self):
        return self._alpha

    def forward(self, x):
        return F.elu(self._input(x), self._alpha)

    def extra_repr(self):
        return f"alpha={self._alpha:g}"


class SELU(_Elementwise):
    activation_name = "selu"

    def forward(self, x):
        return F.selu(self._input(x))


class Sigmoid(_Elementwise):
    activation_name = "sigmoid"

    def forward(self, x):
        return F.sigmoid(self._input(x))


class Tanh(_Elementwise):
    activation_name = "tanh"

    def forward(self, x):
        return F.tanh(self._input(x))


class SiLU(_Elementwise):
    """``x * sigmoid(x)`` (also called Swish)."""

    activation_name = "silu"

    def forward(self, x):
        return F.silu(self._input(x))


Swish = SiLU


class GELU(_Elementwise):
    """Gaussian error linear unit; ``approximate='tanh'`` uses the tanh formula."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = _v.choice("GELU", "approximate", approximate, ("none", "tanh"))

    @property
    def activation_name(self):
        return "gelu" if self.approximate == "none" else "gelu_tanh"

    def forward(self, x):
        return F.gelu(self._input(x), approximate=self.approximate)

    def extra_repr(self):
        return "" if self.approximate == "none" else "approximate='tanh'"


class Softplus(_Elementwise):
    """``log(1 + exp(x))``."""

    activation_name = "softplus"

    def forward(self, x):
        return F.softplus(self._input(x))


class _Rowwise(_Elementwise):
    """An activation over whole rows along ``dim`` (torch's name; ``axis=`` is accepted too),
    default -1; ``_function`` is the functional op."""

    _function = None

    def __init__(self, dim: Optional[int] = None, *, axis: Optional[int] = None):
        super().__init__()
        self.dim = F._dim(type(self).__name__, dim, axis)

    @property
    def axis(self) -> int:
        return self.dim

    def forward(self, x):
        return self._function(self._input(x), dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_Rowwise):
    """Softmax along ``dim`` (torch's name; ``axis=`` is accepted too), default -1."""

    activation_name = "softmax"
    _function = staticmethod(F.softmax)


class LogSoftmax(_Rowwise):
    """log(softmax(x)) along ``dim`` (torch's name; ``axis=`` is accepted too), default -1."""

    activation_name = "log_softmax"
    _function = staticmethod(F.log_softmax)


class Activation(_Elementwise):
    """An activation chosen by name (any of ``ACTIVATION_NAMES``); ``alpha`` is the slope of
    leaky_relu (default 0.01) or the alpha of elu (default 1.0)."""

    def __init__(self, name: str, alpha: Optional[float] = None):
        super().__init__()
        spec = _act.get(name, "Activation")
        self.name = name.lower()
        self._kind = spec.name
        self._alpha = _act.resolve_alpha("Activation", spec, alpha, "alpha")

    @property
    def activation_name(self):
        return self._kind

    @property
    def alpha(self):
        return self._alpha

    def forward(self, x):
        x = self._input(x)
        kind = self._kind
        if kind == "identity":
            return x
        if kind == "leaky_relu":
            return F.leaky_relu(x, self._alpha)
        if kind == "elu":
            return F.elu(x, self._alpha)
        if kind == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        return getattr(F, kind)(x)

    def extra_repr(self):
        s = repr(self.name)
        if self._kind in DEFAULT_ALPHA and self._alpha != DEFAULT_ALPHA[self._kind]:
            s += f", alpha={self._alpha:g}"
        return s


# ---------------------------------------------------------------------- PReLU
class PReLU(Module):
    """``x if x > 0 else weight * x`` with a learnable slope: one shared (num_parameters=1)
    or one per unit of the last axis; every slope starts at ``init``."""

    preserves_shape = True
    activation_name = "prelu"

    def __init__(self, num_parameters: int = 1, init: float = _act.ACTIVATIONS["prelu"].alpha, dtype=np.float32):
        super().__init__()
        self.num_parameters = _v.positive_int("PReLU", "num_parameters", num_parameters)
        self.init = _v.real("PReLU", "init", init)
        self._dtype = check_float_dtype("PReLU", dtype)
        self.weight = Tensor(np.full(self.num_parameters, self.init, dtype=self._dtype), requires_grad=True)

    def forward(self, x):
        x = self._as_input(x)
        self.check_input(x)
        return F.prelu(x, self.weight)

    def input_width(self):
        return self.num_parameters if self.num_parameters > 1 else None

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}" + (f", init={self.init:g}" if self.init != _act.ACTIVATIONS["prelu"].alpha else "")


# ---------------------------------------------------------------------- normalisation
class BatchNorm(Module):
    """Batch normalisation of (batch, features) inputs (PyTorch BatchNorm1d semantics).

    ``weight`` (gamma, ones) and ``bias`` (beta, zeros) are learned; the buffers
    ``running_mean`` (zeros) and ``running_var`` (ones) are updated in place during
    training as ``running = (1 - momentum) * running + momentum * batch`` (unbiased batch
    variance) and used in evaluation mode. ``num_batches_tracked`` (an int64 scalar, as in
    torch) counts the training batches; with ``momentum=None`` the running statistics are
    their cumulative average (momentum 1 / num_batches_tracked), as in torch.
    """

    preserves_shape = True

    def __init__(self, features: int, momentum: Optional[float] = 0.1, eps: float = 1e-5, dtype=np.float32):
        super().__init__()
        self.features = _v.positive_int("BatchNorm", "features", features)
        self.momentum = None if momentum is None else _v.probability("BatchNorm", "momentum", momentum)
        self.eps = _v.positive("BatchNorm", "eps", eps)
        dt = check_float_dtype("BatchNorm", dtype)
        self._dtype = dt
        self.weight = Tensor(np.ones(self.features, dtype=dt), requires_grad=True)
        self.bias = Tensor(np.zeros(self.features, dtype=dt), requires_grad=True)
        self.register_buffer("running_mean", np.zeros(self.features, dtype=dt))
        self.register_buffer("running_var", np.ones(self.features, dtype=dt))
        # torch's counter: an integer buffer that astype leaves alone.
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def forward(self, x):
        x = self._as_input(x)
        self.check_input(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training:
            counter = self.num_batches_tracked
            if self.momentum is None:
                momentum = 1.0 / float(counter + 1)
            out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                               training=True, momentum=momentum, eps=self.eps)
            counter += 1  # in place, after the kernel accepted the batch (fit's rollback restores it)
            return out
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=momentum, eps=self.eps)

    def input_width(self):
        return self.features

    def check_input(self, x, where: Optional[str] = None) -> None:
        """Module's feature check, and in training mode a batch of more than one row (one row
        has no batch statistics): the error names the layer as its network does."""
        Module.check_input(self, x, where)
        if self.training:
            data = x.data if isinstance(x, Tensor) else x
            shape = tuple(np.shape(data))
            if len(shape) == 2 and shape[0] == 1:
                label = where or type(self).__name__
                raise ValueError(
                    f"{label} ({self.describe()}): expected more than 1 value per channel when training, got input "
                    f"of shape {shape}; a batch of one row has no batch statistics: call .eval() on the network to "
                    f"use the running statistics, or give a batch of 2 or more rows")

    def extra_repr(self):
        s = f"{self.features}"
        if self.momentum != 0.1:
            s += f", momentum={'None' if self.momentum is None else format(self.momentum, 'g')}"
        if self.eps != 1e-5:
            s += f", eps={self.eps:g}"
        return s


class BatchNorm1d(BatchNorm):
    """torch.nn.BatchNorm1d with torch's signature and argument order:
    ``BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True, dtype=float32)``. The math, names and state_dict keys are
    BatchNorm's (torch's), so a torch network's ``state_dict()`` loads into it. Only the
    default ``affine`` and ``track_running_stats`` are supported.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=np.float32):
        if affine is not True or track_running_stats is not True:
            raise ValueError("BatchNorm1d: only affine=True and track_running_stats=True are supported, got "
                             f"affine={affine!r}, track_running_stats={track_running_stats!r}")
        super().__init__(num_features, momentum=momentum, eps=eps, dtype=dtype)


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` axes of each sample; with
    ``elementwise_affine`` a learned ``weight`` (ones) and ``bias`` (zeros) of that shape."""

    preserves_shape = True

    def __init__(self, normalized_shape: Union[int, Sequence[int]], eps: float = 1e-5,
                 elementwise_affine: bool = True, dtype=np.float32):
        super().__init__()
        shape = _v.dims("LayerNorm", "normalized_shape", normalized_shape)
        self.normalized_shape = shape
        self.eps = _v.positive("LayerNorm", "eps", eps)
        self.elementwise_affine = bool(elementwise_affine)
        dt = check_float_dtype("LayerNorm", dtype)
        self._dtype = dt
        if self.elementwise_affine:
            self.weight = Tensor(np.ones(shape, dtype=dt), requires_grad=True)
            self.bias = Tensor(np.zeros(shape, dtype=dt), requires_grad=True)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        x = self._as_input(x)
        k = len(self.normalized_shape)
        if x.shape[max(x.ndim - k, 0):] != self.normalized_shape or x.ndim < k:
            raise ValueError(f"LayerNorm ({self.describe()}): expected input ending with {self.normalized_shape}, "
                             f"got shape {x.shape}")
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, eps=self.eps)

    def input_width(self):
        return self.normalized_shape[-1]

    def extra_repr(self):
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        s = f"{shape}"
        if self.eps != 1e-5:
            s += f", eps={self.eps:g}"
        if not self.elementwise_affine:
            s += ", elementwise_affine=False"
        return s


# ---------------------------------------------------------------------- others
class Dropout(Module):
    """Zero each element with probability ``p`` in training mode and scale the rest by
    1 / (1 - p); the identity in evaluation mode. Masks come from gradcore's seeded stream.

    ``Dropout(p)`` as in torch; Keras' keyword ``rate=`` means the same and is accepted.
    """

    preserves_shape = True

    def __init__(self, p: Optional[float] = None, *, rate: Optional[float] = None):
        super().__init__()
        if p is not None and rate is not None:
            raise TypeError(f"Dropout: pass p or rate, not both (got p={p!r}, rate={rate!r})")
        self.p = _v.probability("Dropout", "p", 0.5 if p is None and rate is None else (p if p is not None else rate))

    @property
    def rate(self) -> float:
        return self.p

    def forward(self, x):
        x = x if isinstance(x, Tensor) else tensor(x)
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p:g}"


class Flatten(Module):
    """Reshape (batch, d1, d2, ...) to (batch, d1 * d2 * ...)."""

    def forward(self, x):
        x = x if isinstance(x, Tensor) else tensor(x)
        if x.ndim == 0:
            raise ValueError("Flatten: input needs a batch axis, got a scalar")
        return x.reshape(x.shape[0], -1)

    def output_shape(self, input_shape):
        if input_shape is None:
            return None
        rest = input_shape[1:]
        if any(s is None for s in rest):
            return (input_shape[0], None)
        return (input_shape[0], int(np.prod(rest)) if rest else 1)


__all__ = [
    "Dense", "Linear", "Identity", "ReLU", "LeakyReLU", "ELU", "SELU", "Sigmoid", "Tanh", "SiLU", "Swish", "GELU",
    "Softplus", "Softmax", "LogSoftmax", "Activation", "PReLU", "BatchNorm", "LayerNorm", "Dropout", "Flatten",
    "ACTIVATION_NAMES", "FUSED_ACTIVATIONS",
]
