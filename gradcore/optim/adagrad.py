"""Adagrad (PyTorch's formula, with lr_decay and an initial accumulator value)."""
from __future__ import annotations

from .. import _C
from . import _checks
from .optimizer import Optimizer


class Adagrad(Optimizer):
    """PyTorch's torch.optim.Adagrad, fused over flat buffers.

    At a parameter's update t (1-based), with g the clipped gradient (+ weight_decay * p):
    clr = lr / (1 + (t - 1) lr_decay); s += g^2; p -= clr g / (sqrt(s) + eps).
    Every hyper-parameter may differ per parameter group. Common keywords: see ``Optimizer``.
    """

    _hyper_names = ("lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params=None, lr=0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, **common):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps), **common)

    def _check_hyper(self, h, op) -> None:
        op = "Adagrad"
        h["lr_decay"] = _checks.real(op, "lr_decay", h["lr_decay"], low=0.0)
        h["weight_decay"] = _checks.real(op, "weight_decay", h["weight_decay"], low=0.0)
        h["initial_accumulator_value"] = _checks.real(op, "initial_accumulator_value",
                                                      h["initial_accumulator_value"], low=0.0)
        h["eps"] = _checks.real(op, "eps", h["eps"], low=0.0, low_open=True)

    def _state_spec(self, group):
        return [("sum", group["initial_accumulator_value"])]

    # The compiled step (gradcore.compiled) runs the same kernel from a Plan: its kind there.
    _plan_kind = "adagrad"

    @staticmethod
    def _hyper(g: dict, lr: float, t: int) -> tuple:
        """The kernel's hyper-parameters in csrc/optim.h's AdagradHyper order, as floats:
        (clr, eps, weight_decay) with clr = lr / (1 + t lr_decay) for an update of parameters
        updated ``t`` times before. The eager step and the compiled one both read it, so
        they cannot drift apart."""
        return (lr / (1.0 + t * g["lr_decay"]), g["eps"], g["weight_decay"])

    def _plan_states(self, slot, group) -> tuple:
        """The state arrays the plan's "adagrad" kernel takes: (sum,)."""
        return (slot.state_array("sum"),)

    def _kernel(self, call, lr, clip):
        clr, eps, weight_decay = self._hyper(call.group, lr, call.t)
        return _C.adagrad_step(
            call.param, call.grad, call.state("sum"), call.run.offsets, call.sumsq, call.scales,
            lr=clr, eps=eps, weight_decay=weight_decay, noise=call.noise, **clip)
