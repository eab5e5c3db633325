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

    def _kernel(self, call, lr, clip):
        g = call.group
        return _C.sgd_step(
            call.param, call.grad, call.state("momentum_buffer") if g["momentum"] != 0 else None, call.run.offsets,
            call.sumsq, call.scales, lr=lr, momentum=g["momentum"], dampening=g["dampening"],
            weight_decay=g["weight_decay"], nesterov=g["nesterov"], init_buffer=call.t == 0, noise=call.noise,
            **clip)
