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
    p -= lr g / (sqrt(s_hat) + eps). Every hyper-parameter may differ per parameter group.
    Common keywords: see ``Optimizer``.
    """

    _hyper_names = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params=None, lr=0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, **common):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered), **common)

    def _check_hyper(self, h, op) -> None:
        op = "RMSprop"
        h["alpha"] = _checks.real(op, "alpha", h["alpha"], low=0.0, high=1.0)
        h["eps"] = _checks.real(op, "eps", h["eps"], low=0.0, low_open=True)
        h["weight_decay"] = _checks.real(op, "weight_decay", h["weight_decay"], low=0.0)
        h["momentum"] = _checks.real(op, "momentum", h["momentum"], low=0.0)
        h["centered"] = bool(h["centered"])

    def _state_spec(self, group):
        spec = [("square_avg", 0.0)]
        if group["centered"]:
            spec.append(("grad_avg", 0.0))
        if group["momentum"] > 0:
            spec.append(("momentum_buffer", 0.0))
        return spec

    # The compiled step (gradcore.compiled) runs the same kernel from a Plan: its kind there.
    _plan_kind = "rmsprop"

    @staticmethod
    def _hyper(g: dict, lr: float, t: int) -> tuple:
        """The kernel's hyper-parameters in csrc/optim.h's RmspropHyper order, as floats:
        (lr, alpha, eps, weight_decay, momentum). The eager step and the compiled one both
        read it, so they cannot drift apart."""
        return (lr, g["alpha"], g["eps"], g["weight_decay"], g["momentum"])

    def _plan_states(self, slot, group) -> tuple:
        """The state arrays the plan's "rmsprop" kernel takes: (square_avg, grad_avg or None,
        momentum_buffer or None)."""
        return (slot.state_array("square_avg"), slot.state_array("grad_avg") if group["centered"] else None,
                slot.state_array("momentum_buffer") if group["momentum"] > 0 else None)

    def _kernel(self, call, lr, clip):
        g = call.group
        lr, alpha, eps, weight_decay, momentum = self._hyper(g, lr, call.t)
        return _C.rmsprop_step(
            call.param, call.grad, call.state("square_avg"), call.state("grad_avg") if g["centered"] else None,
            call.state("momentum_buffer") if momentum > 0 else None, call.run.offsets, call.sumsq, call.scales,
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            noise=call.noise, **clip)
