"""How a CAM becomes per-element L-inf budgets: the rule a researcher edits is here, alone.

A rule maps CAMs (B, H, W) to standardised scores z (B, 3, H, W); an element keeps eps where z > 1 and gets
eps_low elsewhere (`mask_from_cam`). The rules, one entry each in `RULES`:
- `official`: step by step what the official PART code does. v = cam ** 2, coloured by matplotlib's `jet`
  (its 256-entry table, built here from jet's segment data), the 3*H*W RGB values of each image
  standardised by their own mean and population std. The mask differs per channel and is not monotonic in
  the CAM: jet turns the CAM peak dark red (0.5 in the red channel only), so the most important pixels often
  get eps_low. Everything stays in floating point: no 8-bit image conversion happens anywhere on this path.
- `monotonic`: the method as the paper's text describes it. One importance value per pixel (the CAM),
  standardised per image; pixels more than one standard deviation above the mean keep eps in all three
  channels, the rest get eps_low.
"""
import numpy as np
import torch

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
_DEVICE_COPIES = {}


def device_copy(t: torch.Tensor, device) -> torch.Tensor:
    """A module's constant table `t` on `device`, copied there on the first call only (a copy per batch would
    synchronise the GPU); later calls return that same tensor."""
    key = (id(t), str(device))
    if key not in _DEVICE_COPIES:
        _DEVICE_COPIES[key] = t.to(device)
    return _DEVICE_COPIES[key]


def jet(v: torch.Tensor) -> torch.Tensor:
    """Colour v (any shape) as matplotlib's cm.get_cmap('jet')(v)[..., :3] does: index min(floor(v * 256), 255)
    into the table (values above 1 take the last colour, below 0 the first), NaN as black.
    Returns v.shape + (3,), float64, on v's device."""
    v = v.double()
    idx = (v.nan_to_num(0.0) * 256).floor().clamp_(0, 255).long()
    table = device_copy(_JET, v.device)
    return table[idx].masked_fill_(v.isnan()[..., None], 0.0)


def standardise(a: torch.Tensor, dims) -> torch.Tensor:
    """(a - mean) / population std over `dims`; zero where the std is zero (a constant map)."""
    mean = a.mean(dim=dims, keepdim=True)
    std = a.std(dim=dims, keepdim=True, unbiased=False)
    return torch.where(std > 0, (a - mean) / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(a))


def official(cam: torch.Tensor) -> torch.Tensor:
    rgb = jet(cam.double() ** 2)  # (B, H, W, 3)
    return standardise(rgb, dims=(1, 2, 3)).permute(0, 3, 1, 2)


def monotonic(cam: torch.Tensor) -> torch.Tensor:
    return standardise(cam.double(), dims=(1, 2))[:, None].expand(-1, 3, -1, -1)


RULES = {"official": official, "monotonic": monotonic}


def mask_from_cam(cam: torch.Tensor, eps: float, eps_low: float, rule: str = "official") -> torch.Tensor:
    """Per-element budgets from CAM maps. cam: (B, H, W), float. Returns (B, 3, H, W) float32 on cam's device
    with every value exactly eps or eps_low: eps where the rule's standardised score exceeds 1."""
    if rule not in RULES:
        raise ValueError(f"unknown mask rule {rule!r}; choose from {', '.join(RULES)}")
    return torch.where(RULES[rule](cam) > 1, float(eps), float(eps_low)).float().contiguous()
