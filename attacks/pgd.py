"""PGD on cross-entropy, the minimum-margin attack (MMA) and CW-inf, with per-element L-inf budgets."""
import torch
import torch.nn.functional as F

from .core import as_budget, ascend, frozen, random_or_official_start, uniform_start


def pgd(model, x, y, eps, step_size, steps, random_start=True, official_start=None):
    """PGD (L-inf) maximising the summed cross-entropy. `eps` is a float or a tensor broadcastable to x
    (B, C, H, W); every element of the result lies within its own budget of x and in [0, 1].
    `official_start` (a float s) starts as the official PART code does: x + U(-s, s), clipped to [0, 1] when
    `eps` is a float (torchattacks' PGD, which the official warm-up uses) and not at all under a budget tensor
    (the official part_pgd); every step projects as usual (and with no step the start is projected), so the
    guarantee above always holds.
    Runs on the model's device; the model's mode, BN buffers and parameter gradients are left unchanged."""
    with frozen(model):
        e = as_budget(eps, x)
        x0 = random_or_official_start(x, e, random_start, official_start, clip_official=isinstance(eps, (int, float)))
        return ascend(model, x, x0, e, step_size, steps, lambda z: F.cross_entropy(z, y, reduction="sum"))


def mma(model, x, y, eps, step_size, steps, k=3, random_start=True, confidence=50.0, official_start=None):
    """Minimum-margin attack (Gao et al., ICML 2022) as PART uses it: for each of the k most likely wrong
    classes t on the clean input, a targeted PGD from one shared uniform start on the margin loss
    -sum(max(z_y - z_t + confidence, 0)); per sample the candidate with the largest z_t - z_y is kept.
    `official_start` (a float s): the shared start is x + U(-s, s) clipped to [0, 1], as in the official code's
    mma and part_mma. Same budget semantics and guarantees as `pgd`; margins and scores are computed in float32
    (also under bf16 autocast)."""
    with frozen(model):
        e = as_budget(eps, x)
        logits = model(x).float()
        k = min(k, logits.shape[1] - 1)
        wrong = logits.detach().scatter(1, y[:, None], float("-inf"))
        targets = wrong.topk(k, dim=1).indices  # (B, k), most likely wrong class first
        x0 = random_or_official_start(x, e, random_start, official_start)
        rows = torch.arange(x.shape[0], device=x.device)
        candidates, scores = [], []
        for i in range(k):
            t = targets[:, i]

            def margin(z, t=t):
                return -(z[rows, y] - z[rows, t] + confidence).clamp(min=0).sum()

            xa = ascend(model, x, x0, e, step_size, steps, margin)
            with torch.no_grad():
                z = model(xa).float()
            candidates.append(xa)
            scores.append(z[rows, t] - z[rows, y])
        best = torch.stack(scores, 1).argmax(1)
        return torch.stack(candidates, 0)[best, rows]


def cw(model, x, y, eps, step_size, steps, confidence=50.0, random_start=True):
    """CW-inf as the TRADES and MART papers evaluate it: L-inf PGD from a uniform start on the Carlini-Wagner
    margin loss -sum(max(z_y - max_{j != y} z_j + confidence, 0)). Same budget semantics and guarantees as
    `pgd`."""
    with frozen(model):
        e = as_budget(eps, x)
        x0 = uniform_start(x, e) if random_start else x.clone()

        def margin(z):
            wrong = z.scatter(1, y[:, None], float("-inf")).amax(1)
            return -(z.gather(1, y[:, None]).squeeze(1) - wrong + confidence).clamp(min=0).sum()

        return ascend(model, x, x0, e, step_size, steps, margin)
