"""Data sets as uint8 tensors (N, 3, H, W) with labels, and a batched iterator that augments on-device.

Every data set is loaded whole into memory (CIFAR-10 and SVHN are ~150-220 MB as uint8, TinyImageNet
~1.2 GB), so batches are cut from a resident tensor: no DataLoader workers, the same code on CPU and GPU,
and a shuffling order that is a pure function of (seed, epoch), which makes resume exact.
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import DataNotFound, UsageError

DATASETS = ("cifar10", "svhn", "tinyimagenet", "synthetic", "cifar10-npz")


@dataclass
class Dataset:
    """Images uint8 (N, 3, H, W), labels int64 (N,). `crop_padding` None means no random crop."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    crop_padding: int | None = None
    flip: bool = False
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "Dataset":
        for k in ("x_train", "y_train", "x_test", "y_test"):
            setattr(self, k, getattr(self, k).to(device))
        return self


def _hwc_to_chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(0, 3, 1, 2)))


# ----------------------------------------------------------------------------------------------------
# synthetic: a class-specific pattern pasted at a random place on low-contrast noise
# ----------------------------------------------------------------------------------------------------
def synthetic(n_train: int = 2000, n_test: int = 500, num_classes: int = 10, size: int = 32,
              pattern: int = 8, seed: int = 0) -> Dataset:
    """Deterministic, learnable data set. Each class owns a fixed saturated `pattern` x `pattern` colour
    pattern; an image is grey noise in [0.3, 0.7] with its class's pattern pasted at a uniformly random
    place. `extra['train_loc']` / `extra['test_loc']` hold each image's (row, col) of the pattern's
    top-left corner, and `extra['pattern']` the pattern size, so tests can check where a CAM looks."""
    g = np.random.default_rng(seed)
    patterns = (g.random((num_classes, 3, pattern, pattern)) > 0.5).astype(np.float32)

    def make(n):
        y = g.integers(0, num_classes, n)
        x = 0.3 + 0.4 * g.random((n, 3, size, size), dtype=np.float32)
        loc = g.integers(0, size - pattern + 1, (n, 2))
        for i in range(n):
            r, c = loc[i]
            x[i, :, r:r + pattern, c:c + pattern] = patterns[y[i]]
        return torch.from_numpy(np.round(x * 255).astype(np.uint8)), torch.from_numpy(y.astype(np.int64)), loc

    x_tr, y_tr, loc_tr = make(n_train)
    x_te, y_te, loc_te = make(n_test)
    return Dataset("synthetic", x_tr, y_tr, x_te, y_te, num_classes,
                   extra={"train_loc": loc_tr, "test_loc": loc_te, "pattern": pattern})


# ----------------------------------------------------------------------------------------------------
# real data sets
# ----------------------------------------------------------------------------------------------------
def _cifar10(root: str, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10
    try:
        tr = CIFAR10(root, train=True, download=download)
        te = CIFAR10(root, train=False, download=download)
    except RuntimeError as e:
        raise DataNotFound(
            f"CIFAR-10 not found in {os.path.abspath(root)} (looked for cifar-10-batches-py/). "
            f"Add --download to fetch it with torchvision, or point --data-dir at the folder holding it. ({e})") from None
    return Dataset("cifar10", _hwc_to_chw(tr.data), torch.tensor(tr.targets), _hwc_to_chw(te.data),
                   torch.tensor(te.targets), 10, crop_padding=4, flip=True)


def _svhn(root: str, download: bool) -> Dataset:
    from torchvision.datasets import SVHN
    try:
        tr = SVHN(root, split="train", download=download)
        te = SVHN(root, split="test", download=download)
    except RuntimeError as e:
        raise DataNotFound(
            f"SVHN not found in {os.path.abspath(root)} (looked for train_32x32.mat and test_32x32.mat). "
            f"Add --download to fetch it with torchvision, or point --data-dir at the folder holding it. ({e})") from None
    return Dataset("svhn", torch.from_numpy(tr.data), torch.from_numpy(tr.labels.astype(np.int64)),
                   torch.from_numpy(te.data), torch.from_numpy(te.labels.astype(np.int64)), 10)


def _read_images(paths) -> torch.Tensor:
    from PIL import Image
    out = np.empty((len(paths), 64, 64, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (64, 64):
                im = im.resize((64, 64))
            out[i] = np.asarray(im)
    return _hwc_to_chw(out)


def _tinyimagenet(root: str) -> Dataset:
    base = os.path.join(root, "tiny-imagenet-200")
    if not os.path.isdir(os.path.join(base, "train")) or not os.path.isfile(
            os.path.join(base, "val", "val_annotations.txt")):
        raise DataNotFound(
            f"TinyImageNet-200 not found: expected {os.path.abspath(base)}/ with train/<wnid>/images and "
            f"val/images plus val/val_annotations.txt. Download http://cs231n.stanford.edu/tiny-imagenet-200.zip "
            f"and unzip it into {os.path.abspath(root)}/ (no reorganising needed).")
    cache = os.path.join(base, "part_cache_uint8.pt")
    if os.path.isfile(cache):
        d = torch.load(cache, weights_only=True)
        return Dataset("tinyimagenet", d["x_train"], d["y_train"], d["x_test"], d["y_test"], 200,
                       crop_padding=4, flip=True)
    wnids_file = os.path.join(base, "wnids.txt")
    if os.path.isfile(wnids_file):
        with open(wnids_file) as f:
            wnids = [w.strip() for w in f if w.strip()]
    else:
        wnids = sorted(os.listdir(os.path.join(base, "train")))
    index = {w: i for i, w in enumerate(sorted(wnids))}
    train_paths, train_labels = [], []
    for w in sorted(wnids):
        d = os.path.join(base, "train", w, "images")
        for fn in sorted(os.listdir(d)):
            train_paths.append(os.path.join(d, fn))
            train_labels.append(index[w])
    val_paths, val_labels = [], []
    with open(os.path.join(base, "val", "val_annotations.txt")) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 2:
                val_paths.append(os.path.join(base, "val", "images", parts[0]))
                val_labels.append(index[parts[1]])
    d = {"x_train": _read_images(train_paths), "y_train": torch.tensor(train_labels),
         "x_test": _read_images(val_paths), "y_test": torch.tensor(val_labels)}
    try:
        torch.save(d, cache + ".tmp")
        os.replace(cache + ".tmp", cache)
    except OSError:
        pass  # a read-only data folder only costs the decode next time
    return Dataset("tinyimagenet", d["x_train"], d["y_train"], d["x_test"], d["y_test"], len(wnids),
                   crop_padding=4, flip=True)


def _cifar10_npz(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise DataNotFound(
            f"cifar10-npz needs --data-dir to be a .npz file with x_train, y_train, x_test, y_test; "
            f"{os.path.abspath(path)} is not a file.")
    with np.load(path) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
        if missing:
            raise UsageError(f"{path} lacks the keys {missing} (expects x_train, y_train, x_test, y_test)")
        x_tr, y_tr, x_te, y_te = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if x_tr.ndim != 4 or x_tr.shape[-1] != 3:
        raise UsageError(f"{path}: x_train must be uint8 (N, H, W, 3), got shape {x_tr.shape}")
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset("cifar10-npz", _hwc_to_chw(x_tr), torch.from_numpy(y_tr.astype(np.int64)),
                   _hwc_to_chw(x_te), torch.from_numpy(y_te.astype(np.int64)), max(num_classes, 10),
                   crop_padding=4, flip=True)


def load_dataset(name: str, data_dir: str = "data", download: bool = False) -> Dataset:
    """Load a data set by name (see DATASETS). For `cifar10-npz`, `data_dir` is the .npz file.
    Raises DataNotFound (naming the folder and how to get the files) or UsageError."""
    if name == "synthetic":
        return synthetic()
    if name == "cifar10":
        return _cifar10(data_dir, download)
    if name == "svhn":
        return _svhn(data_dir, download)
    if name == "tinyimagenet":
        return _tinyimagenet(data_dir)
    if name == "cifar10-npz":
        return _cifar10_npz(data_dir)
    raise UsageError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------
def random_crop_flip(x: torch.Tensor, padding: int | None, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop (zero padding `padding`, as torchvision's RandomCrop(size, padding)) and
    horizontal flip with probability 1/2, batched. x: (B, C, H, W) any dtype; returns the same shape and
    dtype on x's device. Random numbers come from the CPU `generator`, so CPU and GPU runs agree."""
    b, _, h, w = x.shape
    if padding:
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
        xp = torch.nn.functional.pad(x, (padding,) * 4)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if flip:
        f = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x_u8.float().div_(255)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that fixes one epoch's order and augmentation."""
    return torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))


def num_batches(n: int, batch_size: int, world: int = 1) -> int:
    per_rank = n // world
    return (per_rank + batch_size // world - 1) // (batch_size // world)


def train_batches(data: Dataset, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                  n_train: int = 0):
    """Yield (x float [0, 1] (b, 3, H, W), y) for one shuffled, augmented epoch on the data's device.
    `batch_size` is global: each of `world` ranks gets batch_size // world images of every batch.
    The order and augmentation are a function of the generator's seed alone."""
    n = data.x_train.shape[0] if not n_train else min(n_train, data.x_train.shape[0])
    perm = torch.randperm(n, generator=generator)
    perm = perm[: (n // world) * world][rank::world]
    per = batch_size // world
    for start in range(0, perm.numel(), per):
        idx = perm[start:start + per].to(data.x_train.device)
        x = random_crop_flip(data.x_train[idx], data.crop_padding, data.flip, generator)
        yield to_float(x), data.y_train[idx]


def eval_batches(data: Dataset, batch_size: int, n: int = 0):
    """Yield (x float [0, 1], y) over the first n test images (all when n is 0), in order, unaugmented."""
    total = data.x_test.shape[0] if not n else min(n, data.x_test.shape[0])
    for start in range(0, total, batch_size):
        end = min(start + batch_size, total)
        yield to_float(data.x_test[start:end]), data.y_test[start:end]
