"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay."""
from __future__ import annotations

from .. import _C
from . import _checks
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's torch.optim.SGD, fused over flat buffers.

    Per element, with g the clipped gradient: g += weight_decay * p; with momentum,
    b = g at a parameter's first update, else b = momentum * b + (1 - dampening) * g, and
    g = g + momentum * b (nesterov) or g = b; then p -= lr * g.
    Common keywords (clip_value, clip_norm, global_clip_norm, nonfinite, grad_noise): see
    ``Optimizer``.
    """

    _hyper_names = ("momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params=None, lr=0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **common):
        self.momentum, self.dampening, self.weight_decay, self.nesterov = momentum, dampening, weight_decay, nesterov
        self._check_hyper()
        super().__init__(params, lr, **common)

    def _check_hyper(self) -> None:
        op = "SGD"
        self.momentum = _checks.real(op, "momentum", self.momentum, low=0.0)
        self.dampening = _checks.real(op, "dampening", self.dampening, low=0.0, high=1.0)
        self.weight_decay = _checks.real(op, "weight_decay", self.weight_decay, low=0.0)
        self.nesterov = bool(self.nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"{op}: nesterov needs momentum > 0 and dampening == 0, "
                             f"got momentum={self.momentum}, dampening={self.dampening}")

    def _state_spec(self):
        return [("momentum_buffer", 0.0)] if self.momentum != 0 else []

    def _kernel(self, call, lr, clip):
        return _C.sgd_step(
            call.param, call.grad, call.view(call.slot.state.get("momentum_buffer")), call.run.offsets, call.sumsq,
            call.scales, lr=lr, momentum=self.momentum, dampening=self.dampening, weight_decay=self.weight_decay,
            nesterov=self.nesterov, init_buffer=call.t == 0, noise=call.noise, **clip)
