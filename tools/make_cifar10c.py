"""Build a CIFAR-10-C-style folder from any test set with `imagecorruptions` (an optional extra).

    pip install imagecorruptions          # plus setuptools < 80 where pkg_resources is missing
    python -m tools.make_cifar10c --data cifar10-npz --data-dir ../shared/data/cifar10_subset.npz --out data/c10c
    python train_eval_part.py --eval-only runs/.../last.pt --eval-corruptions data/c10c

Writes <out>/<corruption>.npy, uint8 (5 * N, H, W, 3) with severities 1..5 stacked in order, and
<out>/labels.npy (5 * N,): the published CIFAR-10-C layout that --eval-corruptions reads. imagecorruptions
implements Hendrycks' corruptions with their ImageNet parameters, so the figures are not comparable to those
of the published CIFAR-10-C files; use those where you can get them. A corruption the installed
imagecorruptions cannot run (some need older numpy or scikit-image) is skipped with its reason.
"""
import argparse
import os
import sys

if __name__ == "__main__":  # run as a file (python tools/make_cifar10c.py): put the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np

from utils.data import DATASETS, load_dataset

CIFAR10C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
            "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


def corrupt_all(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """images uint8 (N, H, W, 3) -> (5 * N, H, W, 3), severities 1..5 in order; deterministic for a seed."""
    from imagecorruptions import corrupt
    out = []
    for severity in range(1, 6):
        np.random.seed(seed * 100 + severity)  # imagecorruptions draws from numpy's global generator
        out += [np.asarray(corrupt(x, corruption_name=name, severity=severity), dtype=np.uint8)[..., :3]
                for x in images]
    return np.stack(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="cifar10", choices=list(DATASETS), help="test set to corrupt (default: cifar10)")
    p.add_argument("--data-dir", default="data", help="data-set root, or the .npz file for cifar10-npz")
    p.add_argument("--out", required=True, help="folder to write (created)")
    p.add_argument("--n", type=int, default=0, help="first N test images (default 0: all)")
    p.add_argument("--corruptions", nargs="+", default=list(CIFAR10C), help="default: the 15 of CIFAR-10-C")
    p.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (default: 0)")
    args = p.parse_args(argv)
    try:
        import imagecorruptions  # noqa: F401  (fail early, with a message)
    except ImportError as e:
        print(f"error: this tool needs imagecorruptions ({e}); pip install imagecorruptions", file=sys.stderr)
        return 2
    data = load_dataset(args.data, args.data_dir)
    n = data.x_test.shape[0] if not args.n else min(args.n, data.x_test.shape[0])
    images = data.x_test[:n].permute(0, 2, 3, 1).numpy()
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "labels.npy"), np.tile(data.y_test[:n].numpy(), 5))
    written = 0
    for name in args.corruptions:
        try:
            np.save(os.path.join(args.out, f"{name}.npy"), corrupt_all(images, name, args.seed))
            written += 1
            print(f"{name}: {5 * n} images")
        except Exception as e:  # the package's own incompatibilities with current numpy / scikit-image
            print(f"{name}: skipped ({type(e).__name__}: {str(e)[:100]})", file=sys.stderr)
    print(f"wrote {written} corruptions of {n} images to {args.out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
