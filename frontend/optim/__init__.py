"""Optimizers: ``opt.minimize(loss)`` inside a compiled step records backward and update."""

from lamina.frontend.optim import lr_scheduler
from lamina.frontend.optim.adam import Adam, AdamW
from lamina.frontend.optim.ema import EMA
from lamina.frontend.optim.optimizer import Optimizer
from lamina.frontend.optim.sgd import SGD

__all__ = ["EMA", "SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
