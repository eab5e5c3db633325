"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay."""
from __future__ import annotations

from .. import _C
from . import _checks
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's torch.optim.SGD, fused over flat buffers.

    Per element, with g the clipped gradient: g += weight_decay * p; with momentum,
    b = g at a parameter's first update, else b = momentum * b + (1 - dampening) * g, and
    g = g + momentum * b (nesterov) or g = b; then p -= lr * g. Every hyper-parameter may
    differ per parameter group. Common keywords (clip_value, clip_norm, global_clip_norm,
    nonfinite, grad_noise): see ``Optimizer``.
    """

    _hyper_names = ("momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params=None, lr=0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **common):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov), **common)

    def _check_hyper(self, h, op) -> None:
        op = "SGD"
        h["momentum"] = _checks.real(op, "momentum", h["momentum"], low=0.0)
        h["dampening"] = _checks.real(op, "dampening", h["dampening"], low=0.0, high=1.0)
        h["weight_decay"] = _checks.real(op, "weight_decay", h["weight_decay"], low=0.0)
        h["nesterov"] = bool(h["nesterov"])
        if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
            raise ValueError(f"{op}: nesterov needs momentum > 0 and dampening == 0, "
                             f"got momentum={h['momentum']}, dampening={h['dampening']}")

    def _state_spec(self, group):
        return [("momentum_buffer", 0.0)] if group["momentum"] != 0 else []

    # The compiled step (gradcore.compiled) runs the same kernel from a Plan: its kind there.
    _plan_kind = "sgd"

    @staticmethod
    def _hyper(g: dict, lr: float, t: int) -> tuple:
        """The kernel's hyper-parameters in csrc/optim.h's SgdHyper order, as floats: (lr,
        momentum, dampening, weight_decay, nesterov, init_buffer) for an update of
        parameters updated ``t`` times before. The eager step and the compiled one both
        read it, so they cannot drift apart."""
        return (lr, g["momentum"], g["dampening"], g["weight_decay"], 1.0 if g["nesterov"] else 0.0,
                1.0 if t == 0 else 0.0)

    def _plan_states(self, slot, group) -> tuple:
        """The state arrays the plan's "sgd" kernel takes: (momentum_buffer or None)."""
        return (slot.state_array("momentum_buffer") if group["momentum"] != 0 else None,)

    def _kernel(self, call, lr, clip):
        g = call.group
        lr, momentum, dampening, weight_decay, nesterov, init_buffer = self._hyper(g, lr, call.t)
        # every argument positionally, in the binding's order (param, grad, momentum_buffer,
        # offsets, sumsq, scales, lr, momentum, dampening, weight_decay, nesterov, init_buffer,
        # then _clip_tail's)
        return _C.sgd_step(
            call.param, call.grad, call.state("momentum_buffer") if momentum != 0 else None, call.run.offsets,
            call.sumsq, call.scales, lr, momentum, dampening, weight_decay, nesterov != 0.0, init_buffer != 0.0,
            *self._clip_tail(clip, call.noise))
