"""What every attack shares: the frozen-model guarantee, per-element budgets, and one projected ascent loop."""
import math
from contextlib import contextmanager

import torch


@contextmanager
def frozen(model: torch.nn.Module):
    """Run `model` in eval mode with its parameters' requires_grad off, so no weight gradients are built and
    BatchNorm statistics are not updated. On exit, however the block ends, the model's train/eval mode, every
    parameter's requires_grad flag and its `.grad` (the very tensor, or None) are as they were on entry.
    This is the one place that guarantee is written: attacks, CAMs and the evaluation all use it."""
    was_training = model.training
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    model.eval()
    for p, _, _ in saved:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


def as_budget(eps, x: torch.Tensor) -> torch.Tensor:
    """The L-inf budget as a tensor broadcastable to x (a float becomes a 0-d tensor), on x's device.
    Raises ValueError if the budget does not broadcast to x, or if any value is negative or not finite."""
    if isinstance(eps, (int, float)):
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"an L-inf budget must be finite and non-negative, got {eps}")
        return torch.full((), float(eps), dtype=x.dtype, device=x.device)  # a fill, not a host-to-device copy
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    try:
        torch.broadcast_shapes(e.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"budget of shape {tuple(e.shape)} does not broadcast to input {tuple(x.shape)}") from None
    if not bool((torch.isfinite(e) & (e >= 0)).all()):  # one check per attack, not per step
        raise ValueError("an L-inf budget must be finite and non-negative everywhere")
    return e


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Clip x_adv - x element-wise to [-eps, eps] (its own budget per element), then the image to [0, 1]."""
    delta = torch.minimum(torch.maximum(x_adv - x, -eps), eps)
    return (x + delta).clamp_(0.0, 1.0)


def uniform_start(x: torch.Tensor, eps: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """x plus noise uniform in [-eps, eps] per element (its own budget), clipped to [0, 1] unless `clip` is
    False (the official PART PGD under a per-pixel budget does not clip its start)."""
    start = x + (torch.rand_like(x) * 2 - 1) * eps
    return start.clamp_(0.0, 1.0) if clip else start


def random_or_official_start(x: torch.Tensor, eps: torch.Tensor, random_start: bool = True,
                             official_start: float | None = None, clip_official: bool = True) -> torch.Tensor:
    """The start of a PGD-type attack: a copy of x (`random_start` False); `uniform_start` within the budget eps
    (`official_start` None); or the official PART code's start x + U(-s, s) at the scalar s = `official_start`
    whatever the per-element budget, clipped to [0, 1] when `clip_official` (the first step projects)."""
    if not random_start:
        return x.clone()
    if official_start is None:
        return uniform_start(x, eps)
    return uniform_start(x, as_budget(official_start, x), clip=clip_official)


def gaussian_start(x: torch.Tensor, eps: torch.Tensor, scale: float = 0.001, projected: bool = True) -> torch.Tensor:
    """TRADES/MART start x + 0.001 * N(0, 1), projected into the budget and [0, 1]; with `projected` False, as
    the official TRADES, MART and PART code start: not projected at all (the first step projects)."""
    start = x + scale * torch.randn_like(x)
    return project(start, x, eps) if projected else start


def ascend(model, x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor, step_size: float, steps: int,
           loss_fn) -> torch.Tensor:
    """`steps` signed-gradient ascent steps on loss_fn(model(x_adv)), each followed by `project`; loss_fn sees the
    logits in float32 (also under bf16 autocast). With no step the start is projected, so that the result always
    lies within its budget and [0, 1], whatever the start. The model must already be frozen. Returns a detached
    tensor shaped like x."""
    if steps == 0:
        return project(x_adv.detach().clone(), x, eps)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x_adv).float())
            grad, = torch.autograd.grad(loss, x_adv)
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()
