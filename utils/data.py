"""Data sets as uint8 tensors (N, 3, H, W) with labels: the registry, the loaders and the checks of what they load.

Every data set is loaded whole into memory (CIFAR-10 and SVHN are ~150-220 MB as uint8, TinyImageNet
~1.2 GB), so batches are cut from a resident tensor (batches.py): no DataLoader workers, the same code on CPU and
GPU.
"""
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import DataNotFound, UsageError

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

    def fingerprint(self) -> str:
        """A hash of the images and labels of both splits (first 16 hex digits of SHA-256)."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def image_size(self):
        """The images' side in pixels (an int), or [H, W] when they are not square."""
        h, w = (int(v) for v in self.x_train.shape[-2:])
        return h if h == w else [h, w]

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
def _damaged(root: str, files) -> str | None:
    """The first of `files` ((path under root, md5) pairs) that is present but does not match its checksum."""
    from torchvision.datasets.utils import check_integrity
    for rel, md5 in files:
        path = os.path.join(root, rel)
        if os.path.isfile(path) and not check_integrity(path, md5):
            return rel
    return None


def _torchvision(cls, name: str, root: str, download: bool, files: str, url: str, checked, **splits):
    """Load a torchvision data set's two splits; a missing folder, a failed download or a file present but
    damaged (`checked`: its (path, md5) pairs) is a DataNotFound that names the folder or file and the fix."""
    try:
        return [cls(root, download=download, **kw) for kw in splits.values()]
    except Exception as e:  # torchvision raises RuntimeError when files are missing, URLError/OSError offline
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        bad = _damaged(root, checked)
        if bad:
            raise DataNotFound(f"{name}: {os.path.join(os.path.abspath(root), bad)} is damaged (it does not match its "
                               f"published checksum); delete it, then fetch {url} again (--download, or by hand)") from None
        if download:
            raise DataNotFound(f"downloading {name} into {os.path.abspath(root)} failed ({reason}); on a machine "
                               f"without network access fetch {url} by hand and put {files} in that folder") from None
        raise DataNotFound(f"{name} not found in {os.path.abspath(root)} (looked for {files}). Add --download to "
                           f"fetch it with torchvision, or point --data-dir at the folder holding it.") from None


def _cifar10(root: str, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10
    checked = [(os.path.join(CIFAR10.base_folder, f), md5) for f, md5 in CIFAR10.train_list + CIFAR10.test_list]
    tr, te = _torchvision(CIFAR10, "CIFAR-10", root, download, "cifar-10-batches-py/ (extracted)",
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", checked,
                          train={"train": True}, test={"train": False})
    return Dataset("cifar10", _hwc_to_chw(tr.data), torch.tensor(tr.targets), _hwc_to_chw(te.data),
                   torch.tensor(te.targets), 10)


def _svhn(root: str, download: bool) -> Dataset:
    from torchvision.datasets import SVHN
    checked = [tuple(SVHN.split_list[split][1:]) for split in ("train", "test")]
    tr, te = _torchvision(SVHN, "SVHN", root, download, "train_32x32.mat and test_32x32.mat",
                          "http://ufldl.stanford.edu/housenumbers/{train,test}_32x32.mat", checked,
                          train={"split": "train"}, test={"split": "test"})
    return Dataset("svhn", torch.from_numpy(tr.data), torch.from_numpy(tr.labels.astype(np.int64)),
                   torch.from_numpy(te.data), torch.from_numpy(te.labels.astype(np.int64)), 10)


def _read_images(paths) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    out = np.empty((len(paths), 64, 64, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (64, 64):
                    im = im.resize((64, 64))
                out[i] = np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataNotFound(f"TinyImageNet image {p} cannot be read ({type(e).__name__}: {e}); "
                               f"re-extract tiny-imagenet-200.zip") from None
    return _hwc_to_chw(out)


# the distributed TinyImageNet-200; a folder with other counts is refused (tests lower these)
TINY_EXPECTED = {"classes": 200, "train": 100_000, "test": 10_000}


def _tiny_listing(base: str):
    """(train paths, train labels, test paths, test labels, number of classes) of the folder as distributed.
    Raises DataNotFound naming what is missing or what does not add up."""
    wnids_file = os.path.join(base, "wnids.txt")
    if os.path.isfile(wnids_file):
        with open(wnids_file) as f:
            wnids = sorted(w.strip() for w in f if w.strip())
    else:
        wnids = sorted(os.listdir(os.path.join(base, "train")))
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        d = os.path.join(base, "train", w, "images")
        if not os.path.isdir(d):
            raise DataNotFound(f"TinyImageNet class folder {d} is missing (listed in wnids.txt); "
                               f"re-extract tiny-imagenet-200.zip")
        for fn in sorted(os.listdir(d)):
            train_paths.append(os.path.join(d, fn))
            train_labels.append(index[w])
    test_paths, test_labels = [], []
    with open(os.path.join(base, "val", "val_annotations.txt")) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise DataNotFound(f"{base}/val/val_annotations.txt line {n} is not '<file>\\t<known wnid>\\t...': "
                                   f"{line.strip()[:80]!r}")
            path = os.path.join(base, "val", "images", parts[0])
            if not os.path.isfile(path):
                raise DataNotFound(f"TinyImageNet validation image {path} is missing; re-extract tiny-imagenet-200.zip")
            test_paths.append(path)
            test_labels.append(index[parts[1]])
    found = {"classes": len(wnids), "train": len(train_paths), "test": len(test_paths)}
    if found != TINY_EXPECTED:
        raise DataNotFound(f"{base} looks incomplete or is not TinyImageNet-200: {found['classes']} classes, "
                           f"{found['train']} training and {found['test']} validation images (expected "
                           f"{TINY_EXPECTED['classes']}, {TINY_EXPECTED['train']} and {TINY_EXPECTED['test']}); "
                           f"re-extract tiny-imagenet-200.zip")
    return train_paths, train_labels, test_paths, test_labels, len(wnids)


def _tinyimagenet(root: str, download: bool = False) -> Dataset:
    base = os.path.join(root, "tiny-imagenet-200")
    if not os.path.isdir(os.path.join(base, "train")) or not os.path.isfile(
            os.path.join(base, "val", "val_annotations.txt")):
        raise DataNotFound(
            f"TinyImageNet-200 not found: expected {os.path.abspath(base)}/ with train/<wnid>/images and "
            f"val/images plus val/val_annotations.txt. Download http://cs231n.stanford.edu/tiny-imagenet-200.zip "
            f"and unzip it into {os.path.abspath(root)}/ (no reorganising needed).")
    tr_paths, tr_labels, te_paths, te_labels, classes = _tiny_listing(base)
    def entry(path, label):  # an image rewritten in place changes its size or modification time
        st = os.stat(path)
        return f"{os.path.relpath(path, base)} {label} {st.st_size} {st.st_mtime_ns}"
    listing = hashlib.sha256("\n".join(entry(p, y) for p, y in
                                       zip(tr_paths + te_paths, tr_labels + te_labels)).encode()).hexdigest()
    cache = os.path.join(base, "part_cache_uint8.pt")
    if os.path.isfile(cache):  # used only when it was built from this very listing; else rebuilt
        try:
            d = torch.load(cache, weights_only=True)
            if d.get("listing") == listing and d["x_train"].shape[0] == len(tr_paths):
                return Dataset("tinyimagenet", d["x_train"], d["y_train"], d["x_test"], d["y_test"], classes)
        except Exception:
            pass
    d = {"x_train": _read_images(tr_paths), "y_train": torch.tensor(tr_labels),
         "x_test": _read_images(te_paths), "y_test": torch.tensor(te_labels), "listing": listing}
    try:
        torch.save(d, cache + ".tmp")
        os.replace(cache + ".tmp", cache)
    except OSError:
        pass  # a read-only data folder only costs the decode next time
    return Dataset("tinyimagenet", d["x_train"], d["y_train"], d["x_test"], d["y_test"], classes)


def _not_npz(path: str) -> str:
    """What a file that is no zip archive (as an .npz is) holds, as far as its first bytes tell."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "it is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it holds one array (np.save's .npy), not an archive of arrays"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it holds JSON text, not arrays"
    if head.startswith(b"\x80"):
        return "it is a pickle, not an archive of arrays"
    return "it is no zip archive (an .npz is one): another kind of file, or a damaged one"


def _cifar10_npz(path: str, download: bool = False) -> Dataset:
    """A CIFAR-10-style .npz: x_train, x_test uint8 (N, H, W, 3) with N, H, W > 0 and the same H, W; y_train, y_test
    1-D integer labels in [0, 10) of the same lengths. Anything else raises UsageError naming the key."""
    if not os.path.isfile(path):
        raise DataNotFound(
            f"cifar10-npz needs --data-dir to be a .npz file with x_train, y_train, x_test, y_test; "
            f"{os.path.abspath(path)} is not a file.")
    if not zipfile.is_zipfile(path):  # else np.load reads it as a pickle and calls any file "pickled (object) data"
        raise UsageError(f"{path} is not a readable .npz file: {_not_npz(path)}; cifar10-npz reads an np.savez archive "
                         f"with x_train, y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise UsageError(f"{path} lacks the keys {missing} (expects x_train, y_train, x_test, y_test)")
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        not_arrays = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
        if not_arrays:  # np.load returns the raw bytes of a member that is no .npy
            raise UsageError(f"{path}: {', '.join(not_arrays)} {'is' if len(not_arrays) == 1 else 'are'} not "
                             f"arrays (members that are no .npy file); cifar10-npz reads an np.savez archive")
    except UsageError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects, ...
        raise UsageError(f"{path} is not a readable .npz file ({type(e).__name__}: {str(e)[:120]})") from None
    shape = None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[:3], default=0) == 0:
            raise UsageError(f"{path}: x_{split} must be uint8 images (N, H, W, 3) with N, H, W > 0, got {x.dtype} "
                             f"{x.shape}")
        if shape is not None and x.shape[1:] != shape:
            raise UsageError(f"{path}: x_train and x_test differ in image shape ({shape} vs {x.shape[1:]})")
        shape = x.shape[1:]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise UsageError(f"{path}: y_{split} must be 1-D integer labels, got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise UsageError(f"{path}: y_{split} has {len(y)} labels for {len(x)} images in x_{split}")
        if y.min() < 0 or y.max() >= 10:
            raise UsageError(f"{path}: y_{split} must lie in [0, 10) (CIFAR-10 classes), found {y.min()}..{y.max()}")
    return Dataset("cifar10-npz", _hwc_to_chw(arrays["x_train"]), torch.from_numpy(arrays["y_train"].astype(np.int64)),
                   _hwc_to_chw(arrays["x_test"]), torch.from_numpy(arrays["y_test"].astype(np.int64)), 10)


def _synthetic(root: str, download: bool = False) -> Dataset:
    return synthetic()


@dataclass(frozen=True)
class DataSpec:
    """A data set: its loader (data_dir, download) -> Dataset, and everything a run needs to know about it."""
    load: Callable
    num_classes: int
    image_size: int
    crop_padding: int | None  # random crop with this zero padding (None: no crop)
    flip: bool                # random horizontal flip
    step_size: float = 2 / 255
    weight_decay: float = 2e-4
    how_to_get: str = ""


DATASETS = {
    "cifar10": DataSpec(_cifar10, 10, 32, 4, True, how_to_get="--download once"),
    # the official code forces step 1/255 and weight decay 3.5e-3 on SVHN
    "svhn": DataSpec(_svhn, 10, 32, None, False, step_size=1 / 255, weight_decay=3.5e-3, how_to_get="--download once"),
    # our choices: the official code lists TinyImageNet but cannot run it
    "tinyimagenet": DataSpec(_tinyimagenet, 200, 64, 4, True,
                             how_to_get="unzip tiny-imagenet-200.zip into the data folder"),
    "cifar10-npz": DataSpec(_cifar10_npz, 10, 32, 4, True, how_to_get="--data-dir path/to/file.npz"),
    "synthetic": DataSpec(_synthetic, 10, 32, None, False, how_to_get="built in"),
}


def load_dataset(name: str, data_dir: str = "data", download: bool = False) -> Dataset:
    """Load a data set by name (a key of DATASETS), with its augmentation settings. For `cifar10-npz`,
    `data_dir` is the .npz file. Raises DataNotFound (naming the folder and how to get the files) or
    UsageError (a malformed file)."""
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[name]
    data = spec.load(data_dir, download)
    data.crop_padding, data.flip = spec.crop_padding, spec.flip
    check_labels(data, data_dir if name == "cifar10-npz" else name)
    return data


def class_list(classes) -> str:
    """'3', '0 and 7', '0, 1 and 9' (at most 10 named, then the count)."""
    names = [str(int(c)) for c in classes]
    if len(names) > 10:
        return f"{', '.join(names[:10])} and {len(names) - 10} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_labels(data: Dataset, where: str, n_train: int = 0) -> None:
    """Every data set's labels, whatever loaded them: 1-D integers, one per image, within [0, num_classes); no
    `n_train` beyond the training images (`check_counts`); and at least two classes among the training labels an
    epoch uses (the first `n_train`, all when 0): with one, a classifier learns nothing and every number it
    reports is meaningless. Raises UsageError naming `where` and the classes present."""
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise UsageError(f"{where}: the {split} labels must be 1-D integers, got {y.dtype} {tuple(y.shape)}")
        if y.shape[0] != x.shape[0]:
            raise UsageError(f"{where}: {y.shape[0]} {split} labels for {x.shape[0]} images")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            raise UsageError(f"{where}: the {split} labels must lie in [0, {data.num_classes}) ({data.name} has "
                             f"{data.num_classes} classes), found {int(y.min())}..{int(y.max())}")
    check_counts(data, where, n_train)
    used = data.y_train[:train_size(data, n_train)]
    present = torch.unique(used).tolist()
    if len(present) < 2:
        which = f"only class {class_list(present)}" if present else "no label"
        first = f"the first {used.numel()} training labels (--n-train {n_train})" if n_train and \
            used.numel() < data.y_train.numel() else "the training labels"
        raise UsageError(f"{where}: {first} hold {which} ({data.name} has {data.num_classes} classes); training "
                         f"needs at least two classes")


def check_counts(data: Dataset, where: str, n_train: int = 0, n_eval: int = 0, n_eval_aa: int = 0,
                 batch_size: int = 0) -> None:
    """Refuse a subset larger than what it is taken from (0 means all): --n-train beyond the training images,
    --n-eval beyond the test images, --n-eval-aa beyond the --n-eval images, and a --batch-size beyond the
    training images an epoch uses. Such a run would use all of them and be recorded (and grouped by the report)
    under a size it never had."""
    n_test = data.x_test.shape[0]
    for flag, n, most, of in (("--n-train", n_train, data.x_train.shape[0], f"training images of {where}"),
                              ("--n-eval", n_eval, n_test, f"test images of {where}"),
                              ("--n-eval-aa", n_eval_aa, n_eval or n_test,
                               "--n-eval images" if n_eval else f"test images of {where}")):
        if n > most:
            raise UsageError(f"{flag} {n} is more than the {most} {of}; give at most {most}, or 0 for all")
    n = train_size(data, n_train)
    if batch_size > n:  # every epoch would be one batch of n
        raise UsageError(f"--batch-size {batch_size} is more than the {n} training images an epoch uses "
                         f"({where}{', --n-train' if n_train else ''}); give at most {n}")


def train_size(data: Dataset, n_train: int = 0) -> int:
    """How many training images an epoch uses: the first n_train (all when 0)."""
    return data.x_train.shape[0] if not n_train else min(n_train, data.x_train.shape[0])
