"""Attacks with L-inf budgets that are a float or a tensor broadcastable to the input (B, C, H, W).

All are batched, run on the model's device, leave the model's train/eval mode, BatchNorm buffers and
parameter gradients as they found them, and return images within the budget of x and in [0, 1] (an attack
with 0 steps and an official start returns that start, as the official code does).
"""
from .autoattack import autoattack, autoattack_official, autoattack_version, torchattacks_version
from .core import as_budget, frozen, project
from .pgd import cw, mma, pgd
from .trades_mart import mart_attack, trades_attack

__all__ = ["pgd", "mma", "cw", "trades_attack", "mart_attack", "autoattack", "autoattack_official",
           "autoattack_version", "torchattacks_version", "frozen", "as_budget", "project"]
