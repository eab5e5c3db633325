"""Gradient-health diagnosis: what is wrong with a network's gradients, in plain words, and
what to change in *this* network.

Two entry points return a :class:`Diagnosis`:

* ``diagnose(net, X, y, loss=...)``: one forward and one backward pass on (a sample of)
  the data, as the documents' ``diagnose_gradient_health``. The network is left exactly as
  it was: parameter values, existing ``.grad`` arrays (values and identity), BatchNorm
  buffers and ``num_batches_tracked``, each module's training mode, hooks, and gradcore's
  random stream (which Dropout draws from).
* ``diagnose_history(mon)`` (also ``mon.diagnose()``): over the steps a
  ``GradientMonitor`` recorded: persistent vanishing, explosions, oscillating, diverging
  or flat loss, dying and saturated units, update / weight ratios, the origin of the first
  NaN / Inf and skipped steps.

Classification, as the documents do it: every layer with a weight *matrix* (Dense /
Linear, the documents' W of shape (n_l, n_{l-1})) is "vanishing" when the L2 norm of its
weight gradient is below ``vanishing`` (0.01), "exploding" above ``exploding`` (100) and
"healthy" otherwise. A NaN or Inf norm counts as exploding (the documents' comparisons would
call a NaN healthy) unless the NaN came from outside the arithmetic: non-finite rows of X / y
(``diagnose`` checks them directly), a parameter that already held NaN / Inf, or, over a
history, a first NaN in the first layer's output or in the loss alone; such layers are
"nonfinite" (``nonfinite_layers``), the advice is about the data or the parameter, and no
clipping threshold or learning rate is derived from NaN norms. Normalisation layers' gamma and PReLU slopes are vectors, not the
documents' W: their norms are in ``layer_stats`` but they are not classified. The gradient
is that of the loss actually minimised, the batch mean, which is the documents' dW (their
``dW = dZ A_prev^T / m``). ``flow_ratio`` is the first classified layer's norm over the
last one's (inf when only the last is 0, as in the documents; nan for 0 / 0, undefined); a ratio below ``flow_ratio``
(1e-3) is a "vanishing_flow" finding. Over a history, a layer's norm is its median over the
recorded steps (so "vanishing" means below the threshold at most steps), and a layer is
exploding when its norm exceeded ``exploding`` (or was non-finite) at any recorded step.

Recommendations name the layers and carry their numbers in ``params``. To tell a bad
initialisation from a bad activation, a layer's weight standard deviation is compared with
the one the initializer matching its activation draws (``gradcore.nn.init``: He normal
sqrt(2 / fan_in) for the ReLU family, LeCun normal sqrt(1 / fan_in) for SELU, Glorot
sqrt(2 / (fan_in + fan_out)) for sigmoid, tanh and linear layers); within a factor
``INIT_TOLERANCE`` (2) the weights are taken to be right. When they are not, the layer's own
``kernel_initializer`` says why: if it draws a wrong spread for the layer's shape, the
initializer is recommended; if it draws the right one, the weights drifted (in training, or
by hand) and no other initializer would help. A vanishing sigmoid layer gets ReLU + He (its
derivative is at most 1/4 whatever the initialisation); a vanishing tanh layer keeps tanh
with Glorot when only its initialisation is off, and gets ReLU + He otherwise. The activation
recommendation names every saturating hidden layer: exactly the layers ``repair``'s
"activation" remedy changes. Weights over ``LARGE_WEIGHT_FACTOR`` (10) times the matching
std are a "large_weights" finding and, when their own initializer is right (set by hand or
grown in training), a re-initialise recommendation that replaces the architectural advice
for the layers they starve. Dead units get LeakyReLU / ELU advice only for a plain ReLU; a
layer that already has a negative slope is told its units sit in the negative regime.
Saturated units always get advice (a saturated sigmoid output: huge logits, a smaller last
layer, a lower rate, a logits loss), and "[none] ... healthy" never stands next to a
warning; a high update ratio of the output layer alone, while most layers vanish, is info.

``Diagnosis.to_dict()`` is JSON-safe: plain dicts, lists, str, int, float, bool and None,
with every non-finite float written as the string "nan", "inf" or "-inf" (so
``json.dumps(d.to_dict(), allow_nan=False)`` works and ``float(s)`` reads them back).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import _validate
from .. import activations as _act
from .. import losses as _losses
from .. import random as _random
from ..nn import init as _init
from ..nn.layers import BatchNorm, Dense, LayerNorm
from ..nn.module import Module
from ..tensor import Tensor, enable_grad

RECOMMENDATION_KINDS = ("activation", "initializer", "clipping", "batchnorm", "learning_rate", "residual", "data",
                        "parameter", "none")
SEVERITIES = ("info", "warning", "error")
FINDING_KINDS = ("vanishing", "exploding", "exploding_growth", "vanishing_flow", "nonfinite", "dead_units",
                 "saturated_units", "oscillating_loss", "diverging_loss", "flat_loss", "update_ratio_high",
                 "update_ratio_low", "skipped_steps", "large_weights")

#: thresholds and their defaults (the documents' 0.01 / 100; the monitor's others)
DEFAULT_THRESHOLDS: Dict[str, Any] = {
    "vanishing": 0.01,          # weight-gradient norm below: vanishing
    "exploding": 100.0,         # weight-gradient norm above: exploding
    "flow_ratio": 1e-3,         # first / last layer norm below: vanishing flow
    "dead": 0.7,                # fraction of dead units above: dying layer
    "saturated": 0.5,           # fraction of saturated entries above: saturated layer
    "update_ratio": (1e-5, 1e-1),  # update / weight norm outside: learning rate off for the layer
    "flat": 1e-4,               # relative range of the loss over the last half below: flat loss
    "oscillation": 0.05,        # median step-to-step loss change / mean loss below: batch noise, not oscillation
    "clip_percentile": 90.0,    # percentile of the observed norms a clipping threshold is taken at
}
#: a weight standard deviation within this factor of the matching initializer's is "right"
INIT_TOLERANCE = 2.0
#: a weight standard deviation this many times the matching initializer's is "too large":
#: pre-activations that far out saturate a bounded activation or overflow
LARGE_WEIGHT_FACTOR = 10.0
#: the factor a learning rate is lowered (or raised) by
LR_FACTOR = 10.0
#: fewest recorded finite losses the loss-curve findings need
MIN_LOSS_STEPS = 6


def _format(v) -> str:
    """A number for messages: 3 significant digits, small and large ones in e-notation."""
    if v is None:
        return "n/a"
    v = float(v)
    if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.3e}"


def _names(layers: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in layers)


def json_safe(value):
    """``value`` with NumPy scalars / arrays made plain, tuples made lists and non-finite
    floats written as "nan" / "inf" / "-inf"."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    return value if value is None or isinstance(value, str) else str(value)


# ---------------------------------------------------------------------- results
@dataclass
class Finding:
    """One observation: ``kind`` (one of ``FINDING_KINDS``), ``layer`` (its name in
    ``named_modules``; "" for the whole network), ``step`` (the recorded step, None when it
    concerns no single step), ``severity`` ("info", "warning" or "error"), ``evidence``
    (the numbers behind it) and ``message`` (plain words)."""

    kind: str
    layer: str
    step: Optional[int]
    severity: str
    evidence: Dict[str, Any]
    message: str

    def __str__(self) -> str:
        where = f"layer '{self.layer}'" if self.layer else "network"
        when = "" if self.step is None else f", step {self.step}"
        return f"[{self.severity}] {self.kind} ({where}{when}): {self.message}"


@dataclass
class Recommendation:
    """One change to try: ``kind`` (one of ``RECOMMENDATION_KINDS``), ``layers`` (the names
    of the layers it concerns), ``message`` (what to do, with gradcore / Keras / PyTorch
    spellings) and ``params`` (its numbers: thresholds, learning rates, standard deviations)."""

    kind: str
    layers: List[str]
    message: str
    params: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _validate.choice("Recommendation", "kind", self.kind, RECOMMENDATION_KINDS)

    def __str__(self) -> str:
        where = f" (layers {_names(self.layers)})" if self.layers else ""
        return f"[{self.kind}]{where} {self.message}"


@dataclass
class Diagnosis:
    """The gradient health of a network.

    ``healthy_layers`` / ``vanishing_layers`` / ``exploding_layers``: names of the layers
    with a weight matrix, in forward order, by the documents' rule (module docstring);
    ``gradient_norms``: {layer: L2 norm of its weight gradient} (the median over the
    recorded steps for a history); ``flow_ratio``: first / last of those norms;
    ``layer_stats``: {layer: {metric: value}} of the (last) recorded step, the monitor's
    metric names, "" holding the network-wide ones (loss, grad_norm ...);
    ``layer_info``: {layer: {"kind", "activation"}}; ``findings``; ``recommendations``;
    ``thresholds`` used; ``source`` ("diagnose" or "history"); ``steps`` recorded;
    ``samples``: rows of the forward pass (None for a history).
    """

    healthy_layers: List[str]
    vanishing_layers: List[str]
    exploding_layers: List[str]
    flow_ratio: float
    gradient_norms: Dict[str, float]
    layer_stats: Dict[str, Dict[str, float]]
    findings: List[Finding]
    recommendations: List[Recommendation]
    layer_info: Dict[str, Dict[str, Optional[str]]] = field(default_factory=dict)
    thresholds: Dict[str, Any] = field(default_factory=dict)
    source: str = "diagnose"
    steps: int = 1
    samples: Optional[int] = None
    nonfinite_layers: List[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No vanishing, exploding or non-finite layer and no finding of severity warning or error."""
        return (not self.vanishing_layers and not self.exploding_layers and not self.nonfinite_layers
                and all(f.severity == "info" for f in self.findings))

    def status(self, layer: str) -> Optional[str]:
        """"healthy", "vanishing", "exploding" or "nonfinite" (a NaN / Inf norm whose origin is
        the data or a parameter, not an overflow) for a classified layer, else None."""
        for label, names in (("vanishing", self.vanishing_layers), ("exploding", self.exploding_layers),
                             ("nonfinite", self.nonfinite_layers), ("healthy", self.healthy_layers)):
            if layer in names:
                return label
        return None

    def to_dict(self) -> Dict[str, Any]:
        """Everything as JSON-safe plain values (non-finite floats as "nan" / "inf" /
        "-inf"), plus ``healthy``."""
        out = asdict(self)
        out["healthy"] = self.healthy
        return json_safe(out)

    def __str__(self) -> str:
        th = self.thresholds
        if self.source == "history":
            head = f"Gradient diagnosis over {self.steps} recorded step(s)"
        else:
            head = f"Gradient diagnosis of one forward/backward pass on {self.samples} sample(s)"
        lines = [head, f"thresholds: vanishing < {_format(th.get('vanishing'))}, exploding > "
                       f"{_format(th.get('exploding'))}, flow ratio < {_format(th.get('flow_ratio'))}", ""]
        history = self.source == "history"
        rows = [("layer", "kind", "activation", "median ||dW||" if history else "||dW||",
                 "last ||dZ||" if history else "||dZ||", "status")]
        for name, norm in self.gradient_norms.items():
            info = self.layer_info.get(name, {})
            dz = self.layer_stats.get(name, {}).get("dz_norm")
            rows.append((name, info.get("kind") or "", info.get("activation") or "-", _format(norm),
                         _format(dz) if dz is not None else "-", self.status(name) or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += ["", f"flow ratio (first / last): {_format(self.flow_ratio)}",
                  f"healthy: {_names(self.healthy_layers) or '-'}",
                  f"vanishing: {_names(self.vanishing_layers) or '-'}",
                  f"exploding: {_names(self.exploding_layers) or '-'}"]
        if self.nonfinite_layers:
            lines.append(f"non-finite (NaN / Inf from the data or a parameter): {_names(self.nonfinite_layers)}")
        lines += ["", "Findings:"]
        lines += [f"  {f}" for f in self.findings] or ["  none"]
        lines += ["", "Recommendations:"]
        lines += [f"  {i}. {r}" for i, r in enumerate(self.recommendations, 1)]
        lines += ["", f"Overall: {'healthy' if self.healthy else 'needs attention'}"]
        return "\n".join(lines)


# ---------------------------------------------------------------------- the layers
@dataclass(eq=False)
class _Layer:
    """One monitored layer as the diagnosis sees it: ``activation`` is the activation
    applied to its output (a Dense layer's fused one, or the activation layer following
    it before the next weighted layer); ``normalized``: a BatchNorm / LayerNorm follows it
    before the next weighted layer; ``weighted``: it has a weight matrix."""

    name: str
    kind: str
    module: Any
    activation: Optional[str]
    weighted: bool
    normalized: bool = False

    @property
    def family(self) -> Optional[str]:
        return _act.family(self.activation) if self.activation else None

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.module.weight.shape)


def _own_activation(module) -> Optional[str]:
    """The canonical name of the activation a module applies itself, None for none."""
    name = module.activation if isinstance(module, Dense) else getattr(module, "activation_name", None)
    if not isinstance(name, str):
        return None
    name = _act.canonical(name)
    return None if name == "identity" else name


def _is_weighted(module) -> bool:
    """A weight matrix (Dense / Linear, or a user's layer with one); not a normalisation's scale."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, Tensor) and weight.ndim == 2 and not isinstance(module, (BatchNorm, LayerNorm))


def _describe_layers(ordered: Sequence[Tuple[str, Any]]) -> List[_Layer]:
    """The layers of ``ordered`` ((name, module) pairs in forward order, leaf modules),
    with the activation each weighted layer's output goes through."""
    layers = [_Layer(name, type(m).__name__, m, _own_activation(m), _is_weighted(m)) for name, m in ordered]
    for i, layer in enumerate(layers):
        if not layer.weighted:
            continue
        for nxt in layers[i + 1:]:
            if nxt.weighted:
                break
            if isinstance(nxt.module, (BatchNorm, LayerNorm)):
                layer.normalized = True
            elif layer.activation is None and nxt.activation is not None:
                layer.activation = nxt.activation
    return layers


# ---------------------------------------------------------------------- initialisation
# the initializers matching an activation (gradcore.nn.init names), in words and in PyTorch
_INIT_WORDS = {"he_normal": "He (Kaiming) normal, std sqrt(2 / fan_in)",
               "glorot_normal": "Glorot (Xavier) normal, std sqrt(2 / (fan_in + fan_out))",
               "lecun_normal": "LeCun normal, std sqrt(1 / fan_in)"}
_TORCH_INIT = {"he_normal": "nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')",
               "glorot_normal": "nn.init.xavier_normal_(layer.weight)",
               "lecun_normal": "nn.init.normal_(layer.weight, std=fan_in ** -0.5)"}


def _matching_init(layer: _Layer) -> str:
    """He for the ReLU family, LeCun for SELU, Glorot for sigmoid, tanh and linear layers."""
    if layer.activation == "selu":
        return "lecun_normal"
    return "he_normal" if layer.family == _act.RELU_LIKE else "glorot_normal"


def initializer_std(initializer, shape) -> Optional[float]:
    """The standard deviation ``initializer`` draws a weight of ``shape`` with (for the
    truncated Keras forms, the one after truncation); None when it cannot tell (a plain
    callable)."""
    if isinstance(initializer, (_init.Zeros, _init.Constant, _init.Ones)):
        return 0.0
    if isinstance(initializer, _init.RandomUniform):
        return (initializer.maxval - initializer.minval) / math.sqrt(12.0)
    if isinstance(initializer, _init.TruncatedNormal):
        return initializer.stddev * _init.TRUNCATED_STD_FACTOR
    if isinstance(initializer, _init.RandomNormal):
        return initializer.stddev
    std = getattr(initializer, "std", None)   # VarianceScaling and its presets, Kaiming*, Xavier*
    return float(std(shape)) if callable(std) else None


def _weight_std(layer: _Layer) -> float:
    """The standard deviation of the layer's weight matrix now, in float64."""
    return float(np.asarray(layer.module.weight.data, dtype=np.float64).std())


def _bias_mean(module) -> Optional[float]:
    """The mean of ``module``'s bias in float64, None when it has none."""
    bias = getattr(module, "bias", None)
    return float(np.asarray(bias.data, dtype=np.float64).mean()) if isinstance(bias, Tensor) else None


def _off(ratio: float) -> bool:
    return bool(not math.isfinite(ratio) or ratio < 1.0 / INIT_TOLERANCE or ratio > INIT_TOLERANCE)


def _init_check(layer: _Layer) -> Dict[str, Any]:
    """How the weight's spread compares with the initializer matching its activation.

    {"initializer": the layer's own kernel initializer (repr), "initializer_std": what it
    draws for this shape (None if unknown), "weight_std": measured now, "matching": the
    matching initializer's name, "matching_std", "ratio": weight_std / matching_std, "off":
    ratio outside [1 / INIT_TOLERANCE, INIT_TOLERANCE], "cause": "initializer" when the
    configured initializer itself is off (or unknown and the weights are off), "drift" when
    it is right but the weights moved away from it (trained or set by hand), None when the
    weights are right}.
    """
    name = _matching_init(layer)
    target = _init.get(name).std(layer.shape)
    std = _weight_std(layer)
    ratio = std / target
    own = getattr(layer.module, "kernel_initializer", None)
    own_std = initializer_std(own, layer.shape) if own is not None else None
    cause = None
    if _off(ratio):
        cause = "initializer" if own_std is None or _off(own_std / target) else "drift"
    return {"initializer": repr(own) if own is not None else None, "initializer_std": own_std, "weight_std": std,
            "matching": name, "matching_std": target, "ratio": ratio, "off": _off(ratio), "cause": cause}


# ---------------------------------------------------------------------- classification
def classify(norm: float, vanishing: float, exploding: float) -> str:
    """The documents' rule for one weight-gradient norm; a non-finite norm is exploding."""
    if not math.isfinite(norm) or norm > exploding:
        return "exploding"
    if norm < vanishing:
        return "vanishing"
    return "healthy"


def _flow_ratio(first: float, last: float) -> float:
    """first / last, inf when only last is 0 (the documents'), nan when either is NaN or
    both are 0 (0 / 0: no gradient reaches either layer, the ratio is undefined)."""
    if math.isnan(first) or math.isnan(last) or (first == 0 and last == 0):
        return math.nan
    return first / last if last > 0 else math.inf


def _check_thresholds(op: str, given: Mapping[str, Any], base: Mapping[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(given) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise TypeError(f"{op}: unknown threshold(s) {unknown}; choose from {sorted(DEFAULT_THRESHOLDS)}")
    th = dict(base)
    th.update(given)
    for key in ("vanishing", "flow_ratio"):   # 0 turns the check off, as in the monitor
        th[key] = _validate.nonnegative(op, key, th[key])
    for key in ("exploding", "flat", "oscillation"):
        th[key] = _validate.positive(op, key, th[key])
    for key in ("dead", "saturated"):
        th[key] = _validate.probability(op, key, th[key])
    th["clip_percentile"] = _validate.real(op, "clip_percentile", th["clip_percentile"], low=0.0, high=100.0)
    try:
        lo, hi = th["update_ratio"]
    except (TypeError, ValueError):
        raise TypeError(f"{op}: update_ratio must be a pair (low, high), got {th['update_ratio']!r}") from None
    th["update_ratio"] = (_validate.nonnegative(op, "update_ratio low", lo), _validate.positive(op, "update_ratio high", hi))
    if th["vanishing"] >= th["exploding"]:
        raise ValueError(f"{op}: vanishing ({th['vanishing']}) must be below exploding ({th['exploding']})")
    if th["update_ratio"][0] >= th["update_ratio"][1]:
        raise ValueError(f"{op}: update_ratio must be (low, high) with low < high, got {th['update_ratio']}")
    return th


def _layer_findings(weighted: List[_Layer], norms: Dict[str, float], status: Dict[str, str], th,
                    step: Optional[int], detail: Dict[str, Dict[str, Any]]) -> List[Finding]:
    """"vanishing" / "exploding" per classified layer and "vanishing_flow" for the network;
    ``detail`` adds evidence per layer (history: fraction of steps, first step...)."""
    out = []
    for layer in weighted:
        s, norm = status[layer.name], norms[layer.name]
        extra = detail.get(layer.name, {})
        if s == "vanishing":
            over = (f" (the median over {extra['steps']} recorded steps; below at {extra['fraction_of_steps_below']:.0%} "
                    f"of them)" if "steps" in extra else "")
            out.append(Finding("vanishing", layer.name, step, "warning",
                               {"weight_grad_norm": norm, "threshold": th["vanishing"], **extra},
                               f"weight-gradient norm {_format(norm)} is below {_format(th['vanishing'])}{over}: "
                               f"this layer barely learns"))
        elif s == "exploding":
            if "steps" in extra:
                text = (f"weight-gradient norm above {_format(th['exploding'])} or non-finite at "
                        f"{extra['steps_above']} of {extra['steps']} recorded steps, first at step {extra['step']} "
                        f"(largest finite {_format(extra['max_weight_grad_norm'])}, {extra['nonfinite_steps']} "
                        f"non-finite)")
            elif math.isfinite(norm):
                text = f"weight-gradient norm {_format(norm)} exceeds {_format(th['exploding'])}"
            else:
                text = f"weight-gradient norm is {norm} (non-finite)"
            out.append(Finding("exploding", layer.name, extra.get("step", step), "error",
                               {"weight_grad_norm": norm, "threshold": th["exploding"], **extra}, text))
    if len(weighted) >= 2:
        first, last = weighted[0].name, weighted[-1].name
        ratio = _flow_ratio(norms[first], norms[last])
        if ratio < th["flow_ratio"]:
            out.append(Finding("vanishing_flow", "", step, "warning",
                               {"flow_ratio": ratio, "threshold": th["flow_ratio"], "first_layer": first,
                                "last_layer": last, "first_norm": norms[first], "last_norm": norms[last]},
                               f"the first layer '{first}' gets {_format(ratio)} times the gradient of the last "
                               f"layer '{last}' (below {_format(th['flow_ratio'])}): gradients fade on their way "
                               f"back to the input"))
    return out


def _unit_findings(layers: List[_Layer], values: Dict[str, Dict[str, float]], th, step) -> List[Finding]:
    """"dead_units" / "saturated_units" from per-layer fractions ({layer: {metric: v}})."""
    out = []
    for layer in layers:
        stats = values.get(layer.name, {})
        dead, sat = stats.get("dead_frac", math.nan), stats.get("saturated_frac", math.nan)
        if dead > th["dead"]:
            out.append(Finding("dead_units", layer.name, step, "warning", {"dead_frac": dead, "threshold": th["dead"]},
                               f"{dead:.0%} of the units are dead (never positive over the batch), above "
                               f"{th['dead']:.0%}"))
        if sat > th["saturated"]:
            out.append(Finding("saturated_units", layer.name, step, "warning",
                               {"saturated_frac": sat, "threshold": th["saturated"]},
                               f"{sat:.0%} of the pre-activations are in the flat tails of "
                               f"{layer.activation or 'the activation'} (above {th['saturated']:.0%})"))
    return out


def _bad_rows(a: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``a`` holding a NaN or Inf (none for integer data)."""
    if a.dtype.kind != "f":
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))


def _nonfinite_findings(events, layers: List[_Layer], *, bad_params: Sequence[str] = (),
                        bad_rows: Optional[Mapping[str, Tuple[np.ndarray, int]]] = None) -> List[Finding]:
    """The origin of the first NaN / Inf as findings, with ``evidence["source"]``:

    * "parameter": a parameter already held NaN / Inf (``bad_params``, names such as
      "0.weight", checked directly by ``diagnose``; or a "nonfinite" event of phase
      "parameter");
    * "data": the input X or the labels y hold NaN / Inf (``bad_rows`` {"X"/"y": (rows, N)},
      checked directly by ``diagnose``), or over a history the first NaN is the forward
      output of the first layer (whose parameters are finite, or the phase would be
      "parameter") or the loss itself while every layer's output was finite;
    * "overflow": the first NaN / Inf arose inside the network from finite data and weights.
    """
    out = []
    for name in bad_params:
        layer = name.rpartition(".")[0]
        out.append(Finding("nonfinite", layer, None, "error", {"source": "parameter", "parameter": name},
                           f"parameter '{name}' holds NaN / Inf: every gradient computed through it is NaN; "
                           f"reload a checkpoint or re-initialise it"))
    for what, (rows, n) in (bad_rows or {}).items():
        if len(rows):
            shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            out.append(Finding("nonfinite", "", None, "error",
                               {"source": "data", "data": what, "rows": rows.tolist(), "count": len(rows), "of": n},
                               f"the {'input X' if what == 'X' else 'target y'} holds NaN / Inf in {len(rows)} of {n} "
                               f"row(s) (rows {shown}): the loss and every gradient are NaN; drop or impute them "
                               f"(np.isfinite({what}).all(axis=1) selects the clean rows)"))
    if out:
        return out
    first = layers[0].name if layers else None
    for ev in events:
        if ev.kind != "nonfinite":
            continue
        evidence = {"tensor": ev.tensor, "value": ev.value, **dict(ev.evidence)}
        phase = evidence.get("phase")
        if phase == "parameter":
            name = f"{ev.layer}.{ev.tensor}"
            return [Finding("nonfinite", ev.layer, ev.step, "error", dict(evidence, source="parameter", parameter=name),
                            f"parameter '{name}' holds NaN / Inf (at step {ev.step}): every gradient computed through "
                            f"it is NaN; reload a checkpoint or re-initialise it")]
        if phase == "forward" and ev.tensor == "output" and ev.layer == first:
            return [Finding("nonfinite", ev.layer, ev.step, "error", dict(evidence, source="data", data="X"),
                            f"the output of the first layer '{first}' is NaN / Inf while its parameters are finite: "
                            f"the input X holds NaN / Inf in the batch of step {ev.step}; check "
                            f"np.isfinite(X).all(axis=1) and drop or impute those rows")]
        if ev.tensor == "loss" and not ev.layer:
            return [Finding("nonfinite", "", ev.step, "error", dict(evidence, source="data", data="y"),
                            f"the loss is NaN / Inf at step {ev.step} while every layer's output is finite: the "
                            f"target y holds NaN / Inf (or values outside the loss's range); check "
                            f"np.isfinite(y).all(axis=1)")]
        return [Finding("nonfinite", ev.layer, ev.step, "error", dict(evidence, source="overflow"),
                        f"the first NaN / Inf appeared here, in {ev.tensor} ({ev.message})")]
    return []


def _nonfinite_source(findings: Sequence[Finding]) -> Optional[str]:
    """"data" or "parameter" when the NaN / Inf came from outside the arithmetic (then a
    NaN norm is no explosion), else None."""
    for f in findings:
        if f.kind == "nonfinite" and f.evidence.get("source") in ("data", "parameter"):
            return f.evidence["source"]
    return None


# ---------------------------------------------------------------------- recommendations
@dataclass
class _Context:
    """What the recommendations are built from."""

    layers: List[_Layer]
    weighted: List[_Layer]
    norms: Dict[str, float]
    status: Dict[str, str]
    findings: List[Finding]
    th: Dict[str, Any]
    lr: float                 # the learning rate in use (nan: unknown)
    optimizer: str            # its class name, for the how-to
    clip_values: np.ndarray   # the observed norms a clipping threshold is taken from
    clip_scope: str           # "global" (global norms per step) or "tensor" (per-layer norms)
    recs: List[Recommendation] = field(default_factory=list)  # those made so far

    def kinds(self) -> set:
        return {f.kind for f in self.findings}

    def finding_layers(self, kind: str) -> List[str]:
        return [f.layer for f in self.findings if f.kind == kind and f.layer]

    def problem_kinds(self) -> set:
        """The kinds of the findings of severity warning or error, a NaN from the data or a
        parameter excepted (no learning-rate or clipping change cures that)."""
        outside = {"nonfinite", "skipped_steps"} if _nonfinite_source(self.findings) else set()
        return {f.kind for f in self.findings if f.severity != "info" and f.kind not in outside}

    def owner(self, name: str) -> Optional[_Layer]:
        """The weighted layer whose output the layer ``name`` acts on (itself when weighted):
        a separate activation layer's finding belongs to the Dense before it."""
        owner = None
        for layer in self.layers:
            if layer.weighted:
                owner = layer
            if layer.name == name:
                return owner if owner is not None and owner in self.weighted else None
        return None

    def owners(self, kind: str) -> List[_Layer]:
        """The weighted layers (forward order) a kind of finding concerns."""
        found = {id(self.owner(n)) for n in self.finding_layers(kind)}
        return [l for l in self.weighted if id(l) in found]

    def large(self) -> List[Tuple[_Layer, Dict[str, Any]]]:
        """(layer, init check) of the weighted layers with a "large_weights" finding whose own
        initializer is right (the weights grew, or were set by hand); a wrong initializer is
        the initializer recommendation's."""
        names = set(self.finding_layers("large_weights"))
        checks = [(l, _init_check(l)) for l in self.weighted if l.name in names]
        return [(l, c) for l, c in checks if c["cause"] != "initializer"]


def _weak_layers(ctx: _Context) -> List[_Layer]:
    """Hidden weighted layers (not the output layer) whose gradient vanishes: classified
    vanishing, or, when the flow ratio is too small, fading below flow_ratio x the last."""
    hidden = ctx.weighted[:-1]
    weak = [l for l in hidden if ctx.status[l.name] == "vanishing"]
    if "vanishing_flow" in ctx.kinds():
        last = ctx.norms[ctx.weighted[-1].name]
        weak += [l for l in hidden if l not in weak and _flow_ratio(ctx.norms[l.name], last) < ctx.th["flow_ratio"]]
    return [l for l in hidden if l in weak]  # forward order


def _dense_example(layer: _Layer, activation: str, init: str) -> str:
    out_f, in_f = layer.shape
    return f"nn.Dense({in_f}, {out_f}, activation='{activation}', kernel_initializer='{init}')"


def _saturating_activation(name: Optional[str]) -> bool:
    """True for an element-wise activation whose gradient vanishes at its bounds (sigmoid,
    tanh); the row-wise softmax family is an output activation and is left alone. The one
    test both the activation recommendation and ``repair``'s "activation" remedy use."""
    return (name is not None and name not in _act.ROWWISE_ACTIVATIONS
            and _act.family(name) == _act.SATURATING)


def _saturating(layer: _Layer) -> bool:
    return _saturating_activation(layer.activation)


def _activation_recs(ctx: _Context, weak: List[_Layer]) -> List[Recommendation]:
    """Saturating hidden activations whose gradient vanishes, or whose units saturate ->
    ReLU + He in *every* saturating hidden layer (what ``repair``'s "activation" remedy
    changes); dead units -> advice that depends on the layer's own activation."""
    recs = []
    swap = []
    for layer in weak:
        check = _init_check(layer)
        # sigmoid's derivative is at most 1/4: it shrinks the gradient at every layer whatever
        # the initialisation; tanh's is 1 at 0, so a tanh layer with a right-sized init keeps
        # tanh and only a wrong init is fixed (initializer recommendation)
        if layer.activation == "sigmoid" or (layer.activation == "tanh" and not check["off"]):
            swap.append(layer)
    # saturated hidden layers whose weights are right-sized (too large ones get the initializer advice)
    saturated = [l for l in ctx.owners("saturated_units")
                 if l in ctx.weighted[:-1] and _saturating(l) and not _init_check(l)["off"]]
    if swap or saturated:
        # the same set repair's "activation" remedy changes: every saturating hidden layer
        change = [l for l in ctx.weighted[:-1] if _saturating(l)]
        names = [l.name for l in change]
        acts = sorted({l.activation for l in change})
        bound = {"sigmoid": "sigmoid's at most 0.25", "tanh": "tanh's at most 1, and only at 0"}
        he = {l.name: _init.get("he_normal").std(l.shape) for l in change}
        why = []
        if swap:
            why.append(f"the gradient vanishes in {_names([l.name for l in swap])}")
        if saturated:
            why.append(f"the units of {_names([l.name for l in saturated])} saturate")
        recs.append(Recommendation(
            "activation", names,
            f"{' and '.join(why)}: replace {'/'.join(acts)} in every saturating hidden layer ({_names(names)}; "
            f"repair's 'activation' remedy changes exactly these) by ReLU (or LeakyReLU) with He initialisation: "
            f"the derivative ({'; '.join(bound.get(a, a + ' flat in its tails') for a in acts)}) shrinks the gradient "
            f"at every layer on its way back. gradcore: {_dense_example(change[0], 'relu', 'he_normal')}; "
            f"Keras: Dense(..., activation='relu', kernel_initializer='he_normal'); PyTorch: nn.Linear + nn.ReLU() "
            f"with {_TORCH_INIT['he_normal']}. He std per layer: "
            + ", ".join(f"'{n}' {_format(v)}" for n, v in he.items()),
            {"activation": "relu", "kernel_initializer": "he_normal", "from": {l.name: l.activation for l in change},
             "vanishing": [l.name for l in swap], "saturated": [l.name for l in saturated],
             "weight_std": {l.name: _weight_std(l) for l in change},
             "target_std": he}))
    dead_frac = {f.layer: f.evidence.get("dead_frac") for f in ctx.findings if f.kind == "dead_units"}
    dying = [l for l in ctx.layers if l.name in dead_frac]
    plain = [l for l in dying if l.activation in ("relu", "relu6")]
    leaky = [l for l in dying if l not in plain]
    if plain:
        names = [l.name for l in plain]
        recs.append(Recommendation(
            "activation", names,
            f"layers {_names(names)} have mostly dead ReLU units (pre-activation <= 0 for every sample, so no "
            f"gradient): use LeakyReLU (negative_slope 0.01) or ELU so negative inputs still pass a gradient "
            f"(gradcore: activation='leaky_relu' or nn.LeakyReLU(0.01); Keras: layers.LeakyReLU(negative_slope=0.01); "
            f"PyTorch: nn.LeakyReLU(0.01)), lower the learning rate, and start the biases at 0 or a small positive "
            f"value (bias_initializer)",
            {"activation": "leaky_relu", "negative_slope": _act.default_alpha("leaky_relu"),
             "dead_frac": {n: dead_frac[n] for n in names}}))
    if leaky:
        names = [l.name for l in leaky]
        acts = sorted({l.activation or "its activation" for l in leaky})
        biases = {}
        for l in leaky:
            owner = ctx.owner(l.name)
            bias = _bias_mean(owner.module if owner is not None else l.module)
            if bias is not None:
                biases[l.name] = bias
        shown = "; ".join(f"'{n}' mean bias {_format(b)}" for n, b in biases.items())
        recs.append(Recommendation(
            "initializer", names,
            f"layers {_names(names)} already use {'/'.join(acts)}, yet most units sit in the negative regime "
            f"(pre-activation <= 0 for every sample, where the slope is small){': ' + shown if shown else ''}. "
            f"Check the biases and the initialisation (biases at 0, He / LeCun init), lower the learning rate, or "
            f"add BatchNorm before the activation to re-centre the pre-activations",
            {"activation": {l.name: l.activation for l in leaky}, "bias_mean": biases,
             "dead_frac": {n: dead_frac[n] for n in names}}))
    return recs


def _initializer_recs(ctx: _Context, weak: List[_Layer]) -> List[Recommendation]:
    """Layers whose weights are far from the initializer matching their activation, where
    the initialisation (not the activation) is what to change."""
    exploding = [l for l in ctx.weighted if ctx.status[l.name] == "exploding"]
    saturated = ctx.owners("saturated_units")
    candidates = []
    for layer in weak + exploding + saturated:
        if any(layer is c for c, _ in candidates) or (layer.activation == "sigmoid" and layer in weak):
            continue  # a vanishing sigmoid layer is the activation recommendation's
        check = _init_check(layer)
        if check["cause"] == "initializer":  # weights that drifted from a right init need no other init
            candidates.append((layer, check))
    recs = []
    for target in sorted({c["matching"] for _, c in candidates}):
        group = [(l, c) for l, c in candidates if c["matching"] == target]
        names = [l.name for l, _ in group]
        detail = "; ".join(f"'{l.name}' ({l.activation or 'linear'}) weight std {_format(c['weight_std'])} vs "
                           f"{_format(c['matching_std'])}, {_format(c['ratio'])}x "
                           f"({'too large' if c['ratio'] > 1 else 'too small'}), initialised with {c['initializer']}"
                           for l, c in group)
        keep = sorted({l.activation for l, _ in group if l.activation})
        recs.append(Recommendation(
            "initializer", names,
            f"initialise layers {_names(names)} with {_INIT_WORDS[target]}"
            f"{' and keep ' + '/'.join(keep) if keep else ''}: {detail}. gradcore: kernel_initializer='{target}'; "
            f"Keras: kernel_initializer='{target}'; PyTorch: {_TORCH_INIT[target]}",
            {"kernel_initializer": target, "weight_std": {l.name: c["weight_std"] for l, c in group},
             "target_std": {l.name: c["matching_std"] for l, c in group},
             "ratio": {l.name: c["ratio"] for l, c in group}}))
    return recs


def _large_weight_recs(ctx: _Context, weak) -> List[Recommendation]:
    """Weights far above the matching initializer's scale: re-initialise them."""
    large = ctx.large()
    if not large:
        return []
    names = [l.name for l, _ in large]
    detail = "; ".join(f"'{l.name}' weight std {_format(c['weight_std'])} is {_format(c['ratio'])}x the "
                       f"{c['matching']} std {_format(c['matching_std'])}" for l, c in large)
    return [Recommendation(
        "initializer", names,
        f"the weights of {_names(names)} are far too large ({detail}): the pre-activations after them are huge, so "
        f"bounded activations saturate (gradient 0) and unbounded ones overflow. Re-initialise these layers "
        f"(gradcore kernel_initializer='{large[0][1]['matching']}'; PyTorch {_TORCH_INIT[large[0][1]['matching']]}) "
        f"or reload a checkpoint; if training grew them, lower the learning rate and clip the gradients",
        {"ratio": {l.name: c["ratio"] for l, c in large}, "weight_std": {l.name: c["weight_std"] for l, c in large},
         "target_std": {l.name: c["matching_std"] for l, c in large},
         "matching": {l.name: c["matching"] for l, c in large}})]


def _saturated_output(ctx: _Context) -> Optional[_Layer]:
    """The output layer when it is a saturated sigmoid / tanh one and no weights are far too
    large (those get the re-initialise advice instead), else None: the one test behind both
    the saturated-output advice and the learning rate's "saturated output" reason."""
    if not ctx.weighted or ctx.large():
        return None
    out = ctx.weighted[-1]
    return out if out in ctx.owners("saturated_units") and _saturating(out) else None


def _saturated_output_recs(ctx: _Context, weak) -> List[Recommendation]:
    """A saturated sigmoid / tanh output layer: its logits are huge."""
    out = _saturated_output(ctx)
    if out is None:
        return []
    check = _init_check(out)
    bias = _bias_mean(out.module)
    bias = math.nan if bias is None else bias
    frac = [f.evidence.get("saturated_frac") for f in ctx.findings if f.kind == "saturated_units"
            and ctx.owner(f.layer) is out][0]
    logits = (" and use a loss on the logits: gradcore nn.Dense(..., activation=None) with "
              "losses.BinaryCrossentropy(from_logits=True); Keras BinaryCrossentropy(from_logits=True); PyTorch "
              "nn.BCEWithLogitsLoss() / F.binary_cross_entropy_with_logits" if out.activation == "sigmoid" else "")
    return [Recommendation(
        "initializer", [out.name],
        f"the output layer '{out.name}' ({out.activation}) is saturated ({frac:.0%} of its pre-activations "
        f"in the flat tails): its logits are huge, so its gradient is ~0 and "
        f"the predictions are 0 / 1. Its weight std is {_format(check['weight_std'])}, {_format(check['ratio'])}x the "
        f"{check['matching']} std {_format(check['matching_std'])}"
        + (f": scale down the last layer's initialisation (kernel_initializer='{check['matching']}')" if check["off"]
           else f" (right-sized), so its bias (mean {_format(bias)}) or large inputs push the logits out: reset the "
                f"bias to 0 and check the scale of the previous layer's output")
        + f", or lower the learning rate{logits}",
        {"saturated_frac": frac, "weight_std": check["weight_std"], "target_std": check["matching_std"],
         "bias_mean": bias,
         "ratio": check["ratio"], "kernel_initializer": check["matching"], "from_logits": out.activation == "sigmoid"})]


def _batchnorm_rec(ctx: _Context, weak: List[_Layer]) -> List[Recommendation]:
    exploding = [l for l in ctx.weighted[:-1] if ctx.status[l.name] == "exploding"]
    saturated = [l for l in ctx.owners("saturated_units") if l is not ctx.weighted[-1]]
    after = [l for l in ctx.weighted[:-1] if (l in weak or l in exploding or l in saturated) and not l.normalized]
    if not after:
        return []
    names = [l.name for l in after]
    width = {l.name: l.shape[0] for l in after}
    example = after[0]
    return [Recommendation(
        "batchnorm", names,
        f"add BatchNorm after the Dense layers {_names(names)}, between the Dense and its activation, so each "
        f"layer's inputs keep unit scale: gradcore nn.Dense({example.shape[1]}, {example.shape[0]}), "
        f"nn.BatchNorm({example.shape[0]}), nn.Activation('{example.activation or 'relu'}'); "
        f"Keras layers.BatchNormalization(); PyTorch nn.BatchNorm1d({example.shape[0]})",
        {"after": names, "features": width})]


def _residual_rec(ctx: _Context, weak: List[_Layer]) -> List[Recommendation]:
    """Skip connections around hidden layers whose width allows an identity shortcut, when
    the network is deep enough (at least 4 weighted layers) and gradients fade."""
    if not weak or len(ctx.weighted) < 4:
        return []
    square = [l for l in ctx.weighted[:-1] if l.shape[0] == l.shape[1]]
    if not square:
        return []
    names = [l.name for l in square]
    w = square[0].shape[0]
    act = square[0].activation or "linear"
    swapped = any(r.kind == "activation" and square[0].name in r.layers and r.params.get("activation") == "relu"
                  for r in ctx.recs)
    note = " (ReLU, as the activation recommendation above says)" if swapped else " (the network's activation)"
    if swapped:
        act = "relu"
    return [Recommendation(
        "residual", names,
        f"wrap the equal-width layers {_names(names)} in residual blocks so the gradient has a direct path back: "
        f"gradcore nn.Residual([nn.Dense({w}, {w}, activation='{act}'), ...]){note} (y = block(x) + x); Keras: "
        f"layers.Add()([x, block(x)]); PyTorch: return x + self.block(x)",
        {"layers": names, "width": {l.name: l.shape[0] for l in square}, "activation": act})]


def clip_threshold(values, exploding: float, percentile: float) -> Tuple[float, Optional[float]]:
    """(threshold, the percentile of ``values`` it is) from observed gradient norms: the
    ``percentile``-th percentile of the finite positive ones (a zero norm is a step with no
    gradient, not a scale); when that lies above ``exploding`` (explosions dominate the
    observations), their median; when that does too, or nothing finite and positive was
    observed, ``exploding`` itself (percentile None)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size:
        for q in (percentile, 50.0):
            t = float(np.percentile(v, q))
            if t <= exploding:
                return t, q
    return float(exploding), None


def _clipping_rec(ctx: _Context, weak) -> List[Recommendation]:
    triggers = {"exploding", "exploding_growth", "nonfinite", "oscillating_loss", "diverging_loss"}
    if not ctx.problem_kinds() & triggers:
        return []
    observed = int(np.count_nonzero(np.isfinite(ctx.clip_values) & (ctx.clip_values > 0)))
    t, q = clip_threshold(ctx.clip_values, ctx.th["exploding"], ctx.th["clip_percentile"])
    v = _format(t)
    what = ("recorded pre-clip global gradient norms" if ctx.clip_scope == "global"
            else "per-layer weight-gradient norms of this pass")
    how = (f"the {q:g}th percentile of the {observed} {what}" if q is not None else
           f"the exploding threshold: the {what} are mostly above it" if observed else
           f"the exploding threshold: none of the {what} is finite and positive")
    if ctx.clip_scope == "global":
        text = (f"clip the global gradient norm at {v} ({how}): gradcore optim.{ctx.optimizer}(net.parameters(), "
                f"..., global_clip_norm={v}) (the Keras spelling global_clipnorm={v} is accepted); Keras: "
                f"keras.optimizers.{ctx.optimizer}(..., global_clipnorm={v}); PyTorch: "
                f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={v}) before optimizer.step()")
        params = {"global_clip_norm": t}
    else:
        text = (f"clip each gradient tensor's norm at {v} ({how}): gradcore optim.{ctx.optimizer}(net.parameters(), "
                f"..., clip_norm={v}) (the Keras spelling clipnorm={v} is accepted); Keras: "
                f"keras.optimizers.{ctx.optimizer}(..., clipnorm={v}); PyTorch: "
                f"torch.nn.utils.clip_grad_norm_(p, max_norm={v}) for each parameter p before optimizer.step()")
        params = {"clip_norm": t}
    params.update(percentile=q, observed=observed, scope=ctx.clip_scope)
    exploding = [l.name for l in ctx.weighted if ctx.status[l.name] == "exploding"]
    return [Recommendation("clipping", exploding, text, params)]


def _learning_rate_rec(ctx: _Context, weak) -> List[Recommendation]:
    """Lower the rate 10x after explosions, NaN, a diverging / oscillating loss, dying units
    or large updates; raise it 10x (or make it positive) when the loss is flat without
    having fallen (not converged) while the gradients themselves do not vanish."""
    lower = {"exploding", "exploding_growth", "nonfinite", "oscillating_loss", "diverging_loss", "dead_units",
             "update_ratio_high", "skipped_steps"} & ctx.problem_kinds()
    if _saturated_output(ctx) is not None:
        lower.add("saturated_output")
    stalled = any(f.kind == "flat_loss" and f.severity != "info" for f in ctx.findings)
    lr = ctx.lr
    if lower:
        why = ", ".join(sorted(lower)).replace("_", " ")
        if lr > 0:
            new = lr / LR_FACTOR
            return [Recommendation("learning_rate", [], f"lower the learning rate {LR_FACTOR:g}x, from {_format(lr)} "
                                   f"to {_format(new)} ({why})", {"lr": lr, "suggested_lr": new, "factor": 1 / LR_FACTOR})]
        return [Recommendation("learning_rate", [], f"lower the learning rate {LR_FACTOR:g}x ({why})",
                               {"lr": lr, "suggested_lr": None, "factor": 1 / LR_FACTOR})]
    if stalled and lr == 0:
        return [Recommendation("learning_rate", [], "the learning rate is 0, so nothing is learned: set a positive "
                               "one (1e-3 for Adam and 1e-2 for SGD are common starts)",
                               {"lr": 0.0, "suggested_lr": 1e-3, "factor": None})]
    if stalled and lr > 0 and not weak:
        new = lr * LR_FACTOR
        return [Recommendation("learning_rate", [], f"the loss is flat and has not fallen: raise the learning "
                               f"rate {LR_FACTOR:g}x, from {_format(lr)} to {_format(new)}",
                               {"lr": lr, "suggested_lr": new, "factor": LR_FACTOR})]
    return []


def _recommend(ctx: _Context) -> List[Recommendation]:
    """Every recommendation for the network, in the order to try them; "none" when the
    gradients look healthy."""
    # weights far too large explain every vanishing layer after them: re-initialise, no new architecture
    # (NaN / Inf from the data or a parameter makes the other norms meaningless: fix that first)
    weak = _weak_layers(ctx) if ctx.weighted and not ctx.large() and not _nonfinite_source(ctx.findings) else []
    recs = ctx.recs = [r for f in ctx.findings if f.kind == "nonfinite" and f.evidence.get("source") in
                       ("data", "parameter") for r in [Recommendation(f.evidence["source"], [f.layer] if f.layer else [],
                                                                      f.message, json_safe(f.evidence))]]
    for build in (_activation_recs, _large_weight_recs, _initializer_recs, _saturated_output_recs, _batchnorm_rec,
                  _residual_rec, _clipping_rec, _learning_rate_rec):
        recs += build(ctx, weak)
    problems = sorted(k for k in {f.kind for f in ctx.findings if f.severity != "info"})
    if not recs and problems:
        recs.append(Recommendation("none", [], "no automatic change fits the findings above ("
                                   + ", ".join(problems).replace("_", " ") + "); inspect them by hand", {}))
    elif not recs:
        recs.append(Recommendation("none", [], "gradient flow looks healthy: keep the current configuration", {}))
    return recs


# ---------------------------------------------------------------------- assembling
def _assemble(layers: List[_Layer], norms: Dict[str, float], stats: Dict[str, Dict[str, float]],
              findings: List[Finding], th, *, status: Dict[str, str], lr: float, optimizer: str,
              clip_values, clip_scope: str, source: str, steps: int, samples: Optional[int]) -> Diagnosis:
    weighted = [l for l in layers if l.weighted and l.name in norms]
    status = dict(status)
    if _nonfinite_source(findings):
        # a NaN from the data or a parameter is no explosion: such layers are "nonfinite"
        def overflowed(f: Finding) -> bool:
            big = f.evidence.get("max_weight_grad_norm", f.evidence.get("weight_grad_norm"))
            return big is not None and math.isfinite(big) and big > th["exploding"]
        for f in findings:
            if f.kind == "exploding" and not overflowed(f):
                status[f.layer] = "nonfinite"
        findings = [f for f in findings if not (f.kind == "exploding" and status.get(f.layer) == "nonfinite")]
    findings = findings + _large_weight_findings(weighted)
    findings = _demote_output_update_ratio(findings, weighted, status)
    ctx = _Context(layers, weighted, norms, status, findings, th, lr, optimizer, np.asarray(clip_values, dtype=float),
                   clip_scope)
    ratio = _flow_ratio(norms[weighted[0].name], norms[weighted[-1].name]) if weighted else math.nan
    return Diagnosis(
        healthy_layers=[l.name for l in weighted if status[l.name] == "healthy"],
        vanishing_layers=[l.name for l in weighted if status[l.name] == "vanishing"],
        exploding_layers=[l.name for l in weighted if status[l.name] == "exploding"],
        nonfinite_layers=[l.name for l in weighted if status[l.name] == "nonfinite"],
        flow_ratio=ratio,
        gradient_norms={l.name: norms[l.name] for l in weighted},
        layer_stats=stats,
        findings=findings,
        recommendations=_recommend(ctx),
        layer_info={l.name: {"kind": l.kind, "activation": l.activation} for l in layers},
        thresholds=dict(th),
        source=source,
        steps=steps,
        samples=samples,
    )


def _large_weight_findings(weighted: List[_Layer]) -> List[Finding]:
    """"large_weights": a weight standard deviation over ``LARGE_WEIGHT_FACTOR`` times the
    one the initializer matching the layer's activation draws (non-finite weights are the
    "nonfinite" finding's)."""
    out = []
    for layer in weighted:
        check = _init_check(layer)
        if math.isfinite(check["ratio"]) and check["ratio"] > LARGE_WEIGHT_FACTOR:
            out.append(Finding("large_weights", layer.name, None, "warning",
                               {k: check[k] for k in ("weight_std", "matching", "matching_std", "ratio")},
                               f"weight std {_format(check['weight_std'])} is {_format(check['ratio'])}x the "
                               f"{check['matching']} std {_format(check['matching_std'])} (over "
                               f"{LARGE_WEIGHT_FACTOR:g}x): the pre-activations after it saturate or overflow"))
    return out


def _demote_output_update_ratio(findings: List[Finding], weighted: List[_Layer],
                                status: Mapping[str, str]) -> List[Finding]:
    """When most weighted layers vanish, a high update ratio of the output layer alone is
    the only layer that still learns, not a learning rate too high: made "info"."""
    high = [f for f in findings if f.kind == "update_ratio_high"]
    vanishing = sum(status.get(l.name) == "vanishing" for l in weighted)
    if not weighted or not high or any(f.layer != weighted[-1].name for f in high) or 2 * vanishing <= len(weighted):
        return findings
    out = []
    for f in findings:
        if f.kind == "update_ratio_high":
            f = Finding(f.kind, f.layer, f.step, "info", dict(f.evidence, vanishing_layers=vanishing),
                        f.message.replace(": the learning rate is too high for this layer", "")
                        + f"; only the output layer moves while {vanishing} of {len(weighted)} weighted layers "
                        f"vanish, so the learning rate is not what to lower")
        out.append(f)
    return out


def _optimizer_facts(opt) -> Tuple[float, str]:
    """(learning rate, class name) of an optimizer; (nan, "Adam") without one."""
    if opt is None:
        return math.nan, "Adam"
    from ..training import _current_lr

    return _current_lr(opt), type(opt).__name__


# ---------------------------------------------------------------------- diagnose(net, X, y)
def _rows(op: str, name: str, a) -> np.ndarray:
    arr = np.asarray(a.data if isinstance(a, Tensor) else a)
    if arr.ndim == 0 or len(arr) == 0:
        raise ValueError(f"{op}: {name} must have a batch axis with at least one row, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{op}: {name} must be numeric, got dtype {arr.dtype}")
    return arr


def _resolve_loss(op: str, net, loss):
    if loss is not None:
        return _losses.get(loss)
    compiled = getattr(net, "loss", None)
    if compiled is None:
        raise ValueError(f"{op}: pass loss= (a name such as 'binary_crossentropy', a Loss or a callable "
                         f"(prediction, target) -> Tensor): the network was not compiled with one")
    return compiled


class _Snapshot:
    """Everything a forward + backward in training mode may change, to be put back exactly:
    the flat gradient buffers, each parameter's ``.grad`` (the array object and its values),
    every buffer (BatchNorm statistics, num_batches_tracked), each module's training flag,
    gradcore's random stream, and the absence of a hook holder on modules that had none (a
    module keeps an emptied holder after its hooks are removed, which sends every later call
    through the hook path)."""

    def __init__(self, net):
        params = [p for _, p in net.named_parameters()]
        self.flat = [(flat, flat.grad.copy()) for flat in net.flat_buffers()]
        self.grads = [(p, p.grad, None if p.grad is None else np.array(p.grad, copy=True)) for p in params]
        self.buffers = [(b, b.copy()) for m in net.modules() for b in m._buffers.values() if b is not None]
        self.modes = [(m, m.training) for m in net.modules()]
        self.hookless = [m for m in net.modules() if "_module_hooks" not in m.__dict__]
        self.rng = _random.generator().bit_generator.state

    def restore(self) -> None:
        for flat, grad in self.flat:
            flat.grad[...] = grad
        for p, grad, values in self.grads:
            p.grad = grad
            if grad is not None:
                grad[...] = values
        for b, saved in self.buffers:
            b[...] = saved
        for m, mode in self.modes:
            object.__setattr__(m, "training", mode)
        for m in self.hookless:
            hooks = m.__dict__.get("_module_hooks")
            if hooks is not None and not (hooks.pre or hooks.forward or hooks.backward or hooks.backward_pre):
                del m.__dict__["_module_hooks"]
        _random.generator().bit_generator.state = self.rng


def diagnose(net, X, y, loss=None, *, vanishing: float = 0.01, exploding: float = 100.0, flow_ratio: float = 1e-3,
             sample: Optional[int] = None, seed: int = 0, **thresholds) -> Diagnosis:
    """Diagnose ``net``'s gradient health from one forward and backward pass, as the
    documents' ``diagnose_gradient_health`` does.

    ``X`` (N, features) and ``y`` (N, ...): arrays or Tensors. ``loss``: a name, a Loss or a
    callable ``(prediction, target) -> Tensor``; by default the loss the network was
    compiled with (a ValueError when there is none). The layers' regularisation terms are
    added, as in ``fit``. ``sample``: use that many rows, ``np.sort(np.random.default_rng(
    seed).choice(N, sample, replace=False))`` (all rows when None or >= N; the documents use
    100). ``vanishing`` / ``exploding`` / ``flow_ratio``:
    the documents' thresholds; further thresholds (``dead``, ``saturated``,
    ``clip_percentile``) by keyword.

    The pass runs in training mode with grad enabled, through a ``GradientMonitor`` that is
    closed afterwards; the network is then put back exactly as it was (see the module
    docstring). A clipping recommendation here is per tensor (``clip_norm``) at a
    percentile of the per-layer weight-gradient norms of this one pass.
    """
    from ._monitor import GradientMonitor

    op = "diagnose"
    th = _check_thresholds(op, dict(thresholds, vanishing=vanishing, exploding=exploding, flow_ratio=flow_ratio),
                           DEFAULT_THRESHOLDS)
    if not isinstance(net, Module):
        raise TypeError(f"{op}: net must be a gradcore.nn.Module, got {type(net).__name__}")
    X, y = _rows(op, "X", X), _rows(op, "y", y)
    if len(X) != len(y):
        raise ValueError(f"{op}: X has {len(X)} rows but y has {len(y)}")
    loss_fn = _resolve_loss(op, net, loss)
    if sample is not None:
        sample = _validate.positive_int(op, "sample", sample)
        if sample < len(X):
            rows = np.sort(np.random.default_rng(_validate.seed(op, "seed", seed)).choice(len(X), sample,
                                                                                           replace=False))
            X, y = X[rows], y[rows]

    bad_params = [n for n, p in net.named_parameters() if not np.isfinite(p.data).all()]
    bad_rows = {"X": (_bad_rows(X), len(X)), "y": (_bad_rows(y), len(y))}
    snapshot = _Snapshot(net)
    mon = None
    try:
        for _, p in net.named_parameters():
            p.grad = None  # a fresh gradient (backward would add to the old one); restored below
        net.train()
        mon = GradientMonitor(net, activations=True, updates=False, vanishing=th["vanishing"],
                              exploding=th["exploding"], flow_ratio=th["flow_ratio"], dead=th["dead"],
                              saturated=th["saturated"])
        with enable_grad():
            out = net(X)
            value = loss_fn(out, y)
            reg = net.regularization_loss()
            if reg is not None:
                value = value + reg
            value.backward()
        mon.record(value)
        stats = _nested(mon.history.at(-1))
        layers = _describe_layers(_ordered(net, mon.layers))
        events = list(mon.events)
        step = int(mon.history.steps()[-1])
    finally:
        try:
            if mon is not None:
                mon.close()
        finally:
            snapshot.restore()

    # layers with a trainable weight matrix the loss reached (a frozen or unused one has no gradient)
    norms = {l.name: stats[l.name]["weight.grad_norm"] for l in layers
             if l.weighted and l.module.weight.requires_grad and "weight.grad_norm" in stats.get(l.name, {})}
    weighted = [l for l in layers if l.name in norms]
    status = {l.name: classify(norms[l.name], th["vanishing"], th["exploding"]) for l in weighted}
    findings = _nonfinite_findings(events, layers, bad_params=bad_params, bad_rows=bad_rows)
    findings += _layer_findings(weighted, norms, status, th, step, {})
    findings += _unit_findings(layers, stats, th, step)
    lr, opt_name = _optimizer_facts(getattr(net, "optimizer", None))
    return _assemble(layers, norms, stats, findings, th, status=status, lr=lr, optimizer=opt_name,
                     clip_values=list(norms.values()), clip_scope="tensor", source="diagnose", steps=1,
                     samples=len(X))


def _nested(flat: Mapping[Tuple[str, str], float]) -> Dict[str, Dict[str, float]]:
    """{(layer, metric): v} -> {layer: {metric: v}}."""
    out: Dict[str, Dict[str, float]] = {}
    for (layer, metric), v in flat.items():
        out.setdefault(layer, {})[metric] = float(v)
    return out


def _ordered(net, infos) -> List[Tuple[str, Any]]:
    """(name, module) of the monitor's layers (``LayerInfo``s, in forward order)."""
    modules = dict(net.named_modules())
    return [(info.name, modules[info.name]) for info in infos]


# ---------------------------------------------------------------------- diagnose_history(mon)
def _finite(v: np.ndarray) -> np.ndarray:
    return v[np.isfinite(v)]


def _series(h, layer: str, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a metric, empty arrays when it was never recorded."""
    if layer not in h.layers() or metric not in h.metrics(layer):
        return np.empty(0, dtype=np.int64), np.empty(0)
    return h.series(layer, metric)


def _loss_findings(h, th, updates_stopped: bool) -> List[Finding]:
    """Diverging, flat and oscillating loss from the recorded losses (layer "", "loss"):
    diverging when the mean of the last third of the steps is over twice the first loss;
    else flat when the relative range of the last half is below ``flat``, no parameter
    moved, or the last third's mean is not 1% below the first third's while the median
    step-to-step change is under ``oscillation`` of the loss (mini-batch noise around a
    level) -- a warning, or only "info" when the loss had fallen to under half its first
    value (converged); else oscillating when consecutive changes reverse direction at half
    the steps or more and the last third's mean is not 1% below the first third's."""
    steps, loss = _series(h, "", "loss")
    ok = np.isfinite(loss)
    steps, loss = steps[ok], loss[ok]
    n = len(loss)
    if n < MIN_LOSS_STEPS:
        return []
    tail = loss[n // 2:]
    scale = max(float(np.abs(tail).mean()), np.finfo(np.float64).tiny)
    rel_range = float(tail.max() - tail.min()) / scale
    third = max(n // 3, 1)
    early, late = float(loss[:third].mean()), float(loss[-third:].mean())
    diffs = np.diff(loss)
    amplitude = float(np.median(np.abs(diffs))) / scale
    diffs = diffs[diffs != 0]
    changes = int(np.count_nonzero(np.sign(diffs[1:]) != np.sign(diffs[:-1]))) if len(diffs) > 1 else 0
    change_frac = changes / max(len(diffs) - 1, 1)
    no_progress = late >= 0.99 * early
    # Mini-batch losses change direction all the time; swings smaller than `oscillation`
    # of the loss around a level that does not fall are a stalled loss, not an oscillating one.
    flat = rel_range < th["flat"] or updates_stopped or (no_progress and amplitude < th["oscillation"])
    evidence = {"first": float(loss[0]), "early_mean": early, "late_mean": late, "sign_changes": changes,
                "sign_change_frac": change_frac, "relative_range": rel_range, "relative_amplitude": amplitude,
                "steps": n, "parameters_moved": not updates_stopped}
    if late > 2.0 * loss[0]:
        stuck = (" and stayed there: the parameters were thrown where the gradient is zero (dead or saturated "
                 "units)" if flat else "")
        return [Finding("diverging_loss", "", int(steps[-third]), "error", evidence,
                        f"the loss grew from {_format(loss[0])} (first step) to {_format(late)} (mean of the last "
                        f"third of the steps){stuck}")]
    if flat:
        moved = "; the parameters did not move" if updates_stopped else ""
        settled = float(tail.mean()) < 0.5 * float(loss[0])   # after falling by half or more: converged
        text = (f"the loss stayed at {_format(tail[-1])} over the last {len(tail)} recorded steps (relative range "
                f"{_format(rel_range)}, mean {_format(early)} in the first third and {_format(late)} in the last"
                f"{moved})")
        if settled:
            text += f", after falling from {_format(loss[0])}: it has converged (or stalled there)"
        return [Finding("flat_loss", "", int(steps[n // 2]), "info" if settled else "warning",
                        dict(evidence, threshold=th["flat"], settled=settled), text)]
    if change_frac >= 0.5 and no_progress:
        return [Finding("oscillating_loss", "", int(steps[-1]), "warning", evidence,
                        f"the loss changed direction at {change_frac:.0%} of the steps and did not decrease "
                        f"({_format(early)} -> {_format(late)}, means of the first and last thirds)")]
    return []


def diagnose_history(mon, **thresholds) -> Diagnosis:
    """Diagnose from everything a ``GradientMonitor`` recorded (also ``mon.diagnose()``).

    Per layer with a weight matrix the weight-gradient norm is the median over the recorded
    steps (vanishing = below ``vanishing`` at most steps); a layer is exploding when its
    norm exceeded ``exploding`` or was non-finite at any recorded step. Findings: vanishing,
    exploding (with the first step), growth explosions and the first NaN / Inf origin (from
    ``mon.events``), vanishing flow, dead units (last fraction above ``dead``, or rising by
    0.2 or more), saturated units (median above ``saturated``), update / weight ratios
    outside ``update_ratio`` (median), diverging loss (last third's mean over twice the
    first loss), flat loss (relative range of the last half below ``flat``, or no parameter
    moved; only "info" once the loss has halved), oscillating loss (direction changes at
    half the steps or more, no progress), skipped steps. Thresholds (``vanishing``,
    ``exploding``, ``flow_ratio``, ``dead``, ``saturated``, ``update_ratio``) default to the
    monitor's own, ``flat`` and ``clip_percentile`` to ``DEFAULT_THRESHOLDS``; keywords
    override them. A clipping recommendation is global, at the ``clip_percentile`` of the
    recorded pre-clip global norms (``clip_threshold`` says how it falls back).
    ``layer_stats`` are the last recorded step's. A ValueError when nothing was recorded.
    """
    op = "diagnose_history"
    base = dict(DEFAULT_THRESHOLDS)
    for key in base:
        if key in ("flat", "oscillation", "clip_percentile"):
            continue
        value = getattr(mon, key, None)
        if value is not None and not callable(value):
            base[key] = value
    th = _check_thresholds(op, thresholds, base)
    h = mon.history
    recorded = h.steps()
    if not len(recorded):
        raise ValueError(f"{op}: the monitor has recorded no step yet; train with it first "
                         "(net.fit(..., callbacks=[mon]) or loss.backward(); mon.record(loss))")
    net = mon.net
    layers = _describe_layers(_ordered(net, mon.layers))
    last = _nested(h.at(-1))

    norms, status, detail = {}, {}, {}
    weighted = []
    for layer in layers:
        if not layer.weighted:
            continue
        steps, values = _series(h, layer.name, "weight.grad_norm")
        if not len(values):
            continue  # frozen, or never recorded
        weighted.append(layer)
        norms[layer.name], status[layer.name], detail[layer.name] = _history_status(steps, values, th)
    findings = _nonfinite_findings(mon.events, layers)
    findings += _layer_findings(weighted, norms, status, th, None, detail)
    findings += _growth_findings(mon.events)
    findings += _history_unit_findings(h, layers, th)
    findings += _update_findings(h, weighted, th)
    stopped = _updates_stopped(h, weighted)
    findings += _loss_findings(h, th, stopped)
    findings += _skipped_findings(h)

    _, lrs = _series(h, "", "lr")
    lrs = _finite(lrs)
    opt = getattr(mon, "optimizer", None) or getattr(net, "optimizer", None)
    lr, opt_name = _optimizer_facts(opt)
    if lrs.size:
        lr = float(lrs[-1])
    _, global_norms = _series(h, "", "grad_norm")
    if global_norms.size:
        clip_values, scope = global_norms, "global"
    else:
        clip_values, scope = list(norms.values()), "tensor"
    return _assemble(layers, norms, last, findings, th, status=status, lr=lr, optimizer=opt_name,
                     clip_values=clip_values, clip_scope=scope, source="history", steps=len(recorded), samples=None)


def _history_status(steps: np.ndarray, values: np.ndarray, th) -> Tuple[float, str, Dict[str, Any]]:
    """(median of the finite norms, status, evidence) of one layer's weight-gradient norms
    over the recorded steps: exploding when above ``exploding`` or non-finite at any step,
    else the documents' rule applied to the median."""
    finite = _finite(values)
    median = float(np.median(finite)) if finite.size else math.nan
    bad = ~np.isfinite(values) | (values > th["exploding"])
    evidence: Dict[str, Any] = {"steps": len(values), "median_weight_grad_norm": median}
    if bad.any():
        above = values[bad & np.isfinite(values)]
        evidence.update(step=int(steps[np.argmax(bad)]), steps_above=int(bad.sum()),
                        nonfinite_steps=int((~np.isfinite(values)).sum()),
                        max_weight_grad_norm=float(above.max()) if above.size else math.nan)
        return median, "exploding", evidence
    evidence.update(fraction_of_steps_below=float(np.mean(values < th["vanishing"])), last=float(values[-1]))
    return median, classify(median, th["vanishing"], th["exploding"]), evidence


def _growth_findings(events) -> List[Finding]:
    """The first "exploding_growth" event of each layer."""
    out, seen = [], set()
    for ev in events:
        if ev.kind == "exploding_growth" and ev.layer not in seen:
            seen.add(ev.layer)
            out.append(Finding("exploding_growth", ev.layer, ev.step, "warning",
                               {"value": ev.value, "threshold": ev.threshold, **dict(ev.evidence)}, ev.message))
    return out


def _history_unit_findings(h, layers: List[_Layer], th) -> List[Finding]:
    out = []
    for layer in layers:
        steps, dead = _series(h, layer.name, "dead_frac")
        dead_ok = _finite(dead)
        if dead_ok.size:
            rising = dead_ok[-1] - dead_ok[0]
            if dead_ok[-1] > th["dead"] or (rising >= 0.2 and dead_ok.size > 1):
                out.append(Finding("dead_units", layer.name, int(steps[-1]), "warning",
                                   {"dead_frac": float(dead_ok[-1]), "first": float(dead_ok[0]),
                                    "max": float(dead_ok.max()), "threshold": th["dead"]},
                                   f"{dead_ok[-1]:.0%} of the units are dead at the last recorded step "
                                   f"(from {dead_ok[0]:.0%} at the first)"))
        steps, sat = _series(h, layer.name, "saturated_frac")
        sat_ok = _finite(sat)
        if sat_ok.size and float(np.median(sat_ok)) > th["saturated"]:
            med = float(np.median(sat_ok))
            out.append(Finding("saturated_units", layer.name, None, "warning",
                               {"saturated_frac": med, "last": float(sat_ok[-1]), "threshold": th["saturated"]},
                               f"a median {med:.0%} of the pre-activations are in the flat tails of "
                               f"{layer.activation or 'the activation'} (above {th['saturated']:.0%})"))
    return out


def _update_findings(h, weighted: List[_Layer], th) -> List[Finding]:
    lo, hi = th["update_ratio"]
    out = []
    for layer in weighted:
        _, ratio = _series(h, layer.name, "weight.update_ratio")
        ratio = _finite(ratio)
        if not ratio.size:
            continue
        med = float(np.median(ratio))
        if med > hi:
            out.append(Finding("update_ratio_high", layer.name, None, "warning", {"median": med, "threshold": hi},
                               f"each step changes the weights by a median {_format(med)} of their norm (above "
                               f"{_format(hi)}): the learning rate is too high for this layer"))
        elif med < lo:
            out.append(Finding("update_ratio_low", layer.name, None, "info", {"median": med, "threshold": lo},
                               f"each step changes the weights by a median {_format(med)} of their norm (below "
                               f"{_format(lo)}): this layer hardly moves"))
    return out


def _updates_stopped(h, weighted: List[_Layer]) -> bool:
    """True when update sizes were recorded and no weight moved over the last half of them."""
    moved = None
    for layer in weighted:
        _, upd = _series(h, layer.name, "weight.update_norm")
        upd = upd[len(upd) // 2:]
        if upd.size:
            moved = bool(moved) or bool(np.any(upd != 0))
    return moved is False


def _skipped_findings(h) -> List[Finding]:
    steps, skipped = _series(h, "", "skipped")
    hit = np.flatnonzero(np.nan_to_num(skipped) > 0)
    if not hit.size:
        return []
    return [Finding("skipped_steps", "", int(steps[hit[0]]), "warning", {"count": int(hit.size), "first": int(steps[hit[0]])},
                    f"the optimizer skipped {hit.size} step(s) for a non-finite gradient, the first at step "
                    f"{int(steps[hit[0]])}")]


__all__ = ["Diagnosis", "Finding", "Recommendation", "diagnose", "diagnose_history", "classify", "clip_threshold",
           "initializer_std", "RECOMMENDATION_KINDS", "FINDING_KINDS", "SEVERITIES", "DEFAULT_THRESHOLDS"]
