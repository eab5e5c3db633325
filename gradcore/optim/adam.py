"""Adam, AdamW and AMSGrad in PyTorch's form."""
from __future__ import annotations

from .. import _C
from . import _checks
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam (``amsgrad=True``: AMSGrad), PyTorch's form, fused over flat buffers.

    At a parameter's update t (1-based), with g the clipped gradient (+ weight_decay * p):
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; with AMSGrad v_max = max(v_max, v) and
    v_hat = v_max, else v_hat = v; p -= lr / (1 - b1^t) * m / (sqrt(v_hat) / sqrt(1 - b2^t) + eps).
    The bias corrections are computed in double. Common keywords: see ``Optimizer``.
    """

    _hyper_names = ("betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, **common):
        self.betas, self.eps, self.weight_decay, self.amsgrad = betas, eps, weight_decay, amsgrad
        self._check_hyper()
        super().__init__(params, lr, **common)

    def _check_hyper(self) -> None:
        op = type(self).__name__
        try:
            b1, b2 = self.betas
        except (TypeError, ValueError):
            raise ValueError(f"{op}: betas must be a pair (beta1, beta2), got {self.betas!r}") from None
        self.betas = (_checks.real(op, "beta1", b1, low=0.0, high=1.0, high_open=True),
                      _checks.real(op, "beta2", b2, low=0.0, high=1.0, high_open=True))
        self.eps = _checks.real(op, "eps", self.eps, low=0.0, low_open=True)
        self.weight_decay = _checks.real(op, "weight_decay", self.weight_decay, low=0.0)
        self.amsgrad = bool(self.amsgrad)

    def _state_spec(self):
        spec = [("m", 0.0), ("v", 0.0)]
        return spec + [("v_max", 0.0)] if self.amsgrad else spec

    def _kernel(self, call, lr, clip):
        b1, b2 = self.betas
        t = call.t + 1
        state = call.slot.state
        return _C.adam_step(
            call.param, call.grad, call.view(state["m"]), call.view(state["v"]), call.view(state.get("v_max")),
            call.run.offsets, call.sumsq, call.scales, lr=lr, beta1=b1, beta2=b2, eps=self.eps,
            weight_decay=self.weight_decay, decoupled=self._decoupled, bias_correction1=1.0 - b1 ** t,
            bias_correction2=1.0 - b2 ** t, noise=call.noise, **clip)


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay before the Adam update."""

    _decoupled = True

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 amsgrad: bool = False, **common):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, **common)
