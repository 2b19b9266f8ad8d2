"""Class activation maps (grad-cam package) to per-element L-inf budgets: the heart of PART.

`epsilon_mask(model, x, eps, eps_low)` returns a (B, 3, H, W) tensor holding exactly eps or eps_low.
Two rules turn a CAM into a mask:
- `official`: step by step what the official PART code does. v = cam ** 2, coloured by matplotlib's `jet`
  (its 256-entry table, built here from jet's segment data), the 3*H*W RGB values of each image
  standardised by their own mean and population std, and each channel of each pixel keeps eps where its
  standardised value exceeds 1. The mask differs per channel and is not monotonic in the CAM: jet turns
  the CAM peak dark red (0.5 in the red channel only), so the most important pixels often get eps_low.
- `monotonic`: the method as the paper's text describes it. One importance value per pixel (the CAM),
  standardised per image; pixels more than one standard deviation above the mean keep eps in all three
  channels, the rest get eps_low.
"""
import numpy as np
import torch

CAMS = ("gradcam", "xgradcam", "layercam")
RULES = ("official", "monotonic")

# matplotlib's `jet` as segment data (x, y) per channel; the 256-entry table is the linear interpolation
# of each channel at i / 255, exactly as matplotlib's LinearSegmentedColormap builds it.
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def jet_table(n: int = 256) -> np.ndarray:
    """matplotlib's jet colour map as an (n, 3) float64 RGB table in [0, 1]."""
    xs = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(xs, *zip(*_JET_SEGMENTS[c])) for c in ("red", "green", "blue")], axis=1)


_JET = torch.from_numpy(jet_table())


def jet(v: torch.Tensor) -> torch.Tensor:
    """Colour v (any shape, values in [0, 1]) as matplotlib's cm.get_cmap('jet')(v)[..., :3] does:
    index min(floor(v * 256), 255) into the table, NaN as black. Returns v.shape + (3,), float64, on v's device."""
    v = v.double()
    idx = (v.nan_to_num(0.0) * 256).floor().clamp_(0, 255).long()
    return _JET.to(v.device)[idx].masked_fill_(v.isnan()[..., None], 0.0)


def _standardise(a: torch.Tensor, dims) -> torch.Tensor:
    """(a - mean) / population std over `dims`; zero where the std is zero (a constant map)."""
    mean = a.mean(dim=dims, keepdim=True)
    std = a.std(dim=dims, keepdim=True, unbiased=False)
    return torch.where(std > 0, (a - mean) / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(a))


def mask_from_cam(cam: torch.Tensor, eps: float, eps_low: float, rule: str = "official") -> torch.Tensor:
    """Per-element budgets from CAM maps. cam: (B, H, W) in [0, 1]. Returns (B, 3, H, W) float32 on cam's
    device with every value exactly eps or eps_low (see the module docstring for the rules)."""
    if rule == "official":
        rgb = jet(cam.double() ** 2)  # (B, H, W, 3)
        z = _standardise(rgb, dims=(1, 2, 3)).permute(0, 3, 1, 2)
    elif rule == "monotonic":
        z = _standardise(cam.double(), dims=(1, 2))[:, None].expand(-1, 3, -1, -1)
    else:
        raise ValueError(f"unknown mask rule {rule!r}; choose from {', '.join(RULES)}")
    hi = torch.tensor(eps, dtype=torch.float32, device=cam.device)
    lo = torch.tensor(eps_low, dtype=torch.float32, device=cam.device)
    return torch.where(z > 1, hi, lo).contiguous()


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
        raise ValueError(f"model {type(model).__name__} has no layer {layer!r}")
    raise ValueError(f"cannot find the CAM target layer of {type(model).__name__} (looked for 'layer4' and "
                     f"'block3'); pass target_layer='<dotted module name>' (cam_layer in the scripts), e.g. "
                     f"the last convolutional stage")


def _cam_class(cam: str):
    from pytorch_grad_cam import GradCAM, LayerCAM, XGradCAM  # imported only when grad-cam is the backend
    return {"gradcam": GradCAM, "xgradcam": XGradCAM, "layercam": LayerCAM}[cam]


CAM_BACKENDS = ("grad-cam", "torch")


def _torch_cam(net: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, cam: str) -> torch.Tensor:
    """GradCAM / XGradCAM / LayerCAM in torch on x's device, computed as the grad-cam package computes them
    (predicted-class target, ReLU, per-image min-max scaling before and after a bilinear resize), without
    copies to the host or per-image loops. Returns (B, H, W) in [0, 1]."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            xin = x.detach().requires_grad_(True)
            logits = net(xin)
            act = store["a"]
            target = logits.detach().argmax(1)
            grads, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), act)
    finally:
        handle.remove()
    act, grads = act.detach().float(), grads.float()
    if cam == "gradcam":
        maps = (grads.mean(dim=(2, 3), keepdim=True) * act).sum(1)
    elif cam == "xgradcam":
        weights = (grads * act).sum(dim=(2, 3), keepdim=True) / (act.sum(dim=(2, 3), keepdim=True) + 1e-7)
        maps = (weights * act).sum(1)
    else:
        maps = (grads.clamp(min=0) * act).sum(1)

    def scale(m):
        m = m - m.amin(dim=(1, 2), keepdim=True)
        return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))

    maps = scale(maps.clamp(min=0))
    maps = torch.nn.functional.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]
    return scale(maps.clamp(min=0))


def compute_cam(model: torch.nn.Module, x: torch.Tensor, cam: str = "gradcam",
                target_layer: str | None = None, backend: str = "grad-cam") -> torch.Tensor:
    """CAM maps (B, H, W) in [0, 1] on x's device, one map per image for the model's predicted class on x.
    backend 'grad-cam' uses the grad-cam package; 'torch' computes the same maps on x's device (tested to
    match grad-cam to 1e-4). The model is left in the mode it was in, its BN statistics, parameter gradients
    and requires_grad flags untouched, and no hooks registered."""
    net = unwrap(model)
    layer = find_target_layer(net, target_layer)
    if cam not in CAMS:
        raise ValueError(f"unknown CAM method {cam!r}; choose from {', '.join(CAMS)}")
    if backend not in CAM_BACKENDS:
        raise ValueError(f"unknown CAM backend {backend!r}; choose from {', '.join(CAM_BACKENDS)}")
    was_training = net.training
    params = list(net.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    for p in params:
        p.requires_grad_(False)  # gradients flow to the activations through the input, never to weights
    try:
        net.eval()
        if backend == "torch":
            return _torch_cam(net, layer, x, cam)
        with _cam_class(cam)(model=net, target_layers=[layer]) as extractor:
            extractor.compute_input_gradient = True  # read in forward(); the subclasses do not pass it on
            maps = extractor(input_tensor=x.detach(), targets=None)
        return torch.from_numpy(np.asarray(maps, dtype=np.float32)).to(x.device)
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad  # grad-cam calls model.zero_grad(); put back whatever was there
        net.train(was_training)


def epsilon_mask(model: torch.nn.Module, x: torch.Tensor, eps: float, eps_low: float, cam: str = "gradcam",
                 rule: str = "official", target_layer: str | None = None, backend: str = "grad-cam") -> torch.Tensor:
    """Per-element L-inf budgets for x (B, 3, H, W): a tensor shaped like x, on x's device, whose values are
    exactly eps or eps_low. Same guarantees on the model as `compute_cam`."""
    if rule not in RULES:
        raise ValueError(f"unknown mask rule {rule!r}; choose from {', '.join(RULES)}")
    return mask_from_cam(compute_cam(model, x, cam, target_layer, backend), eps, eps_low, rule)


def save_mask_figure(path: str, x: torch.Tensor, cam: torch.Tensor, mask: torch.Tensor, eps: float,
                     scale: int = 4) -> None:
    """Save a PNG grid (the paper's Figure 2 in small): row 1 the images, row 2 their CAM heat maps (jet),
    row 3 their masks shown as RGB (a channel is bright where it keeps eps, dark where it gets eps_low).
    x: (B, 3, H, W) in [0, 1]; cam: (B, H, W); mask: (B, 3, H, W)."""
    from torchvision.utils import make_grid, save_image
    x = x.detach().float().cpu()
    heat = jet(cam.detach().cpu()).permute(0, 3, 1, 2).float()
    m = (mask.detach().cpu() >= eps).float()
    rows = torch.cat([x, heat, m], 0)
    rows = torch.nn.functional.interpolate(rows, scale_factor=scale, mode="nearest")
    save_image(make_grid(rows, nrow=x.shape[0], padding=2, pad_value=1.0), path)
