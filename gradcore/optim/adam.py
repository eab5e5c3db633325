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
    The bias corrections are computed in double. Every hyper-parameter may differ per
    parameter group. Common keywords: see ``Optimizer``.
    """

    _hyper_names = ("betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, **common):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad),
                         **common)

    def _check_hyper(self, h, op) -> None:
        try:
            b1, b2 = h["betas"]
        except (TypeError, ValueError):
            raise ValueError(f"{op}: betas must be a pair (beta1, beta2), got {h['betas']!r}") from None
        h["betas"] = (_checks.real(op, "beta1", b1, low=0.0, high=1.0, high_open=True),
                      _checks.real(op, "beta2", b2, low=0.0, high=1.0, high_open=True))
        h["eps"] = _checks.real(op, "eps", h["eps"], low=0.0, low_open=True)
        h["weight_decay"] = _checks.real(op, "weight_decay", h["weight_decay"], low=0.0)
        h["amsgrad"] = bool(h["amsgrad"])

    def _state_spec(self, group):
        spec = [("m", 0.0), ("v", 0.0)]
        return spec + [("v_max", 0.0)] if group["amsgrad"] else spec

    # The compiled step (gradcore.compiled) runs the same kernel from a Plan: its kind there.
    _plan_kind = "adam"

    def _hyper(self, g: dict, lr: float, t: int) -> tuple:
        """The kernel's hyper-parameters in csrc/optim.h's AdamHyper order, as floats: (lr,
        beta1, beta2, eps, weight_decay, decoupled, bias_correction1, bias_correction2) for
        an update of parameters updated ``t`` times before (corrections in double). The
        eager step and the compiled one both read it, so they cannot drift apart."""
        b1, b2 = g["betas"]
        t += 1
        return (lr, b1, b2, g["eps"], g["weight_decay"], 1.0 if self._decoupled else 0.0, 1.0 - b1 ** t,
                1.0 - b2 ** t)

    def _plan_states(self, slot, group) -> tuple:
        """The state arrays the plan's "adam" kernel takes: (m, v, v_max or None)."""
        return (slot.state_array("m"), slot.state_array("v"),
                slot.state_array("v_max") if group["amsgrad"] else None)

    def _kernel(self, call, lr, clip):
        g = call.group
        lr, b1, b2, eps, weight_decay, decoupled, bc1, bc2 = self._hyper(g, lr, call.t)
        # every argument positionally, in the binding's order (param, grad, m, v, v_max, offsets,
        # sumsq, scales, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
        # bias_correction2, then _clip_tail's)
        return _C.adam_step(
            call.param, call.grad, call.state("m"), call.state("v"), call.state("v_max") if g["amsgrad"] else None,
            call.run.offsets, call.sumsq, call.scales, lr, b1, b2, eps, weight_decay, decoupled != 0.0, bc1, bc2,
            *self._clip_tail(clip, call.noise))


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * weight_decay before the Adam update."""

    _decoupled = True

    def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 amsgrad: bool = False, **common):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, **common)
