"""The compiled training step (DESIGN.md decision 5): ``gradcore.compile_step(net)``.

``step = compile_step(net, loss=None, optimizer=None)`` lowers the network once into a C++
plan (``gradcore._C.Plan``): a list of the same kernel calls the eager path makes, over
buffers the plan allocates once per batch size. ``step(x, y)`` then runs forward, loss,
backward, the per-tensor gradient norms, clipping and the optimizer update in one call
into C++ and returns the loss (a float), with the same numbers as the eager step::

    opt.zero_grad(); loss = net.compute_loss(x, y, net(x)); loss.backward(); opt.step()

(the plan calls the eager path's kernels in its order: the tests find parameters,
optimizer state and BatchNorm statistics bit for bit equal over 50 steps, and hold them
to 1e-12 in float64, 1e-5 in float32), dropout masks included (each Dropout layer with
0 < p < 1 draws its seed from ``gradcore.random.next_seed()`` in the order the eager
forward does).

What lowers: Sequential and Residual (with or without a projection), nested; Dense with
any activation (softmax / log_softmax become a row-wise node after it) and ``l2``; the
activation layers (ReLU ... Softplus, Softmax / LogSoftmax over the last axis,
``Activation(name)``); PReLU; BatchNorm; LayerNorm over the last axis; Dropout; Flatten of
2-d input; Identity. The parameters must be the whole of one flat buffer (the network's
own) and all trainable. Losses: MSE, binary cross-entropy (logits, or probabilities after
a sigmoid output), cross-entropy (logits, or probabilities after a softmax output) against
labels or probabilities, each with its default options (mean reduction, no class weights,
no label smoothing). Anything else raises :class:`UnsupportedError` naming the layer or
the option and why; ``fit(compiled="auto")`` then trains eagerly. So does a network with
module hooks, or one a ``GradientMonitor`` taps that the step was not given: with
``compile_step(net, monitor=mon)`` (and in ``fit`` with the monitor as a callback) the
plan computes the monitor's statistics on the steps it records (see ``compile_step``).

Two modes (``step.mode``):
  * "fused": the optimizer's kernel runs inside the plan. Needs one of SGD / Adam / AdamW
    / RMSprop / Adagrad over the network's whole buffer, one parameter group, equal update
    counts, no ``grad_noise``, no ``record_stats``. Python's share of a step is the
    learning rate, the hyper-parameter tuple (the optimizer's own ``_hyper``, the one its
    eager step uses), the dropout seeds and afterwards the optimizer's bookkeeping exactly
    as ``Optimizer.step()`` does it (update counts, tensor versions, ``last_grad_norm``,
    ``last_clip_coef``, ``last_skipped``, ``skipped_steps``, the ``nonfinite`` policy).
  * "split": the plan runs forward and backward into the flat gradient buffer, each
    parameter's ``.grad`` is pointed at its slice, and ``optimizer.step()`` runs as in
    eager code (so every optimizer feature works).
The mode is re-decided whenever the optimizer changes (a group added, statistics turned
on, ``load_state_dict``...): before each step a few identity tests check that the arrays
the plan was bound to are still the network's and the optimizer's, and the plan is bound
again otherwise.

Differences from the eager step, by design: the step always runs the layers in training
mode (BatchNorm batch statistics, dropout), like ``fit``; a step skipped for a
non-finite gradient also rolls BatchNorm's running statistics back (as ``fit`` does);
in "fused" mode the parameters' ``.grad`` attributes are not touched (the gradient of
the last step is in the network's flat gradient buffer).

A layer's settings changed after compiling (an activation's slope, Dropout's ``p``,
BatchNorm's ``momentum`` or ``eps``, a Dense layer's ``l2`` or activation...) take effect
at the next step, as in the eager forward: any module attribute set, layer added, removed
or replaced, or hook added moves the structure clock (tensor.py), and the next step lowers
the network again and rebuilds its plans when the lowering differs. A change the plan
cannot follow (other parameters, other input or output widths, a hook, a monitor's tap)
raises UnsupportedError before anything runs (``fit(compiled="auto")`` then goes on
eagerly).

``gradcore.memory_stats()`` reports the bytes the plans hold and their heap allocations
since ``gradcore.reset_memory_stats()``: after a batch size's first step, none.
"""
from __future__ import annotations

import math
import operator
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import _C
from . import activations as _act
from . import functional as F
from . import losses as _losses
from . import random as _random
from .tensor import Tensor, _structure_clock, bump_version
from .optim.optimizer import _param_list_edits as _param_edits
from .training import TrainingMixin, _current_lr, _step_report

__all__ = ["CompiledStep", "UnsupportedError", "compile_step", "memory_stats", "reset_memory_stats"]


class UnsupportedError(NotImplementedError):
    """The network, loss or optimizer has something the compiled step cannot run (the
    message names it and why); the eager path runs it."""


def _plan_class():
    plan = getattr(_C, "Plan", None)
    if plan is None:
        raise UnsupportedError("this build of gradcore's extension has no compiled plans (gradcore._C.Plan); "
                               "rebuild it (tools/build_inplace.sh or pip install .)")
    return plan


def memory_stats() -> Dict[str, int]:
    """``{"plan_bytes": bytes the live plans hold, "plan_allocations": heap allocations
    the plans made since reset_memory_stats()}``."""
    stats = getattr(_C, "plan_memory_stats", None)
    if stats is None:
        return {"plan_bytes": 0, "plan_allocations": 0}
    live, allocations = stats()
    return {"plan_bytes": int(live), "plan_allocations": int(allocations)}


def reset_memory_stats() -> None:
    """Start counting the plans' allocations from zero (``memory_stats``)."""
    reset = getattr(_C, "reset_plan_memory_stats", None)
    if reset is not None:
        reset()


# ---------------------------------------------------------------------- lowering
def _is_layer(module, cls) -> bool:
    """``module`` is a ``cls`` whose forward (and call, input check, regularisation) are
    ``cls``'s own: a subclass, or an instance given its own ``forward``, that changes what a
    call does is not lowered as ``cls``; nor is a class changed after its definition (a
    patched ``Dense.forward`` or ``Module.__call__``)."""
    from .nn.module import Module, class_patched

    kind, own = type(module), module.__dict__
    return (isinstance(module, cls) and kind.forward is cls.forward and kind.__call__ is Module.__call__
            and kind.check_input is cls.check_input
            and kind.own_regularization is cls.own_regularization
            and kind.regularization_loss is cls.regularization_loss
            and not ("forward" in own or "check_input" in own or "own_regularization" in own
                     or "regularization_loss" in own)
            and not class_patched(kind))


def _has_hooks(module) -> bool:
    """Whether ``module`` has module hooks (which need the eager forward)."""
    hooks = module._module_hooks
    return hooks is not None and bool(hooks.pre or hooks.forward or hooks.backward or hooks.backward_pre)


class _Lowering:
    """A network walked into plan operations. ``ops``: (method, source node refs, other
    arguments), a node ref being the index of the op that made it (-1: the input);
    ``in_width`` / ``out_width`` / ``out_kind`` (the activation producing the output:
    "sigmoid", "softmax" or None); ``dropouts`` (count, in forward order); ``norms`` (the
    BatchNorm modules); ``params`` (the tensors the plan binds, each in ``flat``)."""

    def __init__(self, net, flat):
        self.net, self.flat = net, flat
        self.ops: List[Tuple[str, Tuple[int, ...], tuple]] = []
        self.widths: List[int] = []  # per op: its output width
        self.kinds: List[Optional[str]] = []
        self.in_width: Optional[int] = None
        self.dropouts = 0
        self.draws: List[int] = []  # the dropout nodes that take a seed (eager draws none for p=1)
        self.norms: list = []
        self.bound: set = set()
        self.spans: Dict[int, Tuple[int, int, int]] = {}  # id(module) -> (first op, end op, output node)
        self.out = self.lower(net, -1, "")
        self.out_width = self.width_of(self.out)
        self.out_kind = self.kinds[self.out] if self.out >= 0 else None

    # -- helpers
    def width_of(self, ref: int) -> Optional[int]:
        """The output width of node ``ref``; a width-preserving node (recorded as None) has
        its source's, which may be the input's, learnt from a later layer."""
        while ref >= 0 and self.widths[ref] is None:
            ref = self.ops[ref][1][0]
        return self.in_width if ref < 0 else self.widths[ref]

    def need_width(self, ref: int, width: int, where: str) -> None:
        """The input width of a layer that fixes it (the network's input when ``ref`` is -1)."""
        have = self.width_of(ref)
        if have is None:
            self.in_width = width
        elif have != width:
            raise UnsupportedError(f"{where}: expects {width} features but gets {have}")

    def emit(self, method: str, srcs: Tuple[int, ...], args: tuple, width: Optional[int],
             kind: Optional[str] = None) -> int:
        self.ops.append((method, srcs, args))
        self.widths.append(width)
        self.kinds.append(kind)
        return len(self.ops) - 1

    def param(self, p: Tensor, where: str, name: str):
        """(data view, gradient view) of parameter ``p`` in the flat buffer."""
        flat = self.flat
        i = flat.index(p)
        if i < 0 or p._flat is not flat:
            raise UnsupportedError(f"{where}: {name} is not in the network's flat buffer")
        if not p.requires_grad:
            raise UnsupportedError(f"{where}: {name} is frozen (requires_grad=False); the plan trains every "
                                   "parameter")
        if p._hooks:
            raise UnsupportedError(f"{where}: {name} has a tensor hook (register_hook), which needs the eager "
                                   "backward")
        view = flat.view(flat.data, i)
        if p.data is not view and not (p.data.shape == view.shape and p.data.ctypes.data == view.ctypes.data):
            raise UnsupportedError(f"{where}: {name}'s .data no longer views the flat buffer (assign with "
                                   "p.data[...] = value)")
        self.bound.add(id(p))
        return p.data, flat.grad_views[i]

    # -- the walk
    def lower(self, m, src: int, path: str) -> int:
        """Lower module ``m`` (at dotted ``path`` in the network, "" for the root) applied
        to node ``src``; returns its output node (``spans`` records the ops it made)."""
        start = len(self.ops)
        out = self._lower_module(m, src, path)
        self.spans[id(m)] = (start, len(self.ops), out)
        return out

    def _lower_module(self, m, src: int, path: str) -> int:
        from .nn import containers as C
        from .nn import layers as L

        where = f"layer '{path}' ({type(m).__name__})" if path else type(m).__name__
        if _has_hooks(m):
            raise UnsupportedError(f"{where}: has module hooks, which need the eager forward")
        if _is_layer(m, C.Sequential):
            for name, layer in m._modules.items():
                src = self.lower(layer, src, f"{path}.{name}" if path else name)
            return src
        if _is_layer(m, C.Residual):
            block = self.lower(m.block, src, f"{path}.block" if path else "block")
            short = src if m.projection is None else self.lower(
                m.projection, src, f"{path}.projection" if path else "projection")
            wb, ws = self.width_of(block), self.width_of(short)
            if wb is None or ws is None or wb != ws:
                raise UnsupportedError(f"{where}: the block gives {wb} features and the shortcut {ws}")
            if block == short:
                raise UnsupportedError(f"{where}: an empty block (x + x) is not lowered")
            return self.emit("add", (block, short), (), wb)
        if _is_layer(m, L.Dense):
            if m.__dict__.get("_monitor_tap") is not None:
                raise UnsupportedError(f"{where}: a GradientMonitor taps it, which needs the eager forward")
            n_out, n_in = m.weight.shape
            self.need_width(src, n_in, where)
            W, dW = self.param(m.weight, where, "weight")
            b, db = (None, None) if m.bias is None else self.param(m.bias, where, "bias")
            spec = _act.get(m.activation or "identity", where)
            fused = spec.kernel if spec.fused else "identity"
            node = self.emit("dense", (src,), (W, b, dW, db, fused, float(m.alpha), float(m.l2)), n_out,
                             spec.name if spec.fused else None)
            if not spec.fused:  # softmax / log_softmax over the row, after the kernel (as Dense.forward)
                node = self.emit("softmax", (node,), (spec.kernel == "log_softmax",), n_out, spec.name)
            return node
        if _is_layer(m, L.PReLU):
            a, da = self.param(m.weight, where, "weight")
            if m.weight.size > 1:
                self.need_width(src, m.weight.size, where)
            return self.emit("prelu", (src,), (a.reshape(-1), da.reshape(-1)), self.width_of(src), "prelu")
        if _is_layer(m, L.BatchNorm):
            self.need_width(src, m.features, where)
            g, dg = self.param(m.weight, where, "weight")
            b, db = self.param(m.bias, where, "bias")
            rm, rv, nbt = (m._buffers.get(k) for k in ("running_mean", "running_var", "num_batches_tracked"))
            for name, arr, dtype, size in (("running_mean", rm, self.flat.dtype, m.features),
                                           ("running_var", rv, self.flat.dtype, m.features),
                                           ("num_batches_tracked", nbt, np.dtype(np.int64), 1)):
                if not (isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.flags.c_contiguous
                        and arr.flags.writeable and arr.size == size):
                    raise UnsupportedError(f"{where}: buffer {name} is not a writeable C-contiguous {dtype} array "
                                           f"of {size} element(s)")
            momentum = None if m.momentum is None else float(m.momentum)
            self.norms.append((where, m))
            return self.emit("batchnorm", (src,), (g, b, dg, db, rm, rv, nbt, momentum, float(m.eps)), m.features)
        if _is_layer(m, L.LayerNorm):
            if len(m.normalized_shape) != 1:
                raise UnsupportedError(f"{where}: normalises over {m.normalized_shape}; only the last axis is "
                                       "lowered")
            self.need_width(src, m.normalized_shape[0], where)
            g = b = dg = db = None
            if m.weight is not None:
                g, dg = self.param(m.weight, where, "weight")
            if m.bias is not None:
                b, db = self.param(m.bias, where, "bias")
            return self.emit("layernorm", (src,), (g, b, dg, db, float(m.eps)), self.width_of(src))
        if _is_layer(m, L.Dropout):
            if m.p == 0.0:
                return src  # the eager forward returns its input and draws no seed
            if m.p != 1.0:
                self.draws.append(self.dropouts)
            self.dropouts += 1
            return self.emit("dropout", (src,), (float(m.p),), self.width_of(src))
        if _is_layer(m, L.Flatten) or _is_layer(m, L.Identity):
            return src  # the plan's input is 2-d: flattening it changes nothing
        for cls in (L.ReLU, L.LeakyReLU, L.ELU, L.SELU, L.Sigmoid, L.Tanh, L.SiLU, L.GELU, L.Softplus,
                    L.Activation, L.Softmax, L.LogSoftmax):
            if _is_layer(m, cls):
                if getattr(m, "dim", -1) not in (-1, 1):
                    raise UnsupportedError(f"{where}: dim={m.dim}; only the last axis of 2-d input is lowered")
                kind = m.activation_name
                if kind == "identity":
                    return src
                if kind in ("softmax", "log_softmax"):
                    return self.emit("softmax", (src,), (kind == "log_softmax",), self.width_of(src), kind)
                return self.emit("activation", (src,), (kind, float(m.alpha)), self.width_of(src), kind)
        raise UnsupportedError(f"{where}: this layer is not lowered into a plan (supported: Sequential, Residual, "
                               "Dense, the activation layers, PReLU, BatchNorm, LayerNorm, Dropout, Flatten, "
                               "Identity)")


def _same_plan(a: _Lowering, b: _Lowering) -> bool:
    """Whether two lowerings make the same plans: the same operations on the same nodes
    and arrays (compared by identity) with equal settings."""
    if len(a.ops) != len(b.ops) or a.draws != b.draws or a.out != b.out:
        return False
    for (ma, sa, xa), (mb, sb, xb) in zip(a.ops, b.ops):
        if ma != mb or sa != sb or len(xa) != len(xb):
            return False
        for u, v in zip(xa, xb):
            if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
                if u is not v:
                    return False
            elif type(u) is not type(v) or u != v:
                return False
    return True


# ---------------------------------------------------------------------- losses
# The loss kinds of the plan (csrc/plan.h) for each gradcore loss with default options:
# (kind for integer labels, kind for dense targets, the output activation it needs)
def _loss_kinds(loss) -> Tuple[Optional[str], Optional[str], Optional[str], Optional[int]]:
    """(labels kind, dense-target kind, required output activation, ignore_index) of a
    gradcore loss the plan computes, or UnsupportedError naming the option it cannot."""
    L = _losses
    name = type(loss).__name__
    if isinstance(loss, L.BinaryCrossEntropy):
        return _loss_kinds(loss._impl)

    def default(what: str, ok: bool):
        if not ok:
            raise UnsupportedError(f"loss {name}: {what} is not supported by the compiled step")

    if type(loss) is L.MSELoss:
        default(f"reduction={loss.reduction!r}", loss.reduction == "mean")
        return None, "mse", None, None
    if type(loss) is L.BCEWithLogitsLoss:
        default(f"reduction={loss.reduction!r}", loss.reduction == "mean")
        default("weight", loss.weight is None)
        default("pos_weight", loss.pos_weight is None)
        return None, "bce_logits", None, None
    if type(loss) is L.BCELoss:
        default(f"reduction={loss.reduction!r}", loss.reduction == "mean")
        default("weight", loss.weight is None)
        return None, "bce_probs_torch", "sigmoid", None
    if type(loss) in (L.CrossEntropyLoss, L.CrossEntropy):
        default(f"reduction={loss.reduction!r}", loss.reduction == "mean")
        default("weight", loss.weight is None)
        default(f"label_smoothing={loss.label_smoothing}", loss.label_smoothing == 0.0)
        return "ce_labels", "ce_probs", None, loss.ignore_index
    if type(loss) in (L.BinaryCrossentropy, L.CategoricalCrossentropy, L.SparseCategoricalCrossentropy):
        default(f"reduction={loss.reduction!r}", loss._reduction == "mean")
        default(f"label_smoothing={loss.label_smoothing}", not getattr(loss, "label_smoothing", 0.0))
        if type(loss) is L.BinaryCrossentropy:
            return (None, "bce_logits", None, None) if loss.from_logits else (None, "bce_probs_keras", "sigmoid", None)
        if type(loss) is L.CategoricalCrossentropy:
            return (None, "ce_probs", None, None) if loss.from_logits else (None, "cce_probs_keras", "softmax", None)
        return ("ce_labels", None, None, None) if loss.from_logits else ("sce_probs_keras", None, "softmax", None)
    raise UnsupportedError(f"loss {name if isinstance(loss, L.Loss) else repr(loss)}: only gradcore's MSE, "
                           "binary and categorical cross-entropy losses are computed by the compiled step")


# Dense-target kinds whose eager loss takes (N,) targets against an (N, 1) output.
_COLUMN_KINDS = ("mse", "bce_logits", "bce_probs_keras", "bce_probs_torch")
# Dense-target kinds whose eager loss reads the targets in float64 (the plan takes them so).
_FLOAT64_KINDS = ("bce_probs_keras", "bce_probs_torch", "cce_probs_keras")
_INT64 = np.dtype(np.int64)


# ---------------------------------------------------------------------- the step
class CompiledStep:
    """A training step of ``net`` compiled into C++ plans (see the module docstring).

    ``step(x, y)`` -> the loss (a float, of the network's dtype's precision); x (B, in),
    y as the loss takes it. ``mode``: "fused" or "split"; ``nbytes``: the plans'
    workspace bytes; ``output()``: the network's output of the last step (a view,
    overwritten by the next step). ``forward_backward(x, y, scale, accumulate)`` and
    ``apply_update()`` split a step in two (gradient accumulation).
    """

    def __init__(self, net, loss=None, optimizer=None, monitor=None):
        from .nn.module import Module

        if not isinstance(net, Module):
            raise TypeError(f"compile_step: net must be a gradcore.nn.Module, got {type(net).__name__}")
        loss = getattr(net, "loss", None) if loss is None else _losses.get(loss)
        if loss is None:
            raise ValueError("compile_step: no loss given and the network is not compiled with one "
                             "(net.compile(optimizer, loss) or compile_step(net, loss, optimizer))")
        optimizer = getattr(net, "optimizer", None) if optimizer is None else optimizer
        if optimizer is None:
            raise ValueError("compile_step: no optimizer given and the network is not compiled with one")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"compile_step: optimizer must have a step() method, got {type(optimizer).__name__}")
        if isinstance(net, TrainingMixin) and type(net).compute_loss is not TrainingMixin.compute_loss:
            raise UnsupportedError(f"{type(net).__name__} overrides compute_loss, which the plan cannot run")
        self._Plan = _plan_class()
        self.net, self.loss, self.optimizer = net, loss, optimizer
        self._labels_kind, self._dense_kind, need, self._ignore_index = _loss_kinds(loss)
        self._need = need
        self._monitor = None
        if monitor is not None:
            self._attach_monitor(monitor)  # its taps leave the layers before they are lowered
        try:
            self._init_plans(need)
        except BaseException:
            self.release_monitor()
            raise

    def __reduce__(self):
        """copy.deepcopy / pickle: a step compiled again over the copies of its network, loss
        and optimizer (its plans are C++ buffers derived from them). A step holding a
        monitor refuses: copy the network and optimizer, then compile_step(..., monitor=)
        with a new GradientMonitor of the copy."""
        if self._monitor is not None:
            raise TypeError("CompiledStep: a compiled step with a monitor cannot be copied or pickled; copy the "
                            "network and optimizer, then compile_step(net_copy, monitor=GradientMonitor(net_copy))")
        return (compile_step, (self.net, self.loss, self.optimizer))

    def _init_plans(self, need, low=None) -> None:
        loss = self.loss
        self._clock = _structure_clock[0]
        self._lower(low)
        if self._monitor is not None:
            self._monitor_rows()
        if need is not None and self._lowering.out_kind != need:
            raise UnsupportedError(
                f"loss {type(loss).__name__} takes probabilities, and the network's output is not a {need} "
                f"(the eager loss refuses values outside [0, 1]; end the network with a {need} or use the "
                "loss's logits form)")
        self._plans: Dict[str, object] = {}   # loss kind -> Plan
        self._plan = None
        self._kind = None
        self._mode = None
        self._bind()

    # ------------------------------------------------------------------ building
    def _lower(self, low=None) -> None:
        """Lower the network (or take ``low``, a lowering of it just made) and set
        everything the plans and the step derive from it."""
        net = self.net
        params = [p for _, p in net.named_parameters()]
        if not params:
            raise UnsupportedError(f"{type(net).__name__}: no parameters to train")
        flat = params[0]._flat
        if flat is None or len(flat) != len(params) or any(p._flat is not flat for p in params):
            raise UnsupportedError(f"{type(net).__name__}: its parameters are not the whole of one flat buffer (a "
                                   "network nested in another one, or mixed dtypes); compile the outer network")
        if flat.dtype not in (np.float32, np.float64):
            raise UnsupportedError(f"{type(net).__name__}: dtype {flat.dtype} (float32 or float64 only)")
        low = _Lowering(net, flat) if low is None else low
        if low.in_width is None:
            raise UnsupportedError(f"{type(net).__name__}: no layer fixes the input width")
        missing = [i for i, p in enumerate(flat.params) if id(p) not in low.bound]
        if missing:
            i = missing[0]
            raise UnsupportedError(f"{type(net).__name__}: parameter {i} of shape {flat.shapes[i]} is not used by any "
                                   "lowered layer")
        self._lowering = low
        self._flat = flat
        self.dtype = flat.dtype
        self._params = list(flat.params)
        self._views = [p.data for p in self._params]
        self._data_pairs = list(zip(self._params, self._views))  # (_stale's loop: no zip object per step)
        self._grad_pairs = list(zip(self._params, flat.grad_views))
        self._seeds = np.zeros(low.dropouts, dtype=np.uint64)
        self._draws = tuple(low.draws)
        self._ndrop = len(low.draws)
        self._in_width, self._out_width = low.in_width, low.out_width
        # BatchNorm buffers: what the plan binds (checked before each step) and a
        # preallocated copy a skipped split-mode step rolls back to
        buffers = [(m._buffers, k, m._buffers[k]) for _, m in low.norms
                   for k in ("running_mean", "running_var", "num_batches_tracked")]
        saved = getattr(self, "_snapshot", None)
        same = saved is not None and len(saved) == len(buffers) and all(
            a is b for (_, _, a), (b, _) in zip(buffers, saved))
        self._buffers = buffers
        if not same:  # (kept when lowered again over the same buffers: fit holds it as its rollback target)
            self._snapshot = [(arr, arr.copy()) for _, _, arr in buffers]
        self._dense_dtype = np.dtype(np.float64) if self._dense_kind in _FLOAT64_KINDS else flat.dtype

    def _build(self, kind: str):
        """A Plan of the network with loss ``kind`` (its workspaces come at the first run)."""
        low = self._lowering
        plan = self._Plan(self.dtype.type)
        ids: List[int] = []
        for method, srcs, args in low.ops:
            ids.append(getattr(plan, method)(*[ids[s] if s >= 0 else -1 for s in srcs], *args))
        out = ids[low.out] if low.out >= 0 else -1
        plan.set_loss(out, kind, _losses.EPSILON)
        plan.set_grads(self._flat.grad, self._flat.offsets)
        mon = self._monitor
        if mon is not None:
            act, dz, modes = self._stat_rows
            plan.set_stats([ids[i] if i >= 0 else -1 for i in act], [ids[i] for i in dz], modes, mon.saturation,
                           mon._act_S, mon._dz_S, mon._opt_S, mon._w_plan)
        return plan

    def _plan_for(self, kind: str):
        plan = self._plans.get(kind)
        if plan is None:
            plan = self._plans[kind] = self._build(kind)
            if self._mode == "fused":
                self._bind_optimizer(plan)
        self._plan, self._kind = plan, kind
        return plan

    def _bind_optimizer(self, plan) -> None:
        opt, slot = self.optimizer, self._slot
        plan.set_optimizer(opt._plan_kind, self._flat.data, opt._plan_states(slot, self._group), slot.sumsq,
                           slot.scales)

    def _bind(self, relower: bool = True) -> None:
        """Decide the mode and bind the optimizer's arrays (again): at compile time, and
        whenever the step's identity checks see that something it bound has changed. With
        ``relower``, first lower the network again if the structure clock moved (not
        between a forward_backward and its apply_update: the plan that ran the forward
        applies the update)."""
        if relower and _structure_clock[0] != self._clock:
            self._relower()
        flat, opt = self._flat, self.optimizer
        for p, view in zip(self._params, self._views):
            if p.data is not view:
                raise RuntimeError(f"compiled step: a parameter of shape {p.shape} no longer views the network's flat "
                                   "buffer (assign with p.data[...] = value), or the network was converted; compile "
                                   "the step again")
        if not all(p.requires_grad for p in self._params):
            raise UnsupportedError("compiled step: a parameter was frozen (requires_grad=False) after compiling; "
                                   "compile the step again (frozen parameters are not supported)")
        for store, key, arr in self._buffers:
            if store.get(key) is not arr:
                raise RuntimeError(f"compiled step: BatchNorm buffer {key} was replaced after compiling; compile "
                                   "the step again")
        call, why = (None, "not a gradcore optimizer")
        if hasattr(opt, "_fused_call"):
            call, why = opt._fused_call(flat)
        self.split_reason = why  # why the step runs split ("" when fused)
        if call is None:
            self._mode = "split"
            self._call = self._slot = self._group = None
        else:
            self._mode = "fused"
            self._call, self._slot, self._group = call, call.slot, call.group
            self._od = opt.__dict__
            self._groups = opt.param_groups
            self._state = call.slot.state
            self._seen = tuple(call.group.values())
            self._t = call.t
            self._steps = call.slot.steps
            self._hyper = opt._hyper
            self._clip = (call.group["clip_value"] or 0.0, call.group["clip_norm"] or 0.0)
            for plan in self._plans.values():
                self._bind_optimizer(plan)
            self._calls = self._od["_step_calls"]
            self._edits = _param_edits[0]  # (_fused_call checked the groups just now)
            # what _stale compares, in one tuple (one attribute lookup per step)
            self._watch = (self._od, self._group, self._groups, self._seen, self._slot, self._state,
                           self._data_pairs, self._buffers)

    def _relower(self) -> None:
        """The structure clock moved since the network was lowered (a module attribute set,
        a layer added, removed or replaced, a hook added...): lower it again. The same
        operations on the same arrays with the same settings keep the plans; changed
        settings make new plans that use them (as the eager forward does); a change the
        plan cannot follow raises UnsupportedError, and every later step tries again."""
        clock = _structure_clock[0]
        old = self._lowering
        try:
            kinds = _loss_kinds(self.loss)  # a loss option set since (losses move the clock too)
            new = _Lowering(self.net, self._flat)
        except UnsupportedError as exc:
            raise UnsupportedError(f"compiled step: the network or loss changed after compiling: {exc}") from None
        if kinds != (self._labels_kind, self._dense_kind, self._need, self._ignore_index):
            raise UnsupportedError(f"compiled step: the loss {self.loss!r} changed after compiling; compile the step "
                                   "again")
        if _same_plan(old, new):
            self._clock = clock
            return
        if (new.in_width, new.out_width, new.out_kind) != (old.in_width, old.out_width, old.out_kind) or \
                new.bound != old.bound:
            raise UnsupportedError(
                f"compiled step: the network changed after compiling (its input width {old.in_width} -> "
                f"{new.in_width}, output width {old.out_width} -> {new.out_width}, or the parameters it trains); "
                "compile the step again")
        self._init_plans(self._need, new)  # new plans with the new settings (the clock is taken first)
        self.relowered += 1

    relowered = 0  # how many times a moved structure clock made new plans

    def _stale(self) -> bool:
        """Whether something the fused plan is bound to changed since ``_bind`` (the
        cheap identity checks made before every step)."""
        od, group, groups, seen, slot, state, pairs, buffers = self._watch
        if (_structure_clock[0] != self._clock or _param_edits[0] != self._edits or od["_step_calls"] != self._calls
                or od["grad_noise"] is not None or od["_record_stats"] is not False
                or od["param_groups"] is not groups or len(groups) != 1 or groups[0] is not group
                or slot.state is not state or len(group) != len(seen)):
            return True
        if not all(map(operator.is_, seen, group.values())):
            return True
        # plain loops: CPython specializes these attribute reads, ~3x faster than map(attrgetter)
        for p, view in pairs:
            if p.data is not view or not p.requires_grad:
                return True
        for store, k, a in buffers:
            if store.get(k) is not a:
                return True
        return False

    @property
    def mode(self) -> str:
        """"fused" (the optimizer runs inside the plan) or "split" (optimizer.step() in Python)."""
        if self._mode == "fused" and self._stale():
            self._bind()
        elif self._mode == "split":
            self._bind()
        return self._mode

    @property
    def nbytes(self) -> int:
        """Workspace bytes of this step's plans (all batch sizes run so far)."""
        return int(sum(plan.nbytes for plan in self._plans.values()))

    def output(self) -> np.ndarray:
        """The network's output (B, width) of the last step: a view the next step overwrites."""
        if self._plan is None or self._last_rows is None:
            raise RuntimeError("compiled step: no step has run yet")
        return self._plan.output(self._last_rows)

    _last_rows = None
    last_lr = math.nan  # the learning rate the last update used (what fit logs as "lr")
    last_report = (math.nan, False, 1.0)  # the last update's (pre-clip norm, skipped, clip coefficient)

    # ------------------------------------------------------------------ inputs
    def _input(self, x) -> np.ndarray:
        """x as the plan takes it (B, in) C-contiguous of the network's dtype; converted
        like the eager network converts its input; a clear error otherwise."""
        arr = np.asarray(x.data if isinstance(x, Tensor) else x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"compiled step ({type(self.net).__name__}): input must be numeric, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != self._in_width:
            self.net.check_input(arr)  # the eager message, naming the first layer that checks
            raise ValueError(f"compiled step ({type(self.net).__name__}): expected input (batch, {self._in_width}), "
                             f"got shape {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError(f"compiled step ({type(self.net).__name__}): empty batch (input shape {arr.shape})")
        if arr.shape[0] == 1 and self._lowering.norms:
            raise ValueError(f"compiled step: {self._lowering.norms[0][0]} needs more than 1 value per channel in "
                             f"training mode, got input of shape {arr.shape}")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _target(self, y, rows: int) -> Tuple[np.ndarray, str]:
        """(y as the plan's loss takes it, the loss kind), with the eager loss's checks and
        conversions: labels (rows,) int64, or dense targets (rows, width) of the dtype."""
        op = f"compiled step, loss {type(self.loss).__name__}"
        T = np.asarray(y.data if isinstance(y, Tensor) else y)
        w = self._out_width
        labels, dense = self._labels_kind, self._dense_kind
        if labels is not None and (T.shape == (rows,) or (dense is None and T.shape == (rows, 1))):
            if T.dtype.kind == "b" and dense is not None:  # cross_entropy refuses bools in both forms
                raise TypeError(f"{op}: target must be integer class labels or float probabilities, got dtype bool "
                                "(convert with .astype(np.int64) for labels)")
            ignore = self._ignore_index
            lab = F.class_labels(op, T.reshape(rows), rows, w, ignore)
            if ignore is not None and np.any(lab == ignore):
                raise UnsupportedError(f"{op}: labels equal to ignore_index={ignore} (rows left out of the loss) are "
                                       "not supported by the compiled step")
            return lab, labels
        if dense is None:
            raise ValueError(f"{op}: labels must have shape ({rows},) or ({rows}, 1), got {T.shape}")
        if T.dtype.kind not in "biuf" or (T.dtype.kind == "b" and labels is not None):
            raise TypeError(f"{op}: target must be numeric, got dtype {T.dtype}")
        column = dense in _COLUMN_KINDS and w == 1 and T.shape == (rows,)  # the one broadcast _target_like takes
        if T.shape != (rows, w) and not column:
            raise ValueError(f"{op}: the network's output has shape ({rows}, {w}) but the target has shape {T.shape}")
        return np.ascontiguousarray(T, dtype=self._dense_dtype).reshape(rows, w), dense

    def _prepare(self, x, y):
        """(x, y, plan) for one run: the fast path takes arrays already in the plan's form."""
        if type(x) is np.ndarray and x.dtype is self.dtype and x.ndim == 2:
            rows, width = x.shape
            if not (width == self._in_width and x.flags.c_contiguous
                    and (rows > 1 or (rows == 1 and not self._lowering.norms))):
                x = self._input(x)
                rows = x.shape[0]
        else:
            x = self._input(x)
            rows = x.shape[0]
        kind = self._kind
        if kind is not None and type(y) is np.ndarray and y.flags.c_contiguous:
            if kind == self._labels_kind:
                if y.dtype is _INT64 and y.shape == (rows,):
                    return x, y, self._plan  # the plan checks each label's range
            elif y.dtype is self._dense_dtype:
                shape = y.shape
                if shape == (rows, self._out_width):
                    return x, y, self._plan
                if shape == (rows,) and self._out_width == 1 and kind in _COLUMN_KINDS:
                    return x, y.reshape(rows, 1), self._plan
        y, kind = self._target(y, rows)
        return x, y, (self._plan if kind == self._kind else self._plan_for(kind))

    def _explain(self, y) -> None:
        """After the plan refused labels it was given directly: labels equal to the loss's
        ignore_index are not out of range for the eager loss, which leaves their rows out.
        (The plan checked everything before running, so nothing was written.)"""
        ignore = self._ignore_index
        if ignore is not None and self._kind == self._labels_kind and np.any(y == ignore):
            raise UnsupportedError(f"compiled step, loss {type(self.loss).__name__}: labels equal to ignore_index="
                                   f"{ignore} (rows left out of the loss) are not supported by the compiled step")

    def _draw_seeds(self) -> np.ndarray:
        seeds = self._seeds
        for i in self._draws:
            seeds[i] = _random.next_seed()
        return seeds

    # ------------------------------------------------------------------ running
    def __call__(self, x, y) -> float:
        """One training step on the batch (x, y); returns its loss."""
        x, y, plan = self._prepare(x, y)
        if self._mode == "split" or self._stale():
            self._bind()
            if plan is not self._plan:  # lowered again: new plans
                x, y, plan = self._prepare(x, y)
            if self._mode == "split":
                self.last_lr = _current_lr(self.optimizer)
                loss = self._split_forward_backward(plan, x, y, 1.0, False)
                self._split_update()
                return loss
        rec = self._monitor is not None and self._stats_now()
        group, t = self._group, self._t
        lr = self._lr()
        cv, cn = self._clip
        try:
            loss, norm, bad, coef = plan.step(x, y, self._draw_seeds() if self._ndrop else self._seeds, 1.0, False,
                                              self._hyper(group, lr, t), cv, cn, self._od["global_clip_norm"] or 0.0,
                                              rec)
        except ValueError:
            self._explain(y)
            raise
        self._last_rows = len(x)
        self._rec_loss = loss  # (the plan returns the loss rounded to the dtype, as eager's loss tensor is)
        if bad < 0 and self._monitor is None:  # an applied update, no monitor: every fit batch's step
            self.last_lr = lr
            self._applied(norm, coef)
        else:
            self._updated(lr, norm, bad, coef)
        return loss

    def _lr(self) -> float:
        """The rate of the fused update about to run (the group's, or its schedule's)."""
        lr = self._group["lr"]
        if type(lr) is float and 0.0 <= lr < math.inf:
            return lr
        return self.optimizer.lr_at(self._t, self._group)  # a schedule, or the eager step's checks and message

    def _updated(self, lr: float, norm: float, bad: int, coef: float) -> None:
        """After the plan's fused update (or skip) at rate ``lr``: the bookkeeping, then
        the monitor's record of the step (if one is attached)."""
        self.last_lr = lr
        if self._monitor is None:
            self._finish(norm, bad, coef)
            return
        try:
            self._finish(norm, bad, coef)
        finally:
            self._monitor_record()

    def _finish(self, norm: float, bad: int, coef: float) -> None:
        """The optimizer's bookkeeping after the plan's update (or skip), as step() does it."""
        od = self._od
        if bad >= 0:
            self.last_report = (norm, True, 1.0)  # a skipped step reports no clipping, as step() does
            self._calls = od["_step_calls"] + 1  # _fused_skipped counts the call, then may warn or raise
            self.optimizer._fused_skipped(self._call, bad, norm)
            return
        self._applied(norm, coef)

    def _applied(self, norm: float, coef: float) -> None:
        """The bookkeeping of an applied update, as step() does it."""
        od = self._od
        self._calls = od["_step_calls"] = od["_step_calls"] + 1
        self._t = t = self._t + 1
        self._steps.fill(t)
        bump_version(self._params)  # as step() marks the parameters written
        self.optimizer._report(norm, coef)
        self.last_report = (norm, False, coef)

    # -- split mode and the two halves
    def _save_norms(self) -> None:
        for live, saved in self._snapshot:
            np.copyto(saved, live)

    def _restore_norms(self) -> None:
        for live, saved in self._snapshot:
            np.copyto(live, saved)

    def _split_forward_backward(self, plan, x, y, scale: float, accumulate: bool) -> float:
        if not accumulate and self._snapshot:
            self._save_norms()
        return self._run_backward(plan, x, y, scale, accumulate)

    def _run_backward(self, plan, x, y, scale: float, accumulate: bool) -> float:
        """The plan's forward and backward of one batch (both modes); returns the loss."""
        seeds = self._draw_seeds() if self._ndrop else self._seeds
        rec = self._monitor is not None and self._stats_now()
        try:
            loss = plan.forward_backward(x, y, seeds, float(scale), bool(accumulate), rec)
        except ValueError:
            self._explain(y)
            raise
        self._last_rows = len(x)
        self._rec_loss = loss  # (rounded to the dtype by the plan)
        return loss

    def _split_update(self, point: bool = True) -> float:
        """optimizer.step() over the plan's gradients; a skipped (or raising) step rolls
        BatchNorm back to before the accumulation group. ``point=False``: the parameters'
        ``.grad`` were pointed at the plan's gradients before an ``on_after_backward`` hook,
        which may have replaced them; the step takes what the hook left, as eager's does."""
        opt = self.optimizer
        if point:
            for p, view in self._grad_pairs:
                p.grad = view
        skipped_before = getattr(opt, "skipped_steps", 0)
        stats = self._monitor is not None and self._rec and opt.record_stats is not True
        if stats:  # the monitor's update statistics come from the optimizer's step
            before, opt.record_stats = opt.record_stats, True
        try:
            returned = opt.step()
        except BaseException:
            self._restore_norms()
            raise
        finally:
            if stats:
                opt.record_stats = before
        norm, skipped, coef = _step_report(opt, returned, skipped_before)  # what backward_and_step reads
        if skipped:
            self._restore_norms()
        self.last_report = (math.nan if norm is None else float(norm), bool(skipped), float(coef))
        if self._monitor is not None:
            self._monitor_record()
        return self.last_report[0]

    def forward_backward(self, x, y, scale: float = 1.0, accumulate: bool = False) -> float:
        """Forward, loss and backward of one batch: the gradient of ``scale`` x the loss is
        written into the flat gradient buffer (``accumulate=True``: added to it). Returns
        the loss (unscaled). ``apply_update()`` then clips and steps."""
        x, y, plan = self._prepare(x, y)
        scale = float(scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"compiled step: scale must be a finite number >= 0, got {scale}")
        if self._mode == "split" or self._stale():
            self._bind()
            if plan is not self._plan:  # lowered again: new plans
                x, y, plan = self._prepare(x, y)
        if self._mode == "split":
            return self._split_forward_backward(plan, x, y, scale, accumulate)
        return self._run_backward(plan, x, y, scale, accumulate)

    def apply_update(self) -> float:
        """Clip and update from the gradients the last ``forward_backward`` calls left
        (skipped, BatchNorm rolled back, for a non-finite one); returns the pre-clip norm."""
        if self._plan is None or self._last_rows is None:
            raise RuntimeError("compiled step: apply_update() before any forward_backward()")
        if self._mode == "split" or self._stale():
            self._bind(relower=False)
        if self._mode == "split":
            self.last_lr = _current_lr(self.optimizer)
            return self._split_update()
        lr = self._lr()
        cv, cn = self._clip
        norm, bad, coef = self._plan.apply_update(self._hyper(self._group, lr, self._t), cv, cn,
                                                  self._od["global_clip_norm"] or 0.0,
                                                  self._monitor is not None and bool(self._rec))
        self._updated(lr, norm, bad, coef)
        return float(norm)

    # -- a GradientMonitor recording the steps (compile_step(..., monitor=mon))
    _rec = False
    _rec_loss = math.nan

    def _attach_monitor(self, mon) -> None:
        from .monitor import GradientMonitor

        if not isinstance(mon, GradientMonitor):
            raise TypeError(f"compile_step: monitor must be a gradcore.monitor.GradientMonitor or None, got "
                            f"{type(mon).__name__}")
        if mon.net is not self.net:
            raise ValueError(f"compile_step: the monitor watches {mon.net.describe()}, not the compiled network "
                             f"{self.net.describe()}")
        if not hasattr(self.optimizer, "record_stats"):
            raise UnsupportedError(f"compile_step: a GradientMonitor needs the optimizer's step statistics, and "
                                   f"{type(self.optimizer).__name__} has no record_stats")
        why = mon._arrays_unsupported()
        if why:
            raise UnsupportedError(f"compile_step: GradientMonitor: {why}")
        mon._use_arrays(True)
        self._monitor = mon

    def _monitor_rows(self) -> None:
        """Per monitored layer: the op whose output it watches (its last) and the op whose
        output gradient is its dz (its first: a Dense layer's dense op, the gradient at its
        pre-activation), and the statistics mode."""
        mon, spans = self._monitor, self._lowering.spans
        act, dz = [], []
        for info, module in zip(mon.layers, mon._modules):
            span = spans.get(id(module))
            if span is None or span[0] == span[1]:
                raise UnsupportedError(f"layer '{info.name}' ({info.kind}): a GradientMonitor watches it, but it "
                                       "makes no operation of its own in the plan")
            act.append(span[2] if mon.activations else -1)  # norms only: no activation statistics
            dz.append(span[0])
        self._stat_rows = (act, dz, list(mon._mode))

    def release_monitor(self) -> None:
        """Hand the monitor back to the eager path (its taps are installed again) and stop
        computing its statistics."""
        mon, self._monitor = self._monitor, None
        if mon is None:
            return
        for plan in getattr(self, "_plans", {}).values():
            plan.clear_stats()
        mon._use_arrays(False)

    def _stats_now(self) -> bool:
        """Whether the run about to start computes the monitor's statistics (the monitor
        records the optimizer step it belongs to): False, True or 2 (and the weights the
        forward uses: the fused plan measures them as its forward reads them)."""
        self._rec = rec = self._monitor._arrays_begin(self._mode == "fused")
        return rec

    def _monitor_record(self) -> None:
        """The optimizer step is done: the monitor records it (or only counts it)."""
        mon, opt = self._monitor, self.optimizer
        rec, self._rec = self._rec, False
        if rec and self._mode != "split":  # the plan wrote the statistics into the monitor's arrays
            norm, skipped, coef = self.last_report
            mon._record_compiled(self._rec_loss, self.last_lr, _num(norm), _num(coef), bool(skipped), self._last_rows)
            return
        R = None
        if rec:  # (a split step: the optimizer's own step statistics, in the buffer's order)
            R = mon._opt_S
            S = getattr(opt, "last_stats", None)
            if S is not None:
                R = self._split_rows(S, {id(t): r for r, t in enumerate(opt.stats_params)})
        norm, skipped, coef = self.last_report  # what fit logs
        mon._record_arrays(self._rec_loss, mon._act_S if rec else None, mon._dz_S if rec else None, R, self.last_lr,
                           _num(norm), _num(coef), bool(skipped), self._last_rows)

    def _split_rows(self, S: np.ndarray, rows: Dict[int, int]) -> np.ndarray:
        """The monitor's (k, 5) statistics of a split step, in the buffer's order: the
        optimizer's rows for the tensors it stepped; for a tensor it does not train, the
        plan's gradient of it (unless frozen), its weights and an update of 0 (as the eager
        monitor records such a tensor)."""
        flat = self._flat
        G = W = None
        R = np.empty((len(self._params), 5))
        for i, p in enumerate(self._params):
            r = rows.get(id(p))
            if r is not None:
                R[i] = S[r]
                continue
            if G is None:
                G = _C.grad_stats_flat(flat.grad, flat.offsets)
                W = _C.grad_stats_flat(flat.data, flat.offsets)
            R[i, :3] = G[i, [0, 2, 3]] if p.requires_grad else np.nan
            R[i, 3], R[i, 4] = W[i, 0], 0.0
        return R

    def __repr__(self):
        return (f"CompiledStep({type(self.net).__name__}, loss={type(self.loss).__name__}, "
                f"optimizer={type(self.optimizer).__name__}, mode={self._mode!r}, dtype={self.dtype})")


def _num(v) -> float:
    return math.nan if v is None else float(v)


def compile_step(net, loss=None, optimizer=None, monitor=None) -> CompiledStep:
    """Compile a training step of ``net`` (default loss and optimizer: the ones
    ``net.compile`` attached). Raises UnsupportedError naming a layer, loss option or
    setting the plan cannot run. See the module docstring.

    ``monitor``: a ``gradcore.monitor.GradientMonitor`` of ``net``; each step it records
    (its ``every``) has its statistics computed inside the plan while the buffers are hot
    (activations after each layer's forward, dz after its backward, the gradient and
    update sums from the optimizer's passes), the same history and events as its eager
    taps give. The monitor's taps leave the layers meanwhile; ``step.release_monitor()``
    gives it back to the eager path."""
    return CompiledStep(net, loss, optimizer, monitor)


# ---------------------------------------------------------------------- fit
_HOOKS = ("on_after_forward", "on_after_backward")


def _overrides(cb, hook: str) -> bool:
    from .callbacks import Callback

    return getattr(type(cb), hook, None) is not getattr(Callback, hook)


class _FitRunner:
    """``fit``'s batches through a CompiledStep: the same logs, hooks, accumulation groups,
    skipped-step handling and BatchNorm rollback as ``train_step`` / ``backward_and_step``.

    X and y are converted once (the plan's dtype, labels as int64); each batch is gathered
    into preallocated arrays, so a step allocates nothing but its logs.
    """

    def __init__(self, net, step: CompiledStep, X: np.ndarray, y: np.ndarray, callbacks, k: int):
        self.net, self.step, self.k = net, step, k
        self.X = np.ascontiguousarray(X, dtype=step.dtype)
        self.Y, kind = step._target(y, len(y))
        step._plan_for(kind)
        self.y_raw = y
        # a callback that looks between forward, backward and the update needs them apart
        # (not a GradientMonitor the plan computes the statistics of)
        self.hooks = any(_overrides(cb, h) for cb in callbacks if cb is not step._monitor for h in _HOOKS)
        self.metrics = list(getattr(net, "_metrics", ()))
        self.own_metrics = type(net).compute_metrics is not TrainingMixin.compute_metrics
        self._batches: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def close(self) -> None:
        """The fit is over (or trains eagerly after all): a monitor goes back to its taps."""
        self.step.release_monitor()

    def begin_epoch(self):
        """fit's rollback target for the epoch: (buffer, saved copy) pairs, saved now and
        after every step, as ``_FitLoop.save_buffers`` does it (into the same arrays)."""
        if self.step._snapshot:
            self.step._save_norms()
        return self.step._snapshot

    def _batch(self, idx: np.ndarray):
        n = len(idx)
        bufs = self._batches.get(n)
        if bufs is None:
            bufs = self._batches[n] = (np.empty((n,) + self.X.shape[1:], self.X.dtype),
                                       np.empty((n,) + self.Y.shape[1:], self.Y.dtype))
        xb, yb = bufs
        self.X.take(idx, axis=0, out=xb, mode="clip")  # (mode "raise" would buffer a copy)
        self.Y.take(idx, axis=0, out=yb, mode="clip")
        return xb, yb

    def train_batch(self, idx: np.ndarray, loop) -> Dict:
        """One batch of fit: what ``train_step((X[idx], y[idx]))`` returns, from the plan."""
        net, step, opt = self.net, self.step, self.net.optimizer
        xb, yb = self._batch(idx)
        start = loop.batch % self.k == 0
        whole = self.k == 1 and not self.hooks
        if whole:
            loss = step(xb, yb)  # forward, backward and update in one call (or step() in split mode)
        else:
            loss = step.forward_backward(xb, yb, loop.weight, not start)
        logs = self._logs(loss, xb, idx)
        if self.hooks:
            net.run_hook("on_after_forward", logs)
        if not whole:
            if not loop.step_now:
                logs.update(lr=_current_lr(opt), grad_norm=math.nan, clip_coef=math.nan, skipped=0)
                return logs
            if self.hooks:
                for p, view in step._grad_pairs:  # the gradients as eager code sees them
                    p.grad = view
                net.run_hook("on_after_backward", logs)
                step.last_lr = _current_lr(opt)
                step._split_update(point=False)
            else:
                step.apply_update()
        return self._after_step(loop, opt, logs)

    def _logs(self, loss: float, xb: np.ndarray, idx: np.ndarray) -> Dict:
        net = self.net
        if not self.metrics and not self.own_metrics:
            return {"loss": loss}
        out = Tensor(self.step.output())
        y = self.y_raw[idx]
        if self.own_metrics:
            return net.compute_metrics(xb, y, out, Tensor(np.asarray(loss, dtype=self.step.dtype)))
        logs = {"loss": loss}
        for name, fn in self.metrics:
            logs[name] = fn(out, y)
        return logs

    def _after_step(self, loop, opt, logs: Dict) -> Dict:
        """backward_and_step's end: the step's logs, a skipped step's rollback and note."""
        norm, skipped, coef = self.step.last_report
        if skipped:
            self.net._note_skipped(loop, opt)
        if self.step._mode == "split" or self.hooks:
            opt.zero_grad()  # as eager; in fused mode the .grad attributes were never set
        if self.step._snapshot:
            self.step._save_norms()  # the rollback target of what follows (loop.save_buffers)
        logs.update(lr=self.step.last_lr, grad_norm=float(norm), clip_coef=float(coef), skipped=int(skipped))
        self.net.run_hook("on_after_step", logs)
        return logs


def fit_runner(net, X: np.ndarray, y: np.ndarray, callbacks, compiled, k: int) -> Tuple[Optional[_FitRunner], str]:
    """The runner ``fit(compiled=...)`` uses, or (None, why the plan cannot run this fit).

    Refused: a network overriding train_step / backward_and_step / compute_loss, input
    that is not 2-d, anything ``compile_step`` refuses (a GradientMonitor's taps on the
    layers, which need the eager forward, included), targets the compiled loss cannot take. With
    ``compiled="auto"`` a callback that overrides on_after_forward / on_after_backward
    also keeps fit eager; with ``compiled=True`` such a batch runs the plan's forward and
    backward, the hooks, then ``optimizer.step()``."""
    kind = type(net)
    for name in ("train_step", "backward_and_step", "compute_loss"):
        if getattr(kind, name, None) is not getattr(TrainingMixin, name):
            return None, f"{kind.__name__} overrides {name}"
    from .monitor import GradientMonitor

    monitor = None
    for cb in callbacks:
        if isinstance(cb, GradientMonitor):
            why = cb._arrays_unsupported()
            if why:
                return None, f"callback GradientMonitor: {why}"
            if cb.net is net and monitor is None:
                monitor = cb  # the plan computes its statistics (other monitors' taps are refused by the lowering)
                continue
        hook = next((h for h in _HOOKS if _overrides(cb, h)), None) if compiled == "auto" else None
        if hook is not None:
            return None, f"callback {type(cb).__name__} overrides {hook}"
    if X.ndim != 2:
        return None, f"the input has shape {X.shape}; the plan takes 2-d input (batch, features)"
    if X.dtype.kind not in "biuf":
        return None, f"the input has dtype {X.dtype}"
    try:
        step = CompiledStep(net, monitor=monitor)
        try:
            return _FitRunner(net, step, X, y, callbacks, k), ""
        except BaseException:
            step.release_monitor()
            raise
    except UnsupportedError as exc:
        return None, str(exc)
    except (ValueError, TypeError) as exc:
        if compiled is True:
            raise
        return None, f"{type(exc).__name__}: {exc}"


def still_supported(net) -> str:
    """'' when no hook (a module hook, or a tensor hook on a parameter) or monitor tap was
    installed on ``net``'s layers since the runner was made (callbacks' on_train_begin may
    add them), else what was found."""
    for name, m in net.named_modules():
        if _has_hooks(m):
            return f"layer '{name}' ({type(m).__name__}) has module hooks"
        if m.__dict__.get("_monitor_tap") is not None:
            return f"layer '{name}' ({type(m).__name__}) is tapped by a GradientMonitor"
        for pname, p in m._parameters.items():
            if p is not None and p._hooks:
                return f"layer '{name}' ({type(m).__name__}): {pname} has a tensor hook"
    return ""
