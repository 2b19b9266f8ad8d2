"""The three variants differ only here: how the training examples are attacked and what loss is taken.

Each method's `attack(model, x, y, eps, cfg)` takes a float or per-element budget `eps`; its
`loss(model, x, x_adv, y, cfg)` runs the model in train mode and returns a scalar.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from attacks import mart_attack, mart_loss, mma, pgd, trades_attack, trades_loss


def _at_attack(model, x, y, eps, cfg):
    if cfg["attack"] == "mma":
        return mma(model, x, y, eps, cfg["step_size"], cfg["num_steps"], k=3)
    return pgd(model, x, y, eps, cfg["step_size"], cfg["num_steps"])


def _at_loss(model, x, x_adv, y, cfg):
    return F.cross_entropy(model(x_adv), y)


def _trades_attack(model, x, y, eps, cfg):
    return trades_attack(model, x, y, eps, cfg["step_size"], cfg["num_steps"])


def _trades_loss(model, x, x_adv, y, cfg):
    return trades_loss(model(x), model(x_adv), y, cfg["beta"])


def _mart_attack(model, x, y, eps, cfg):
    return mart_attack(model, x, y, eps, cfg["step_size"], cfg["num_steps"])


def _mart_loss(model, x, x_adv, y, cfg):
    return mart_loss(model(x), model(x_adv), y, cfg["beta"])


@dataclass(frozen=True)
class Method:
    attack: Callable
    loss: Callable


METHODS = {
    "part": Method(_at_attack, _at_loss),
    "part_t": Method(_trades_attack, _trades_loss),
    "part_m": Method(_mart_attack, _mart_loss),
}


class TrainLoss(torch.nn.Module):
    """model + method's outer loss as one module, so DistributedDataParallel sees a single forward even
    when the loss runs the model twice (TRADES, MART)."""

    def __init__(self, model: torch.nn.Module, method: Method, cfg: dict):
        super().__init__()
        self.model, self.method, self.cfg = model, method, cfg

    def forward(self, x, x_adv, y):
        return self.method.loss(self.model, x, x_adv, y, self.cfg)
