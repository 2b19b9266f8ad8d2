"""TRADES and MART: their inner maximisations (with per-element budgets) and their outer losses."""
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


def trades_loss(logits_nat, logits_adv, y, beta=6.0):
    """TRADES: CE(f(x), y) + beta * (1/B) * sum_i KL(p(x_i) || p(x_adv_i))."""
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="sum")
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
