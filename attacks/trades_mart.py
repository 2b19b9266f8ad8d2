"""The inner maximisations of TRADES and MART, with per-element budgets (their outer losses are in utils/methods.py)."""
import torch
import torch.nn.functional as F

from .core import as_budget, ascend, frozen, gaussian_start


def _gaussian_ascent(model, x, eps, step_size, steps, official_start, loss_fn):
    """From x + 0.001 * N(0, 1) (projected, or as the official code starts: not projected), `steps` projected
    ascent steps on loss_fn; the official code clips the result to [0, 1] once more (which changes nothing:
    every result of `ascend` is projected)."""
    e = as_budget(eps, x)
    x0 = gaussian_start(x, e, projected=not official_start)
    x_adv = ascend(model, x, x0, e, step_size, steps, loss_fn)
    return x_adv.clamp_(0.0, 1.0) if official_start else x_adv


def trades_attack(model, x, y, eps, step_size, steps, official_start=False):
    """TRADES inner maximisation: from x + 0.001 * N(0, 1), ascend KL(p(x) || p(x_adv)) (summed).
    `y` is unused (kept so every attack has one signature). `official_start`: the start is not projected into
    the budget and [0, 1], as in the official code. Same guarantees as attacks.pgd."""
    with frozen(model):
        with torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)
        return _gaussian_ascent(model, x, eps, step_size, steps, official_start,
                                lambda z: F.kl_div(F.log_softmax(z, dim=1), p_nat, reduction="sum"))


def mart_attack(model, x, y, eps, step_size, steps, official_start=False):
    """MART inner maximisation: from x + 0.001 * N(0, 1), ascend the cross-entropy. `official_start` as in
    `trades_attack`."""
    with frozen(model):
        return _gaussian_ascent(model, x, eps, step_size, steps, official_start,
                                lambda z: F.cross_entropy(z, y, reduction="sum"))
