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
    """A checkpoint's keys or shapes do not match the model, or it holds what no trained model holds."""


def extract_state_dict(obj) -> dict:
    """The model weights inside a loaded checkpoint: ours ({'model': ...}), {'state_dict': ...}, or a bare
    state dict; a DataParallel/DDP `module.` prefix is stripped and the WRN's unused `sub_block1` dropped. Raises
    CheckpointMismatch when it has such an entry but none of them is a dict, or the weights are no dict of names."""
    keys = [k for k in ("model", "state_dict", "model_state_dict") if isinstance(obj, dict) and k in obj]
    if keys and not any(isinstance(obj[k], dict) for k in keys):
        raise CheckpointMismatch(f"its {keys[0]!r} entry is a {type(obj[keys[0]]).__name__}, not a state dict")
    for key in keys:
        if isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointMismatch(f"it holds a {type(obj).__name__}, not a state dict")
    odd = [repr(k) for k in obj if not isinstance(k, str)]
    if odd:
        raise CheckpointMismatch(f"its state dict has keys that are not parameter names: {', '.join(odd[:5])}")
    out = {}
    for k, v in obj.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("sub_block1."):
            continue
        out[k] = v
    return out


def _damage(state: dict, own: dict) -> list:
    """What no trained model holds, as (label, keys) pairs: values that are not dense tensors, tensors of another
    kind than the model's (integer where it has floats, ...), non-finite floats, negative BatchNorm variances."""
    def kind(t):
        return "complex" if t.is_complex() else "float" if t.is_floating_point() else "bool" if t.dtype == torch.bool \
            else "integer"
    shared = [k for k in own if k in state]
    not_tensors = [f"{k} ({type(state[k]).__name__})" for k in shared
                   if not torch.is_tensor(state[k]) or state[k].layout != torch.strided or state[k].is_meta]
    dense = [k for k in shared if torch.is_tensor(state[k]) and state[k].layout == torch.strided and not state[k].is_meta]
    kinds = [f"{k} ({kind(state[k])}, the model's {kind(own[k])})" for k in dense if kind(state[k]) != kind(own[k])]
    floats = [k for k in dense if state[k].is_floating_point()]
    non_finite = [k for k in floats if not bool(torch.isfinite(state[k]).all())]
    negative = [k for k in floats if k.endswith("running_var") and bool((state[k] < 0).any())]
    return [(label, keys) for label, keys in (("not dense tensors", not_tensors), ("other dtypes", kinds),
                                              ("non-finite values (NaN or inf) in", non_finite),
                                              ("negative variances in", negative)) if keys]


def load_checkpoint(model: torch.nn.Module, path, obj=None) -> dict:
    """Load weights from `path` (or from `obj`, its content already loaded) into `model` (strict). Accepts our
    checkpoints and those of the TRADES, MART and official PART code. Raises CheckpointMismatch naming missing,
    unexpected and mis-shaped keys, or the damage no trained model holds (`_damage`); the model is then untouched. Returns the loaded object (our checkpoints carry config, epoch and more)."""
    if obj is None:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    try:
        state = extract_state_dict(obj)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(f"checkpoint {path} is damaged: {e}") from None
    own = model.state_dict()

    def few(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    damage = _damage(state, own)
    if damage:
        raise CheckpointMismatch(f"checkpoint {path} is damaged: " + "; ".join(f"{label}: {few(keys)}"
                                                                             for label, keys in damage))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {few(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
        raise CheckpointMismatch(f"checkpoint {path} does not match the model; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return obj if isinstance(obj, dict) else {}


__all__ = ["ResNet18", "WideResNet", "build_model", "load_checkpoint", "extract_state_dict",
           "CheckpointMismatch", "MODELS"]
