"""Where the per-element budget of a training batch comes from after warm-up: one entry per source.

Every source answers `budget(model, x, i)` for batch i of the epoch, a tensor shaped like x (B, 3, H, W) on
x's device. The training loop does not know which source it called. The sources (`MASK_SOURCES`):
- `cam`: the CAM mask of the very batch being attacked, computed with the current model (PART as we run it).
- `official`: the official code's pipeline. Every `mask_refresh` epochs a separate pass over a freshly
  shuffled and augmented epoch computes the masks (torchcam-style CAM, bicubic resize, `official` rule), and
  training batch i takes the masks of pass-batch i, so a mask lands on another image.
- `permuted`: the control. The batch's own `cam` masks, handed to the batch's images in a seeded derangement:
  the same budgets on the wrong pixels. A batch of one image (the last of an epoch) takes the mask of a
  seeded pick among the previous batch's images; a batch size of one is refused.
- `regions`: the paper's Figure 1. Four fixed budgets, one per image quadrant; no CAM.
None of them draws from the global RNG or the data order's generator, and the CAM passes run the model
frozen, so with eps_low == eps every CAM source trains exactly like the plain method.
"""
import functools

import numpy as np
import torch

from .cams import compute_cam, layer_cams
from .errors import UsageError
from .batches import batch_sizes, epoch_generator, epoch_permutation, seed64, train_batches
from .data import train_size
from .mask_rules import device_copy, mask_from_cam


def epsilon_mask(model: torch.nn.Module, x: torch.Tensor, eps: float, eps_low: float, cam: str = "gradcam",
                 rule: str = "official", target_layer: str | None = None, backend: str = "grad-cam") -> torch.Tensor:
    """Per-element L-inf budgets for x (B, 3, H, W): a tensor shaped like x, on x's device, whose values are
    exactly eps or eps_low (the CAM of each image under `rule`). The model is left as `compute_cam` says."""
    return mask_from_cam(compute_cam(model, x, cam, target_layer, backend), eps, eps_low, rule)


def source_generator(seed: int, epoch: int, rank: int, stream: int) -> torch.Generator:
    """A CPU generator of its own for a mask source (stream 1: the official pass's order and augmentation;
    stream 2: the permuted control's derangements), disjoint from the data order's `epoch_generator`."""
    return torch.Generator().manual_seed(seed64((int(seed) * 100003 + int(epoch)) * 1009 + 97 * int(stream) + int(rank) + 1))


# ----------------------------------------------------------------------------------------------------
# the official pipeline's CAM post-processing
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def pil_bicubic_operator(h: int, w: int, out_h: int, out_w: int) -> torch.Tensor:
    """PIL's bicubic resize of a float ('F' mode) h x w image to out_h x out_w, as the (out_h*out_w, h*w)
    float64 matrix it is (the resize is linear; its columns are PIL's resize of the h*w unit images)."""
    from PIL import Image
    cols = []
    for k in range(h * w):
        unit = np.zeros(h * w, dtype=np.float32)
        unit[k] = 1.0
        im = Image.fromarray(unit.reshape(h, w)).resize((out_w, out_h), Image.BICUBIC)
        cols.append(np.asarray(im, dtype=np.float64).reshape(-1))
    return torch.from_numpy(np.stack(cols, axis=1))


def official_postprocess(raw: torch.Tensor, size: tuple) -> torch.Tensor:
    """The official code's CAM post-processing (torchcam 0.3.2, torchvision 0.14): per map, (m - min) / max(m - min)
    with no guard (a constant map becomes NaN, as torchcam's division by zero does), then PIL's bicubic resize in
    float ('F') mode to `size` (H, W), neither clipped nor scaled again. raw: (B, h, w) relu'd layer maps.
    Returns (B, H, W) float32; values may overshoot [0, 1] slightly. No 8-bit image conversion happens."""
    m = raw.double()
    m = m - m.amin(dim=(1, 2), keepdim=True)
    m = m / m.amax(dim=(1, 2), keepdim=True)
    b, h, w = m.shape
    op = device_copy(pil_bicubic_operator(h, w, *size), raw.device)
    return (m.reshape(b, h * w) @ op.T).reshape(b, *size).float()


def official_cam(model: torch.nn.Module, x: torch.Tensor, cam: str = "gradcam",
                 target_layer: str | None = None) -> torch.Tensor:
    """The CAM as the official code hands it to its mask rule: `official_postprocess` of the layer's map.
    (B, H, W) float32 on x's device."""
    return official_postprocess(layer_cams(model, x, cam, target_layer), tuple(x.shape[-2:]))


# ----------------------------------------------------------------------------------------------------
# the sources
# ----------------------------------------------------------------------------------------------------
class MaskSource:
    """Base: a source reads its settings from the run's config; `keys` names the config keys it reads."""
    keys: tuple = ()
    uses_cam = True

    def __init__(self, cfg: dict, data=None, rank: int = 0, world: int = 1):
        self.cfg, self.data, self.rank, self.world = cfg, data, rank, world
        self.eps, self.low = cfg["epsilon"], cfg["low_epsilon"]

    def start_epoch(self, model: torch.nn.Module, epoch: int, log=None) -> None:
        """Called before the first batch of every masked epoch."""

    def own_masks(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The budget this source derives from x itself (what `mask.png` and a mask-aware attack show)."""
        return epsilon_mask(model, x, self.eps, self.low, self.cfg["cam"], self.cfg["mask_rule"],
                            self.cfg["cam_layer"], self.cfg["cam_backend"])

    def budget(self, model: torch.nn.Module, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.own_masks(model, x)

    def preview(self, model: torch.nn.Module, x: torch.Tensor):
        """(CAM maps (B, H, W) or None, budgets shaped like x) for the figure, as training would use them."""
        cam = compute_cam(model, x, self.cfg["cam"], self.cfg["cam_layer"], self.cfg["cam_backend"])
        return cam, mask_from_cam(cam, self.eps, self.low, self.cfg["mask_rule"])

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CamSource(MaskSource):
    keys = ("low_epsilon", "cam", "mask_rule", "cam_layer", "cam_backend")


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) with no fixed point (the identity when n == 1), from `generator`."""
    if n < 2:
        return torch.arange(n)
    while True:  # about e tries on average
        p = torch.randperm(n, generator=generator)
        if not bool((p == torch.arange(n)).any()):
            return p


class PermutedSource(MaskSource):
    """Every image gets the mask of another image: within its batch (a derangement), or, in a batch of one
    image, from the previous batch of the epoch (a seeded pick). Refuses (UsageError) a run that trains with
    masks and has fewer than two images per batch or per epoch on a process, where no other image exists."""
    keys = CamSource.keys

    def __init__(self, cfg, data=None, rank=0, world=1):
        super().__init__(cfg, data, rank, world)
        if cfg.get("mask") and cfg.get("epochs", 0) > cfg.get("warm_up", 0):  # a run that trains with masks
            where = f" per process ({world} processes)" if world > 1 else ""
            why = "with one, an image could only get its own mask, and the control would not be one"
            if cfg["batch_size"] // world < 2:
                raise UsageError(f"--mask-source permuted needs at least 2 images per batch{where} (--batch-size "
                                 f"{cfg['batch_size']}): {why}")
            if data is not None and train_size(data, cfg["n_train"]) // world < 2:
                raise UsageError(f"--mask-source permuted needs at least 2 training images{where} (--n-train "
                                 f"{cfg['n_train']}): {why}")
        self.previous = None

    def start_epoch(self, model, epoch, log=None):
        self.generator = source_generator(self.cfg["seed"], epoch, self.rank, stream=2)
        self.previous = None

    def budget(self, model, x, i):
        if x.shape[0] == 1:  # the last batch of an epoch; the first one holds at least two images
            pick = torch.randint(self.previous.shape[0], (1,), generator=self.generator)
            return self.previous[pick.to(x.device)]
        own = self.own_masks(model, x)
        self.previous = own
        return own[derangement(x.shape[0], self.generator).to(x.device)]

    def preview(self, model, x):
        cam, masks = super().preview(model, x)
        return cam, masks[derangement(x.shape[0], torch.Generator().manual_seed(0)).to(x.device)]


class OfficialSource(MaskSource):
    keys = ("low_epsilon", "cam", "cam_layer", "mask_refresh")

    def __init__(self, cfg, data=None, rank=0, world=1):
        super().__init__(cfg, data, rank, world)
        self.masks, self.pass_epoch, self.own_share = None, None, None

    def own_masks(self, model, x):
        return mask_from_cam(official_cam(model, x, self.cfg["cam"], self.cfg["cam_layer"]), self.eps, self.low,
                             "official")

    def preview(self, model, x):
        cam = official_cam(model, x, self.cfg["cam"], self.cfg["cam_layer"])
        return cam.clamp(0, 1).nan_to_num(0.0), mask_from_cam(cam, self.eps, self.low, "official")

    def pass_due(self, epoch: int) -> bool:
        """The official schedule: a pass before the first masked epoch, then before masked epoch k whenever
        k % mask_refresh == 0 (its `--save-weights`)."""
        k = epoch - self.cfg["warm_up"]
        return k == 1 or k % self.cfg["mask_refresh"] == 0

    def start_epoch(self, model, epoch, log=None):
        if self.pass_due(epoch):
            self.compute_pass(model, epoch)
            if log:
                n = sum(m.shape[0] for m in self.masks)
                log.info("official mask pass for epoch %d: %d masks from a separately shuffled and augmented pass",
                         epoch, n)
        elif self.masks is None:  # resumed between passes without stored masks (a torchrun rank other than 0)
            due = next(e for e in range(epoch, self.cfg["warm_up"], -1) if self.pass_due(e))
            if log:
                log.warning("the official masks of epoch %d are not in the checkpoint on this process: "
                            "recomputed with the current model", due)
            self.compute_pass(model, due)
        # the share of this epoch's training slots whose mask was computed on the very same image
        c = self.cfg
        n = train_size(self.data, c["n_train"])
        pass_order = epoch_permutation(n, source_generator(c["seed"], self.pass_epoch, 0, stream=1), self.rank, self.world)
        train_order = epoch_permutation(n, epoch_generator(c["seed"], epoch), self.rank, self.world)
        hits = int((pass_order == train_order).sum())
        self.own_share = hits / max(pass_order.numel(), 1)
        if log:
            log.info("official masks in epoch %d: %d of %d land on their own image", epoch, hits, pass_order.numel())

    def compute_pass(self, model, epoch):
        c = self.cfg
        gen = source_generator(c["seed"], epoch, 0, stream=1)
        eps32 = float(torch.tensor(self.eps, dtype=torch.float32))
        self.masks = [self.own_masks(model, x) == eps32
                      for x, _ in train_batches(self.data, c["batch_size"], gen, self.rank, self.world, c["n_train"])]
        self.pass_epoch = epoch

    def budget(self, model, x, i):
        m = self.masks[i]
        if m.shape != x.shape:
            raise RuntimeError(f"official mask of batch {i} has shape {tuple(m.shape)}, the batch {tuple(x.shape)}")
        return torch.where(m, self.eps, self.low).float()

    def state_dict(self):
        if self.masks is None or self.cfg["mask_refresh"] == 1:  # a refresh of 1 recomputes them every epoch
            return {}
        return {"pass_epoch": self.pass_epoch, "shapes": [list(m.shape) for m in self.masks],
                "bits": [torch.from_numpy(np.packbits(m.cpu().numpy().reshape(-1))) for m in self.masks]}

    def load_state_dict(self, state):
        """Restore the masks `state_dict` saved. Raises ValueError unless they are one per batch of this run, of
        its batches' shapes, from a pass of a masked epoch."""
        if not state or self.rank != 0:  # the checkpoint holds rank 0's masks; other ranks recompute theirs
            return
        c = self.cfg
        n = train_size(self.data, c["n_train"]) // self.world  # this rank's images per epoch (epoch_permutation)
        expected = [[b, *self.data.x_train.shape[1:]] for b in batch_sizes(n, c["batch_size"] // self.world)]
        shapes, bits, epoch = state["shapes"], state["bits"], state["pass_epoch"]
        if [list(s) for s in shapes] != expected or len(bits) != len(shapes):
            raise ValueError(f"{len(shapes)} stored masks of shapes {shapes[:2]}..., where this run's "
                             f"{len(expected)} batches need {expected[:2]}...")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= c["warm_up"]:
            raise ValueError(f"the stored masks' pass epoch {epoch!r} is no masked epoch")
        device = self.data.x_train.device
        masks = []
        for b, s in zip(bits, shapes):
            flat = np.unpackbits(b.numpy())
            if flat.size < int(np.prod(s)) or flat.size >= int(np.prod(s)) + 8:
                raise ValueError(f"a stored mask holds {flat.size} bits for a shape of {int(np.prod(s))}")
            masks.append(torch.from_numpy(flat[:int(np.prod(s))].astype(bool)).reshape(s).to(device))
        self.masks, self.pass_epoch = masks, epoch


class RegionSource(MaskSource):
    keys = ("region_eps",)
    uses_cam = False

    def own_masks(self, model, x):
        return region_budget(x, self.cfg["region_eps"])

    def preview(self, model, x):
        return None, self.own_masks(model, x)


def region_budget(x: torch.Tensor, region_eps) -> torch.Tensor:
    """Budgets shaped like x from four values (ul, ur, br, bl), one per quadrant. The upper half is rows
    [0, H // 2) and the left half columns [0, W // 2), so an odd size gives the extra row to the lower and the
    extra column to the right quadrants. Returns a float32 view expanded to x's shape."""
    ul, ur, br, bl = (float(v) for v in region_eps)
    h, w = x.shape[-2:]
    top = torch.arange(h, device=x.device)[:, None] < h // 2
    left = torch.arange(w, device=x.device)[None, :] < w // 2
    grid = torch.where(top, torch.where(left, ul, ur), torch.where(left, bl, br)).float()
    return grid.expand(x.shape)


MASK_SOURCES = {"cam": CamSource, "official": OfficialSource, "permuted": PermutedSource, "regions": RegionSource}


def make_source(cfg: dict, data=None, rank: int = 0, world: int = 1) -> MaskSource:
    return MASK_SOURCES[cfg["mask_source"]](cfg, data, rank, world)


class BudgetStats:
    """Running budget statistics of an epoch's training attacks, kept on the device (no host sync per batch):
    the mean per-element budget (in units of 1/255) and the share of elements whose budget equals `epsilon`."""

    def __init__(self, epsilon: float, device):
        self.epsilon = epsilon
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.at_eps = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, eps, x: torch.Tensor) -> None:
        n = x.numel()
        self.count += n
        if isinstance(eps, torch.Tensor):
            e = eps.expand_as(x)
            self.total += e.sum(dtype=torch.float64)
            self.at_eps += (e == float(torch.tensor(self.epsilon, dtype=e.dtype))).sum()
        else:
            self.total += float(eps) * n
            self.at_eps += n * float(torch.tensor(eps, dtype=torch.float32) == torch.tensor(self.epsilon, dtype=torch.float32))

    def tensor(self) -> torch.Tensor:
        """[sum of budgets, elements at eps, elements] as float64 (to all-reduce across processes)."""
        return torch.stack([self.total, self.at_eps, torch.tensor(float(self.count), dtype=torch.float64,
                                                                  device=self.total.device)])

    @staticmethod
    def summary(t: torch.Tensor) -> dict:
        total, at_eps, count = t.tolist()
        return {"budget_mean": round(255 * total / max(count, 1), 4), "eps_share": round(at_eps / max(count, 1), 6)}
