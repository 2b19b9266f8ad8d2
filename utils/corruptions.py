"""CIFAR-10-C: the published corruption names, the checks of a corruption folder, and the natural accuracy on it.

A folder holds `<name>.npy` per corruption (uint8 (5 * N, H, W, 3), severities 1..5 stacked in order) beside
`labels.npy` (5 * N,), as Hendrycks and Dietterich publish it. Only the published names are read: a stray `.npy`
in the folder would otherwise be scored as a corruption and enter the mean. The mean is over the fifteen common
corruptions, as published results and RobustBench average them; the four extra ones (held out for validation in
the original release) are reported beside it, not in it.
"""
import os

import numpy as np
import torch

from attacks import frozen

from .batches import to_float
from .errors import UsageError

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
          "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def corruption_files(folder: str, num_classes: int | None = None, image_size=None, n_eval: int = 0) -> list[str]:
    """The corruption names in a CIFAR-10-C folder (<name>.npy beside labels.npy), checked: every other .npy is a
    published corruption name; each file uint8 (5 * N, H, W, 3) and labels.npy of the same length; when given,
    labels in [0, num_classes), images of `image_size` (an int, or [H, W]: the model's) and at least `n_eval`
    images per severity (--n-eval; 0: all). Raises UsageError naming the path and the problem."""
    if not os.path.isdir(folder):
        raise UsageError(f"--eval-corruptions: {folder} is not a folder (expects <corruption>.npy files and "
                         f"labels.npy, as CIFAR-10-C is published)")
    labels_path = os.path.join(folder, "labels.npy")
    if not os.path.isfile(labels_path):
        raise UsageError(f"--eval-corruptions: {labels_path} is missing")
    labels = _load_npy(labels_path, mmap=False)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0 or len(labels) % 5:
        raise UsageError(f"--eval-corruptions: {labels_path} must hold 5 * N integer labels, got {labels.dtype} "
                         f"{labels.shape}")
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise UsageError(f"--eval-corruptions: {labels_path} must hold labels in [0, {num_classes}) (the model's "
                         f"classes), found {labels.min()}..{labels.max()}")
    size = None if image_size is None else \
        tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".npy") and f != "labels.npy")
    unknown = [n for n in names if n not in COMMON + EXTRA]
    if unknown:
        raise UsageError(f"--eval-corruptions: {os.path.join(folder, unknown[0] + '.npy')} is not a CIFAR-10-C "
                         f"corruption (the published names: {', '.join(COMMON + EXTRA)}); move it out of the folder")
    if not names:
        raise UsageError(f"--eval-corruptions: no <corruption>.npy file in {folder}")
    for name in names:
        path = os.path.join(folder, name + ".npy")
        a = _load_npy(path)
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            raise UsageError(f"--eval-corruptions: {path} must be uint8 images (5 * N, H, W, 3), got {a.dtype} {a.shape}")
        if len(a) % 5:
            raise UsageError(f"--eval-corruptions: {path} has {len(a)} images, not a multiple of 5 severities")
        if len(a) != len(labels):
            raise UsageError(f"--eval-corruptions: {path} has {len(a)} images but labels.npy {len(labels)} labels")
        if size is not None and tuple(a.shape[1:3]) != size:
            raise UsageError(f"--eval-corruptions: {path} holds {a.shape[1]}x{a.shape[2]} images, but the model "
                             f"takes {size[0]}x{size[1]}")
    if n_eval and n_eval > len(labels) // 5:  # it would evaluate fewer images than the record's n_eval says
        raise UsageError(f"--eval-corruptions: {folder} holds {len(labels) // 5} images per severity, fewer than "
                         f"--n-eval {n_eval}; give --n-eval at most {len(labels) // 5}, or 0 for all")
    return names


def _load_npy(path, mmap=True):
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"--eval-corruptions: {path} is not a readable .npy file ({type(e).__name__})") from None


def _mean(accs: dict, names) -> float | None:
    values = [a for n in names if n in accs for a in accs[n]]
    return float(np.mean(values)) if values else None


def evaluate_corruptions(model: torch.nn.Module, folder: str, n_eval: int = 0, batch_size: int = 256,
                         log=None) -> dict:
    """Natural accuracy (percent) on every corruption of a CIFAR-10-C folder at each severity 1..5, on the first
    n_eval images of each severity (all when 0, at most what the folder holds): {name: [sev1, ..., sev5], 'mean':
    over the common corruptions found and their severities (None when the folder holds extra ones only),
    'mean_of': the names averaged, 'mean_extra': over the extra ones found (only when there are any), 'images':
    the images of each severity scored}. Batches are cut as the natural evaluation cuts the test set."""
    device = next(model.parameters()).device
    labels = torch.from_numpy(np.asarray(_load_npy(os.path.join(folder, "labels.npy"), mmap=False), dtype=np.int64))
    accs, n = {}, 0
    with frozen(model), torch.no_grad():
        for name in corruption_files(folder):
            images = _load_npy(os.path.join(folder, name + ".npy"))
            per = len(images) // 5
            n = per if not n_eval else min(n_eval, per)
            row = []
            for sev in range(5):
                lo = sev * per
                x = torch.from_numpy(np.ascontiguousarray(images[lo:lo + n]).transpose(0, 3, 1, 2).copy())
                correct = 0
                for i in range(0, n, batch_size):
                    xb = to_float(x[i:i + batch_size]).to(device)
                    yb = labels[lo + i:lo + i + xb.shape[0]].to(device)
                    correct += int((model(xb).argmax(1) == yb).sum())
                row.append(100.0 * correct / n)
            accs[name] = row
            if log:
                log.info("eval corruption %s: %s", name, " ".join(f"{a:.2f}" for a in row))
    common = [n for n in COMMON if n in accs]
    extra = [n for n in EXTRA if n in accs]
    out = dict(accs, mean=_mean(accs, common), mean_of=common, images=n)
    if extra:
        out["mean_extra"] = _mean(accs, extra)
    if log:
        mean = "none" if out["mean"] is None else f"{out['mean']:.2f}"
        log.info("eval corruptions: mean %s over %d of the %d common corruptions%s", mean, len(common), len(COMMON),
                 f"; extra ones (not in the mean): {', '.join(extra)}" if extra else "")
    return out
