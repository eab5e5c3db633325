"""RMSprop, optionally centered and with momentum (PyTorch's formula)."""
from __future__ import annotations

from .. import _C
from . import _checks
from .optimizer import Optimizer


class RMSprop(Optimizer):
    """PyTorch's torch.optim.RMSprop, fused over flat buffers.

    With g the clipped gradient (+ weight_decay * p): s = alpha s + (1 - alpha) g^2;
    centered: a = alpha a + (1 - alpha) g and s_hat = s - a^2 (floored at 0), else s_hat = s;
    with momentum b = momentum b + g / (sqrt(s_hat) + eps) and p -= lr b, else
    p -= lr g / (sqrt(s_hat) + eps). Common keywords: see ``Optimizer``.
    """

    _hyper_names = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params=None, lr=0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, **common):
        self.alpha, self.eps, self.weight_decay, self.momentum, self.centered = (
            alpha, eps, weight_decay, momentum, centered)
        self._check_hyper()
        super().__init__(params, lr, **common)

    def _check_hyper(self) -> None:
        op = "RMSprop"
        self.alpha = _checks.real(op, "alpha", self.alpha, low=0.0, high=1.0)
        self.eps = _checks.real(op, "eps", self.eps, low=0.0, low_open=True)
        self.weight_decay = _checks.real(op, "weight_decay", self.weight_decay, low=0.0)
        self.momentum = _checks.real(op, "momentum", self.momentum, low=0.0)
        self.centered = bool(self.centered)

    def _state_spec(self):
        spec = [("square_avg", 0.0)]
        if self.centered:
            spec.append(("grad_avg", 0.0))
        if self.momentum > 0:
            spec.append(("momentum_buffer", 0.0))
        return spec

    def _kernel(self, call, lr, clip):
        state = call.slot.state
        return _C.rmsprop_step(
            call.param, call.grad, call.view(state["square_avg"]), call.view(state.get("grad_avg")),
            call.view(state.get("momentum_buffer")), call.run.offsets, call.sumsq, call.scales, lr=lr,
            alpha=self.alpha, eps=self.eps, weight_decay=self.weight_decay, momentum=self.momentum,
            noise=call.noise, **clip)
