"""Build a CIFAR-10-C-style folder from any test set with `imagecorruptions` (an optional extra).

    pip install imagecorruptions          # plus setuptools < 80 where pkg_resources is missing
    python -m tools.make_cifar10c --data cifar10-npz --data-dir ../shared/data/cifar10_subset.npz --out data/c10c
    python train_eval_part.py --eval-only runs/.../last.pt --eval-corruptions data/c10c

Writes <out>/<corruption>.npy, uint8 (5 * N, H, W, 3) with severities 1..5 stacked in order, and
<out>/labels.npy (5 * N,): the published CIFAR-10-C layout that --eval-corruptions reads. imagecorruptions
implements Hendrycks' corruptions with their ImageNet parameters, so the figures are not comparable to those
of the published CIFAR-10-C files; use those where you can get them. A corruption the installed
imagecorruptions cannot run (some need older numpy or scikit-image) is skipped with its reason. --out must be a
new or empty folder; the files appear there only when all are written, so an interrupted run leaves nothing and
the same command can simply be run again.
"""
import argparse
import os
import shutil
import sys
import tempfile

if __name__ == "__main__":  # the repository root on the path (run as a file: python tools/make_cifar10c.py), and
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.signals import hold_signals
    hold_signals()  # Ctrl-C / SIGTERM held until the libraries have loaded (entry_point ends with one line)
import numpy as np

from utils.cli import COUNT, Parser, nonempty, number
from utils.corruptions import COMMON, EXTRA
from utils.data import DATASETS, load_dataset
from utils.errors import UsageError, entry_point
from utils.runs import check_writable

SEED_MAX = (2**32 - 1 - 5) // 100  # numpy's global seed, seed * 100 + severity, must stay below 2**32


def corrupt_all(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """images uint8 (N, H, W, 3) -> (5 * N, H, W, 3), severities 1..5 in order; deterministic for a seed."""
    from imagecorruptions import corrupt
    out = []
    for severity in range(1, 6):
        np.random.seed(seed * 100 + severity)  # imagecorruptions draws from numpy's global generator
        out += [np.asarray(corrupt(x, corruption_name=name, severity=severity), dtype=np.uint8)[..., :3]
                for x in images]
    return np.stack(out)


def build_parser() -> Parser:
    """The tool's command line (tools/flags.py documents it from here)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cifar10", choices=list(DATASETS),
                   help="data set whose test split is corrupted (default: cifar10)")
    p.add_argument("--data-dir", default="data", type=nonempty,
                   help="where --data is: its root folder, or for cifar10-npz the .npz file, e.g. "
                        "../shared/data/cifar10_subset.npz (default: data)")
    p.add_argument("--out", required=True, type=nonempty,
                   help="folder to write, new or empty: <corruption>.npy and labels.npy, which appear only when all "
                        "are written")
    p.add_argument("--n", type=COUNT, default=0, help="corrupt the first N test images (default 0: all)")
    p.add_argument("--corruptions", nargs="+", default=list(COMMON), metavar="NAME",
                   help="CIFAR-10-C corruption names to write with imagecorruptions, one <name>.npy each with "
                        "severities 1 to 5 (default: the 15 common ones; the 4 extra ones may be named too)")
    p.add_argument("--seed", type=number(int, 0, SEED_MAX), default=0,
                   help="seed of the random corruptions: severity s draws from numpy's generator seeded with "
                        "seed * 100 + s, so one seed always gives the same files (default: 0)")
    return p


def make(argv=None) -> int:
    """The tool: check the flags, --out (a new or empty folder), the data and the package, then write every
    corruption into a temporary folder beside --out that becomes --out only when complete (an interrupted or
    failed run leaves nothing). Returns 0, or 1 when no corruption could be made."""
    args = build_parser().parse_args(argv)
    twice = sorted({c for c in args.corruptions if args.corruptions.count(c) > 1})
    if twice:  # one file each: the count printed would not be the files written
        raise UsageError(f"--corruptions names {', '.join(twice)} more than once; name each corruption once")
    unpublished = [c for c in args.corruptions if c not in COMMON + EXTRA]
    if unpublished:  # --eval-corruptions reads the published names only
        raise UsageError(f"--corruptions: {', '.join(unpublished)} is not a CIFAR-10-C corruption; choose from "
                         f"{', '.join(COMMON + EXTRA)}")
    check_writable(args.out, "--out")
    if os.path.isdir(args.out) and os.listdir(args.out):
        raise UsageError(f"--out {args.out} already holds files; give a new or empty folder (nothing is overwritten)")
    data = load_dataset(args.data, args.data_dir)
    if args.n > data.x_test.shape[0]:
        raise UsageError(f"--n {args.n} is more than the {data.x_test.shape[0]} test images of --data {args.data}; "
                         f"give at most {data.x_test.shape[0]}, or 0 for all")
    try:
        import imagecorruptions
    except ImportError as e:
        raise UsageError(f"this tool needs imagecorruptions ({e}); pip install imagecorruptions") from None
    known = sorted(getattr(imagecorruptions, "corruption_dict", {}))
    unknown = [c for c in args.corruptions if known and c not in known]
    if unknown:
        raise UsageError(f"--corruptions: imagecorruptions has no {', '.join(unknown)}; choose from {', '.join(known)}")
    n = args.n or data.x_test.shape[0]
    images = data.x_test[:n].permute(0, 2, 3, 1).numpy()
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
    try:
        np.save(os.path.join(tmp, "labels.npy"), np.tile(data.y_test[:n].numpy(), 5))
        written = 0
        for name in args.corruptions:
            try:
                a = corrupt_all(images, name, args.seed)
            except Exception as e:  # the package's own incompatibilities with current numpy / scikit-image
                print(f"{name}: skipped ({type(e).__name__}: {str(e)[:100]})", file=sys.stderr)
                continue
            np.save(os.path.join(tmp, f"{name}.npy"), a)
            written += 1
            print(f"{name}: {5 * n} images")
        if not written:
            print(f"error: none of the corruptions could be made; nothing written to {args.out}", file=sys.stderr)
            return 1
        if os.path.isdir(out):
            os.rmdir(out)  # empty, as checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {written} corruptions of {n} images to {args.out}")
    return 0


def main(argv=None) -> int:
    """The entry point: the exit code of `make` (2 with one line for bad input or missing data; 130 / 143 when
    interrupted, leaving no folder)."""
    return entry_point(lambda: make(argv))


if __name__ == "__main__":
    sys.exit(main())
