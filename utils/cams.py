"""Class activation maps: which pixels the model's prediction rests on.

Each CAM method is one entry of `CAMS` and differs from the others in one thing only, the weight it gives
each activation (as in the grad-cam package's `get_cam_weights`). Two backends compute them: `grad-cam`
(the grad-cam package, the default) and `torch` (the same arithmetic on the model's device, no host copies;
tested to match grad-cam to 1e-4). Every CAM explains the model's predicted class on the given input.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from attacks import frozen


@dataclass(frozen=True)
class CamMethod:
    """weights(grads, act) -> weights broadcastable to act (B, C, h, w); the map is relu(sum_c weights * act)."""
    weights: Callable
    gradcam_class: str  # the grad-cam package's class for this method


CAMS = {
    "gradcam": CamMethod(lambda g, a: g.mean(dim=(2, 3), keepdim=True), "GradCAM"),
    "xgradcam": CamMethod(lambda g, a: (g * a).sum(dim=(2, 3), keepdim=True)
                          / (a.sum(dim=(2, 3), keepdim=True) + 1e-7), "XGradCAM"),
    "layercam": CamMethod(lambda g, a: g.clamp(min=0), "LayerCAM"),
}
CAM_BACKENDS = ("grad-cam", "torch")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DataParallel / DistributedDataParallel / torch.compile wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def find_target_layer(model: torch.nn.Module, layer: str | None = None) -> torch.nn.Module:
    """The layer whose output the CAM explains: `layer` (a dotted name) when given, else ResNet-18's
    `layer4` or the WideResNet's `block3`. Raises ValueError naming what to pass for other models."""
    model = unwrap(model)
    names = [layer] if layer else ["layer4", "block3"]
    modules = dict(model.named_modules())
    for name in names:
        if name in modules:
            return modules[name]
    if layer:
        raise ValueError(f"model {type(model).__name__} has no layer {layer!r} (--cam-layer); its top-level "
                         f"layers are {', '.join(n for n, _ in unwrap(model).named_children())}")
    raise ValueError(f"cannot find the CAM target layer of {type(model).__name__} (looked for 'layer4' and "
                     f"'block3'); pass target_layer='<dotted module name>' (cam_layer in the scripts), e.g. "
                     f"the last convolutional stage")


def check_target_layer(model: torch.nn.Module, layer: str | None, image_size) -> None:
    """Raise ValueError unless the CAM target layer (`find_target_layer`) gives a feature map (B, C, h, w) for
    an input of `image_size` (an int, or (H, W)): one forward pass of one zero image in eval mode without
    gradients. The model's weights, BatchNorm statistics and train/eval mode are left as they were."""
    net = unwrap(model)
    target = find_target_layer(net, layer)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = next(net.parameters())
    store = {}
    handle = target.register_forward_hook(lambda m, i, o: store.__setitem__("out", o))
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training
    out = store.get("out")
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        what = f"gives {tuple(out.shape)}" if isinstance(out, torch.Tensor) else \
            ("is not run by the model's forward pass" if out is None else f"gives a {type(out).__name__}")
        raise ValueError(f"the CAM layer {layer or type(target).__name__!r} {what}, not a feature map (B, C, h, w); "
                         f"--cam-layer must name a convolutional stage, e.g. "
                         f"{'layer4' if hasattr(net, 'layer4') else 'block3'}")


def _check(cam: str, backend: str = "torch") -> None:
    if cam not in CAMS:
        raise ValueError(f"unknown CAM method {cam!r}; choose from {', '.join(CAMS)}")
    if backend not in CAM_BACKENDS:
        raise ValueError(f"unknown CAM backend {backend!r}; choose from {', '.join(CAM_BACKENDS)}")


def layer_cams(model: torch.nn.Module, x: torch.Tensor, cam: str = "gradcam",
               target_layer: str | None = None) -> torch.Tensor:
    """relu(sum_c weights * act) at the target layer's resolution: (B, h, w) float32 on x's device, not scaled.
    The model is frozen meanwhile (attacks.frozen) and no hook is left behind."""
    _check(cam)
    net = unwrap(model)
    layer = find_target_layer(net, target_layer)
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with frozen(net), torch.enable_grad():
            logits = net(x.detach().requires_grad_(True))  # gradients reach the activations through the input
            act = store["a"]
            target = logits.detach().argmax(1)
            grads, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), act)
    finally:
        handle.remove()
    act, grads = act.detach().float(), grads.float()
    return (CAMS[cam].weights(grads, act) * act).sum(1).clamp(min=0)


def _minmax(m: torch.Tensor) -> torch.Tensor:
    """grad-cam's scale_cam_image: per map, subtract the min and divide by (1e-7 + max)."""
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))


def _gradcam_package(net, layer, x, cam):
    import pytorch_grad_cam  # imported only when grad-cam is the backend
    with frozen(net), getattr(pytorch_grad_cam, CAMS[cam].gradcam_class)(model=net, target_layers=[layer]) as ext:
        ext.compute_input_gradient = True  # read in forward(); the subclasses do not pass it on
        maps = ext(input_tensor=x.detach(), targets=None)
    return torch.from_numpy(np.asarray(maps, dtype=np.float32)).to(x.device)


def compute_cam(model: torch.nn.Module, x: torch.Tensor, cam: str = "gradcam",
                target_layer: str | None = None, backend: str = "grad-cam") -> torch.Tensor:
    """CAM maps (B, H, W) in [0, 1] on x's device, one per image of x (B, 3, H, W), for the model's predicted
    class on x: relu, per-map min-max scaling, bilinear resize to H x W, min-max scaling again (grad-cam's
    post-processing, which the `torch` backend reproduces). The model is left as `attacks.frozen` guarantees,
    with no hooks registered."""
    _check(cam, backend)
    net = unwrap(model)
    if backend == "grad-cam":
        return _gradcam_package(net, find_target_layer(net, target_layer), x, cam)
    maps = _minmax(layer_cams(net, x, cam, target_layer))
    maps = torch.nn.functional.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]
    return _minmax(maps.clamp(min=0))
