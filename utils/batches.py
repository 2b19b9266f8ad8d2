"""Batches cut from a resident data set: the training epoch's order and augmentation (a pure function of the
run's seed and the epoch, which makes resume exact), and the test set in order.

Augmentation is drawn on the CPU generator and applied on the data's device, so CPU and GPU runs agree.
"""
import torch

from .data import Dataset, train_size


def crop_flip_draws(b: int, padding: int | None, flip: bool, generator: torch.Generator):
    """The random numbers of one batch's augmentation, drawn from the CPU `generator` in a fixed order:
    row offsets, column offsets (both when padding), flip flags (when flip). Returns (oy, ox, f), None where unused."""
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator) if padding else None
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator) if padding else None
    f = torch.rand(b, generator=generator) < 0.5 if flip else None
    return oy, ox, f


def apply_crop_flip(x: torch.Tensor, padding: int | None, oy, ox, f) -> torch.Tensor:
    """Crop each image of x (B, C, H, W) at its offsets in the zero-padded image and flip it where f says;
    oy, ox, f (or None) on x's device. Returns the same shape and dtype."""
    b, _, h, w = x.shape
    if oy is not None:
        xp = torch.nn.functional.pad(x, (padding,) * 4)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if f is not None:
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, padding: int | None, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop (zero padding `padding`, as torchvision's RandomCrop(size, padding)) and
    horizontal flip with probability 1/2, batched. x: (B, C, H, W) any dtype; returns the same shape and
    dtype on x's device. Random numbers come from the CPU `generator`, so CPU and GPU runs agree."""
    draws = crop_flip_draws(x.shape[0], padding, flip, generator)
    return apply_crop_flip(x, padding, *(None if d is None else d.to(x.device) for d in draws))


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x_u8.float().div_(255)


def seed64(n: int) -> int:
    """A seed derived from the run's seed, folded into torch's seed range [0, 2**64) (the identity there, so
    every seed a run could use before keeps its derived seeds)."""
    return int(n) % 2**64


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that fixes one epoch's order and augmentation."""
    return torch.Generator().manual_seed(seed64(int(seed) * 100003 + int(epoch)))


def num_batches(n: int, batch_size: int, world: int = 1) -> int:
    per_rank = n // world
    return (per_rank + batch_size // world - 1) // (batch_size // world)


def epoch_permutation(n: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The order of one epoch's first n training images on this rank: the generator's first draw is a
    permutation of range(n), cut to a multiple of `world` and dealt out round-robin."""
    perm = torch.randperm(n, generator=generator)
    return perm[: (n // world) * world][rank::world]


def batch_sizes(n: int, per: int) -> list[int]:
    """The sizes of the batches of `per` images that n images make, in order (the last one may be smaller)."""
    return [min(per, n - s) for s in range(0, n, per)]


def train_batches(data: Dataset, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                  n_train: int = 0):
    """Yield (x float [0, 1] (b, 3, H, W), y) for one shuffled, augmented epoch on the data's device.
    `batch_size` is global: each of `world` ranks gets batch_size // world images of every batch.
    The order and augmentation are a function of the generator's seed alone; they are drawn for the whole
    epoch up front (in the order a batch-by-batch draw would take them) and copied to the device once."""
    perm = epoch_permutation(train_size(data, n_train), generator, rank, world)
    per = batch_size // world
    starts = range(0, perm.numel(), per)
    draws = [crop_flip_draws(b, data.crop_padding, data.flip, generator) for b in batch_sizes(perm.numel(), per)]
    device = data.x_train.device
    perm = perm.to(device)
    oy, ox, f = (None if d[0] is None else torch.cat(d).to(device) for d in zip(*draws)) if draws else (None,) * 3
    for start in starts:
        idx = perm[start:start + per]
        cut = slice(start, start + idx.numel())
        x = apply_crop_flip(data.x_train[idx], data.crop_padding, *(None if d is None else d[cut] for d in (oy, ox, f)))
        yield to_float(x), data.y_train[idx]


def eval_batches(data: Dataset, batch_size: int, n: int = 0):
    """Yield (x float [0, 1], y) over the first n test images (all when n is 0), in order, unaugmented."""
    total = data.x_test.shape[0] if not n else min(n, data.x_test.shape[0])
    for start in range(0, total, batch_size):
        end = min(start + batch_size, total)
        yield to_float(data.x_test[start:end]), data.y_test[start:end]
