"""gradcore.optim: optimizers over flat parameter buffers, gradient clipping, schedules.

Every optimizer step is one call into C++ per flat buffer: a pass for the per-tensor
gradient norms and the non-finite check, then one fused pass that clips (clip_norm,
global_clip_norm, clip_value) and updates the parameters and the optimizer state.
"""
from . import schedules
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .clip import clip_grad_norm_, clip_grad_value_
from .optimizer import NONFINITE_POLICIES, GradNoise, Optimizer
from .registry import OPTIMIZERS, from_config, get
from .rmsprop import RMSprop
from .schedules import (
    Constant, CosineDecay, ExponentialDecay, InverseTimeDecay, LinearWarmup, ReduceLROnPlateau, Schedule, StepDecay,
)
from .sgd import SGD

__all__ = [
    "Optimizer", "OPTIMIZERS", "get", "from_config", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "GradNoise", "NONFINITE_POLICIES",
    "clip_grad_norm_", "clip_grad_value_", "schedules", "Schedule", "Constant", "ExponentialDecay",
    "InverseTimeDecay", "StepDecay", "CosineDecay", "LinearWarmup", "ReduceLROnPlateau",
]
