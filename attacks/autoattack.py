"""AutoAttack (standard, L-inf) through fra31's implementation: `pyautoattack` from the registry, or
`autoattack` where a user installed it from git."""
import inspect

import torch

from .core import frozen


def _autoattack_class():
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        try:
            from autoattack import AutoAttack
        except ImportError:
            raise ImportError("AutoAttack is not installed: pip install pyautoattack "
                              "(or pip install git+https://github.com/fra31/auto-attack)") from None
    return AutoAttack


def autoattack_version() -> str:
    for name in ("pyautoattack", "autoattack"):
        try:
            from importlib.metadata import version
            return f"{name} {version(name)}"
        except Exception:
            continue
    return "not installed"


def autoattack(model, x, y, eps=8 / 255, num_classes=None, batch_size=256, seed=0, verbose=False):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at L-inf `eps` on (x, y) on the model's device.
    The targeted attacks use min(9, num_classes - 1) target classes. Returns adversarial images shaped like
    x; the model's mode and parameters are left as they were."""
    AutoAttack = _autoattack_class()
    device = x.device
    with frozen(model):
        if num_classes is None:
            with torch.no_grad():
                num_classes = model(x[:1]).shape[1]
        adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", device=device, seed=seed)
        adversary.verbose = verbose
        n_target = max(1, min(9, num_classes - 1))
        adversary.apgd_targeted.n_target_classes = n_target
        adversary.fab.n_target_classes = n_target
        params = inspect.signature(adversary.run_standard_evaluation).parameters
        kw = {"batch_size": batch_size} if "batch_size" in params else {"bs": batch_size}
        out = adversary.run_standard_evaluation(x, y, **kw)
        if isinstance(out, tuple):  # pyautoattack returns (x_adv, y_adv); fra31's git version x_adv alone
            out = out[0]
        return out.detach()
