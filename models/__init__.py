"""Models: CIFAR ResNet-18 and WRN-34-10, a name-based builder, and a tolerant checkpoint loader."""
import torch

from .resnet import ResNet18
from .wideresnet import WideResNet

MODELS = ("resnet18", "wrn34-10")


def build_model(name: str, num_classes: int, width: int | None = None) -> torch.nn.Module:
    """Build a model by name. `width` (optional) shrinks it for quick CPU runs: ResNet-18's first-stage
    channels (standard 64) or the WRN's widen factor (standard 10)."""
    if name == "resnet18":
        return ResNet18(num_classes=num_classes, width=width or 64)
    if name == "wrn34-10":
        return WideResNet(depth=34, widen_factor=width or 10, num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")


class CheckpointMismatch(ValueError):
    """A checkpoint's keys or shapes do not match the model."""


def extract_state_dict(obj) -> dict:
    """The model weights inside a loaded checkpoint: ours ({'model': ...}), {'state_dict': ...}, or a bare
    state dict; a DataParallel/DDP `module.` prefix is stripped and the WRN's unused `sub_block1` dropped."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    out = {}
    for k, v in obj.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("sub_block1."):
            continue
        out[k] = v
    return out


def load_checkpoint(model: torch.nn.Module, path, obj=None) -> dict:
    """Load weights from `path` (or from `obj`, its content already loaded) into `model` (strict). Accepts our
    checkpoints and those of the TRADES, MART and official PART code. Raises CheckpointMismatch naming missing,
    unexpected and mis-shaped keys. Returns the loaded object (our checkpoints carry config, epoch and more)."""
    if obj is None:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = extract_state_dict(obj)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    not_tensors = [f"{k} ({type(state[k]).__name__})" for k in own if k in state and not torch.is_tensor(state[k])]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and torch.is_tensor(state[k]) and state[k].shape != own[k].shape]
    non_finite = [k for k in own if k in state and torch.is_tensor(state[k]) and state[k].is_floating_point()
                  and not bool(torch.isfinite(state[k]).all())]
    if missing or unexpected or not_tensors or shapes or non_finite:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = [f"{label}: {few(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("not tensors", not_tensors),
                  ("shape mismatches", shapes), ("non-finite values (NaN or inf) in", non_finite)) if keys]
        raise CheckpointMismatch(f"checkpoint {path} does not match the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return obj if isinstance(obj, dict) else {}


__all__ = ["ResNet18", "WideResNet", "build_model", "load_checkpoint", "extract_state_dict",
           "CheckpointMismatch", "MODELS"]
