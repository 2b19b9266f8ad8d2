"""Rebuild the studies' data, ../shared/data/cifar10_subset.npz, from the official CIFAR-10 python batches.

    python -m tools.make_cifar10_subset --cifar-dir data --out ../shared/data/cifar10_subset.npz

--cifar-dir is the folder cifar-10-batches-py/ (as extracted from cifar-10-python.tar.gz) or the folder holding it.
The .npz holds x_train (5 * N, 32, 32, 3) uint8, the first N images of each of data_batch_1 ... data_batch_5 in that
order, y_train (5 * N,) int64 their labels, x_test (N, 32, 32, 3) the first N images of test_batch and y_test (N,)
int64: HWC, RGB, 0-255, exactly as in the batches. N is --per-batch, 1017 for the studies' file. It is written to
a temporary file beside --out and renamed, so --out is whole or absent; an existing --out is kept unless --overwrite.

Then the tool prints the file's sha256, loads the file as `--data cifar10-npz` does, and prints its data
fingerprint (utils.data Dataset.fingerprint: what a run records as data_fingerprint in config.json) and whether
it equals the fingerprint the committed study runs record (docs/studies/<study>/<data>-<model>/<run>/config.json).
Exit code 0 when it equals them (or nothing records one), 1 when the file was written but its fingerprint differs,
2 with one line for bad input (a missing or malformed batch, an existing --out). The batches are Python pickles,
as distributed: read only batches from a source you trust.
"""
import argparse
import glob
import hashlib
import json
import os
import pickle
import sys

if __name__ == "__main__":  # the repository root on the path (run as a file: python tools/make_cifar10_subset.py), and
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.signals import hold_signals
    hold_signals()  # Ctrl-C / SIGTERM held until the libraries have loaded (entry_point ends with one line)
import numpy as np

from utils.cli import POSITIVE, Parser, nonempty
from utils.errors import UsageError, entry_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_BATCH = 1017  # the studies' file: 1017 images of each training batch and of the test batch
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def build_parser() -> Parser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir", required=True, type=nonempty, metavar="DIR",
                   help="the official python batches: the folder cifar-10-batches-py/ (data_batch_1 ... data_batch_5, "
                        "test_batch) or the folder holding it")
    p.add_argument("--out", required=True, type=nonempty, metavar="PATH",
                   help="the .npz file to write, e.g. ../shared/data/cifar10_subset.npz (whole or absent: written "
                        "beside it, then renamed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (off: an existing file is kept "
                                                            "and the tool exits 2)")
    p.add_argument("--per-batch", type=POSITIVE, default=PER_BATCH, metavar="N",
                   help="images taken from the start of each batch: 5 * N training and N test images (default: 1017, "
                        "the studies' file; a different N gives a different fingerprint)")
    p.add_argument("--studies", type=nonempty, metavar="DIR", default=None,
                   help="the study records whose data_fingerprint the file's is compared with, "
                        "<DIR>/<study>/<data>-<model>/<run>/config.json (default: docs/studies of this repository)")
    return p


def batches_folder(cifar_dir: str) -> str:
    """cifar-10-batches-py itself, or the folder holding it."""
    inner = os.path.join(cifar_dir, "cifar-10-batches-py")
    return inner if os.path.isdir(inner) else cifar_dir


def read_batch(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n images (n, 32, 32, 3) uint8 HWC and labels (n,) int64 of one CIFAR-10 python batch: a pickled dict
    with b'data' (M, 3072) uint8, each row the red, green and blue 32 x 32 planes, and b'labels' (M integers in
    [0, 10)). Raises UsageError naming the file and what is wrong."""
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder, not a CIFAR-10 python batch")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is missing (expects the CIFAR-10 python batches data_batch_1 ... data_batch_5 and "
                         f"test_batch, as extracted from cifar-10-python.tar.gz)")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ...: anything unreadable is bad input
        raise UsageError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(batch, dict):
        raise UsageError(f"{path} is not a CIFAR-10 python batch (a pickled {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise UsageError(f"{path} is not a CIFAR-10 python batch (no b'data' and b'labels' entries)")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UsageError(f"{path}: b'data' must be uint8 (N, 3072) rows of 32 x 32 RGB planes, got {what}")
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise UsageError(f"{path}: b'labels' must be {len(data)} integer labels, one per image, got {labels.dtype} "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise UsageError(f"{path}: b'labels' must be in [0, 10), got {labels.min()} .. {labels.max()}")
    if len(data) < n:
        raise UsageError(f"{path} holds {len(data)} images, fewer than the {n} asked for (--per-batch)")
    images = data[:n].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC, as torchvision reads them
    return np.ascontiguousarray(images), labels[:n].astype(np.int64)


def subset(cifar_dir: str, n: int = PER_BATCH) -> dict:
    """{x_train, y_train, x_test, y_test}: the first n images of each training batch in order, and of the test batch."""
    folder = batches_folder(cifar_dir)
    if not os.path.isdir(folder):
        raise UsageError(f"--cifar-dir {cifar_dir} is not a folder (expects cifar-10-batches-py/ or the folder "
                         f"holding it)")
    train = [read_batch(os.path.join(folder, name), n) for name in TRAIN_BATCHES]
    x_test, y_test = read_batch(os.path.join(folder, TEST_BATCH), n)
    return {"x_train": np.concatenate([x for x, _ in train]), "y_train": np.concatenate([y for _, y in train]),
            "x_test": x_test, "y_test": y_test}


def write_npz(path: str, arrays: dict) -> None:
    """np.savez_compressed into a temporary file beside `path`, renamed over it once complete
    (utils.runs.atomic_write)."""
    from utils.runs import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)


def recorded_fingerprints(studies: str) -> dict:
    """{fingerprint: number of runs} over the study records' config.json (<studies>/*/*/*/config.json); records
    without one, or unreadable, are not counted."""
    out = {}
    for path in sorted(glob.glob(os.path.join(studies, "*", "*", "*", "config.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                fp = json.load(f).get("data_fingerprint")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        if isinstance(fp, str) and fp:
            out[fp] = out.get(fp, 0) + 1
    return out


def compare(fingerprint: str, recorded: dict, where: str) -> tuple[bool, str]:
    """(equal, the sentence saying so) for a fingerprint against the records' {fingerprint: runs}."""
    if not recorded:
        return True, f"fingerprint {fingerprint}: no study record in {where} holds one to compare with"
    runs = sum(recorded.values())
    if set(recorded) == {fingerprint}:
        return True, f"fingerprint {fingerprint}: equals the one recorded by the studies in {where} ({runs} runs)"
    theirs = ", ".join(f"{fp} ({k} run{'s' if k > 1 else ''})"
                       for fp, k in sorted(recorded.items(), key=lambda t: -t[1]))
    if fingerprint in recorded:
        return False, (f"fingerprint {fingerprint}: equals the one of {recorded[fingerprint]} of the {runs} runs in "
                       f"{where}; the studies record several: {theirs}")
    return False, f"fingerprint {fingerprint}: differs from the one recorded by the studies in {where}: {theirs}"


def make(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from utils.data import load_dataset
    from utils.runs import check_outputs_apart, check_writable
    check_writable(args.out, "--out", folder=False)
    studies = args.studies or os.path.join(ROOT, "docs", "studies")
    batches = [os.path.join(batches_folder(args.cifar_dir), name) for name in (*TRAIN_BATCHES, TEST_BATCH)]
    check_outputs_apart([("--out", args.out)], batches)  # never onto a batch it reads
    if os.path.exists(args.out) and not args.overwrite:
        raise UsageError(f"--out {args.out} exists; give --overwrite to replace it, or another --out")
    if args.studies and not os.path.isdir(studies):
        raise UsageError(f"--studies {args.studies} is not a folder")
    recorded = recorded_fingerprints(studies)
    arrays = subset(args.cifar_dir, args.per_batch)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_npz(args.out, arrays)
    with open(args.out, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {args.out}: x_train {arrays['x_train'].shape}, x_test {arrays['x_test'].shape} "
          f"({args.per_batch} images per batch); sha256 of the file {sha}")
    fingerprint = load_dataset("cifar10-npz", args.out).fingerprint()  # as a run computes it
    where = args.studies or os.path.relpath(studies, ROOT)
    equal, sentence = compare(fingerprint, recorded, where)
    print(sentence)
    return 0 if equal else 1


def main(argv=None) -> int:
    """The entry point: 0 (the file's fingerprint equals the studies'), 1 (written, but it differs), 2 with one line
    for bad input; 130 / 143 when interrupted (no partial file is left)."""
    return entry_point(lambda: make(argv))


if __name__ == "__main__":
    sys.exit(main())
