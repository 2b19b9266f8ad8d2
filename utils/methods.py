"""The methods: one registry entry each, holding everything that makes PART, PART-T and PART-M differ.

Each entry names its script, its display names (masked and baseline, per training attack), the training
attacks it allows, and its two pieces of arithmetic:
- `attack(model, x, y, eps, cfg)`: the inner maximisation within `eps` (a float or a per-element budget);
- `loss(model, x, x_adv, y, cfg)`: the outer loss, written out below, run with the model in train mode.
A new variant is one entry here plus one script. Everything else (flags, engine, grid, report) reads `METHODS`.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from attacks import mart_attack, mma, pgd, trades_attack


# ----------------------------------------------------------------------------------------------------
# the outer losses
# ----------------------------------------------------------------------------------------------------
def at_loss(model, x, x_adv, y, cfg):
    """AT / PART: cross-entropy on the adversarial examples."""
    return F.cross_entropy(model(x_adv), y)


def trades_loss(logits_nat, logits_adv, y, beta=6.0, target_logits=None):
    """TRADES: CE(f(x), y) + beta * (1/B) * sum_i KL(p(x_i) || p(x_adv_i)); p(x) from `target_logits` when
    given (a second forward of x), else from logits_nat."""
    target = logits_nat if target_logits is None else target_logits
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(target, dim=1), reduction="sum")
    return F.cross_entropy(logits_nat, y) + beta * kl / logits_nat.shape[0]


def mart_loss(logits_nat, logits_adv, y, beta=6.0):
    """MART: BCE(p(x_adv), y) + beta * (1/B) * sum_i KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_i)), where
    BCE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)), with the official code's constants."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    return loss_adv + beta * (kl * (1.0000001 - true_probs)).sum() / logits_nat.shape[0]


# ----------------------------------------------------------------------------------------------------
# the inner maximisations
# ----------------------------------------------------------------------------------------------------
def official_start(cfg):
    """The scalar budget of the official PGD / MMA start (cfg's epsilon) with --official-starts, else None."""
    return cfg["epsilon"] if cfg["official_starts"] else None


def at_attack(model, x, y, eps, cfg):
    if cfg["attack"] == "mma":
        return mma(model, x, y, eps, cfg["step_size"], cfg["num_steps"], k=3, official_start=official_start(cfg))
    return pgd(model, x, y, eps, cfg["step_size"], cfg["num_steps"], official_start=official_start(cfg))


def trades_outer_loss(model, x, x_adv, y, cfg):
    """PART-T / TRADES: `trades_loss` with one natural forward; with --official-trades-forward the model runs on
    x, x_adv and x again (train mode, the official order), and the KL target comes from the second natural
    forward: the same loss and gradient, but BatchNorm's running statistics see the natural batch twice."""
    if not cfg["official_trades_forward"]:
        return trades_loss(model(x), model(x_adv), y, cfg["beta"])
    logits_nat, logits_adv = model(x), model(x_adv)
    return trades_loss(logits_nat, logits_adv, y, cfg["beta"], target_logits=model(x))


# ----------------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    script: str
    names: dict   # training attack -> (masked name, baseline name); the first attack is the default
    attack: Callable
    loss: Callable
    uses_beta: bool = False
    trades_forward: bool = False  # whether --official-trades-forward applies
    # whether --official-starts changes only masked training: PGD's and MMA's official start is uniform at the
    # scalar eps, bit for bit their own start under a scalar budget (TRADES' and MART's differs always)
    starts_need_mask: bool = False

    @property
    def attacks(self) -> tuple:
        return tuple(self.names)

    def label(self, attack: str, masked: bool) -> str:
        """The paper's row name of a run: e.g. PART / AT, PART-MMA / MMA, PART-T / TRADES."""
        name, baseline = self.names[attack]
        return name if masked else baseline


METHODS = {
    "part": Method("train_eval_part.py", {"pgd": ("PART", "AT"), "mma": ("PART-MMA", "MMA")}, at_attack, at_loss,
                   starts_need_mask=True),
    "part_t": Method("train_eval_part_t.py", {"trades": ("PART-T", "TRADES")},
                     lambda model, x, y, eps, cfg: trades_attack(model, x, y, eps, cfg["step_size"], cfg["num_steps"],
                                                                 official_start=cfg["official_starts"]),
                     trades_outer_loss, uses_beta=True, trades_forward=True),
    "part_m": Method("train_eval_part_m.py", {"mart": ("PART-M", "MART")},
                     lambda model, x, y, eps, cfg: mart_attack(model, x, y, eps, cfg["step_size"], cfg["num_steps"],
                                                               official_start=cfg["official_starts"]),
                     lambda model, x, x_adv, y, cfg: mart_loss(model(x), model(x_adv), y, cfg["beta"]),
                     uses_beta=True),
}


def labels() -> dict:
    """Every display name -> (variant, training attack, masked, its baseline's name), in the registry's order with
    each baseline before its masked method: AT, PART, MMA, PART-MMA, TRADES, PART-T, MART, PART-M."""
    return {m.label(a, masked): (v, a, masked, m.label(a, False))
            for v, m in METHODS.items() for a in m.attacks for masked in (False, True)}


class TrainLoss(torch.nn.Module):
    """model + method's outer loss as one module, so DistributedDataParallel sees a single forward even
    when the loss runs the model twice (TRADES, MART)."""

    def __init__(self, model: torch.nn.Module, method: Method, cfg: dict):
        super().__init__()
        self.model, self.method, self.cfg = model, method, cfg

    def forward(self, x, x_adv, y):
        return self.method.loss(self.model, x, x_adv, y, self.cfg)
