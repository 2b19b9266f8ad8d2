"""AutoAttack (standard, L-inf) through fra31's implementation: `pyautoattack` from the registry, or
`autoattack` where a user installed it from git."""
import inspect
import logging
import re

import torch

from .core import frozen

# what both implementations log after each attack, e.g. "robust accuracy after APGD-CE: 47.00% (total time 3.1 s)"
_AFTER = re.compile(r"robust accuracy after ([A-Za-z-]+): ([0-9.]+)%")
_INITIAL = re.compile(r"initial accuracy: ([0-9.]+)%")
ATTACK_NAMES = {"APGD-CE": "apgd-ce", "APGD-T": "apgd-t", "FAB-T": "fab-t", "SQUARE": "square"}


def _autoattack_module():
    try:
        import pyautoattack as module
    except ImportError:
        try:
            import autoattack as module
        except ImportError:
            raise ImportError("AutoAttack is not installed: pip install pyautoattack "
                              "(or pip install git+https://github.com/fra31/auto-attack)") from None
    return module


def autoattack_version() -> str:
    for name in ("pyautoattack", "autoattack"):
        try:
            from importlib.metadata import version
            return f"{name} {version(name)}"
        except Exception:
            continue
    return "not installed"


def parse_log(text: str) -> dict:
    """The per-attack breakdown in an AutoAttack log: {'clean': %, 'apgd-ce': %, 'apgd-t': %, 'fab-t': %,
    'square': %}, each the robust accuracy (percent) after that attack and all before it; attacks that did
    not run (nothing left to attack) are absent."""
    out = {}
    for m in _INITIAL.finditer(text):
        out["clean"] = float(m.group(1))
    for m in _AFTER.finditer(text):
        out[ATTACK_NAMES.get(m.group(1).upper(), m.group(1).lower())] = float(m.group(2))
    return out


class _Collect(logging.Handler):
    """Keeps AutoAttack's per-attack accuracy lines and passes each on to `callback` as it is logged."""

    def __init__(self, callback=None):
        super().__init__(logging.DEBUG)
        self.callback, self.lines = callback, []

    def emit(self, record):
        msg = record.getMessage()
        if _AFTER.search(msg) or _INITIAL.search(msg):
            self.lines.append(msg)
            if self.callback is not None:
                self.callback(msg)


def autoattack(model, x, y, eps=8 / 255, num_classes=None, batch_size=256, seed=0, log_path=None,
               progress=None):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at L-inf `eps` on (x, y) on the model's device.
    The targeted attacks use min(9, num_classes - 1) target classes. `log_path` (optional) receives AutoAttack's
    own log, appended; `progress` (optional) is called with each per-attack accuracy line as it is logged.
    Returns (adversarial images shaped like x, breakdown as `parse_log` gives it). The model's mode,
    requires_grad flags and gradients are left as they were."""
    module = _autoattack_module()
    own_log = "log_path" in inspect.signature(module.AutoAttack).parameters  # fra31's git version
    aa_logger = logging.getLogger("auto-attack")  # pyautoattack logs through the logging module
    collect = _Collect(progress)
    handlers = [collect] + ([logging.FileHandler(log_path)] if log_path and not own_log else [])
    old_level = aa_logger.level
    for h in handlers:
        h.setLevel(logging.DEBUG)
        aa_logger.addHandler(h)
    aa_logger.setLevel(logging.DEBUG)
    try:
        with frozen(model):
            if num_classes is None:
                with torch.no_grad():
                    num_classes = model(x[:1]).shape[1]
            kw = {"log_path": log_path} if own_log else {}
            adversary = module.AutoAttack(model, norm="Linf", eps=float(eps), version="standard", device=x.device,
                                          seed=seed, **kw)
            adversary.verbose = True
            n_target = max(1, min(9, num_classes - 1))
            adversary.apgd_targeted.n_target_classes = n_target
            adversary.fab.n_target_classes = n_target
            run_params = inspect.signature(adversary.run_standard_evaluation).parameters
            kw = {"batch_size": batch_size} if "batch_size" in run_params else {"bs": batch_size}
            out = adversary.run_standard_evaluation(x, y, **kw)
            if isinstance(out, tuple):  # pyautoattack returns (x_adv, y_adv); fra31's git version x_adv alone
                out = out[0]
    finally:
        for h in handlers:
            aa_logger.removeHandler(h)
            h.close()
        aa_logger.setLevel(old_level)
    text = "\n".join(collect.lines)
    if own_log and log_path:
        with open(log_path) as f:
            text = f.read().split("using standard version")[-1]  # this call's part of the appended log
    return out.detach(), parse_log(text)


def torchattacks_version() -> str | None:
    """The installed torchattacks version (the official code's AutoAttack), or None."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torchattacks")
    except PackageNotFoundError:
        return None


def autoattack_official(model, x, y, eps=8 / 255, seed=0, batch_size=256):
    """AutoAttack as the official PART code evaluates: torchattacks' AutoAttack(model, norm='Linf', eps=eps,
    version='standard') with torchattacks' other defaults (APGD-CE, APGD-T and FAB-T with 10 iterations each,
    Square with 5000 queries, n_classes=10), called on each batch of `batch_size` images as the official code
    calls it per test batch. The official code leaves the seed unset (torchattacks then seeds from the clock);
    here it is `seed`. Returns the adversarial images shaped like x, detached; the model's mode,
    requires_grad flags and gradients are left as they were. Raises ImportError (with the pip command) if
    torchattacks is not installed."""
    try:
        import torchattacks
    except ImportError:
        raise ImportError("the official AutoAttack needs torchattacks: pip install torchattacks==3.4.0") from None
    with frozen(model):
        adversary = torchattacks.AutoAttack(model, norm="Linf", eps=float(eps), version="standard", seed=seed)
        return torch.cat([adversary(x[i:i + batch_size], y[i:i + batch_size]).detach()
                          for i in range(0, x.shape[0], batch_size)])
