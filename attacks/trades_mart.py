"""The inner maximisations of TRADES and MART, with per-element budgets (their outer losses are in utils/methods.py)."""
import torch
import torch.nn.functional as F

from .core import as_budget, ascend, frozen, gaussian_start


def trades_attack(model, x, y, eps, step_size, steps):
    """TRADES inner maximisation: from x + 0.001 * N(0, 1), ascend KL(p(x) || p(x_adv)) (summed).
    `y` is unused (kept so every attack has one signature). Same guarantees as attacks.pgd."""
    with frozen(model):
        e = as_budget(eps, x)
        with torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)
        x0 = gaussian_start(x, e)
        return ascend(model, x, x0, e, step_size, steps,
                      lambda z: F.kl_div(F.log_softmax(z, dim=1), p_nat, reduction="sum"))


def mart_attack(model, x, y, eps, step_size, steps):
    """MART inner maximisation: from x + 0.001 * N(0, 1), ascend the cross-entropy."""
    with frozen(model):
        e = as_budget(eps, x)
        x0 = gaussian_start(x, e)
        return ascend(model, x, x0, e, step_size, steps, lambda z: F.cross_entropy(z, y, reduction="sum"))
