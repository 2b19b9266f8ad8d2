"""Speed benchmark (not a test): images/s and ms per batch of the training and evaluation steps.

    python -m tools.benchmark                                   # synthetic data, both models
    python -m tools.benchmark --data cifar10-npz --data-dir ../shared/data/cifar10_subset.npz

Measures, on the current device, for each model and each speed setting:
  at_step    PGD-10 AT step (attack + update)
  part_step  PART step (CAM mask + PGD-10 + update)
  mask       the CAM mask alone (grad-cam in fp32, the torch backend in the fast settings)
  pgd20_eval PGD-20 evaluation of a batch
and prints the PART / AT ratio and the implied time of a 50,000-image CIFAR-10 epoch. Writes a JSON record
(device, versions, settings, figures) to --json.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from attacks import pgd
from utils.mask_sources import epsilon_mask
from utils.data import load_dataset, to_float
from utils.engine import autocast, configure_backends, pick_device, prepare_model
from utils.evaluate import library_versions

SETTINGS = {
    "fp32": dict(channels_last=False, tf32=False, amp="none", cam_backend="grad-cam"),
    "fast": dict(channels_last=True, tf32=True, amp="none", cam_backend="torch"),
    "fast-bf16": dict(channels_last=True, tf32=True, amp="bf16", cam_backend="torch"),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / iters


def bench_model(model_name, width, setting, x_all, y_all, device, batch, warmup, iters, num_classes):
    cfg = dict(model=model_name, width=width, **SETTINGS[setting])
    configure_backends(cfg, device)
    torch.manual_seed(0)
    model = prepare_model(cfg, num_classes, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x, y = x_all[:batch], y_all[:batch]
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    eps, low, step = 8 / 255, 7 / 255, 2 / 255

    def update(x_adv):
        model.train()
        with autocast(cfg, device):
            loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def at_step():
        with autocast(cfg, device):
            x_adv = pgd(model, x, y, eps, step, 10)
        update(x_adv)

    def mask():
        return epsilon_mask(model, x, eps, low, backend=cfg["cam_backend"])

    def part_step():
        budget = mask()
        with autocast(cfg, device):
            x_adv = pgd(model, x, y, budget, step, 10)
        update(x_adv)

    def pgd20():
        model.eval()
        with autocast(cfg, device):
            x_adv = pgd(model, x, y, eps, step, 20)
            with torch.no_grad():
                model(x_adv).argmax(1)

    out = {}
    for name, fn in (("at_step", at_step), ("part_step", part_step), ("mask", mask), ("pgd20_eval", pgd20)):
        sec = time_it(fn, device, warmup, iters)
        out[name] = {"ms_per_batch": round(1000 * sec, 2), "images_per_s": round(batch / sec, 1)}
    out["part_over_at"] = round(out["part_step"]["ms_per_batch"] / out["at_step"]["ms_per_batch"], 3)
    out["cifar10_epoch_s"] = round(50000 / out["part_step"]["images_per_s"], 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", choices=("synthetic", "cifar10-npz", "cifar10", "svhn"))
    p.add_argument("--data-dir", default="data")
    p.add_argument("--models", nargs="+", default=["resnet18", "wrn34-10"], choices=["resnet18", "wrn34-10"])
    p.add_argument("--width", type=int, default=None, help="shrink the models (CPU smoke runs)")
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS),
                   help="default: fp32 and fast on CPU; all three on CUDA")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default="benchmark.json", help="where to write the record")
    args = p.parse_args(argv)
    device = pick_device(args.device, 0)
    settings = args.settings or (list(SETTINGS) if device.type == "cuda" else ["fp32", "fast"])
    data = load_dataset(args.data, args.data_dir)
    x_all = to_float(data.x_train[:args.batch_size]).to(device)
    y_all = data.y_train[:args.batch_size].to(device)
    record = {"device": library_versions()["device"], "versions": library_versions(), "data": args.data,
              "batch_size": args.batch_size, "width": args.width, "iters": args.iters, "threads":
              torch.get_num_threads(), "results": {}}
    print(f"device: {record['device']} ({device}), batch {args.batch_size}, data {args.data}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'model':<10} {'setting':<10} {'step':<11} {'ms/batch':>10} {'images/s':>10}"
    print(header + "\n" + "-" * len(header))
    for model_name in args.models:
        for setting in settings:
            r = bench_model(model_name, args.width, setting, x_all, y_all, device, args.batch_size, args.warmup,
                            args.iters, data.num_classes)
            record["results"][f"{model_name}/{setting}"] = r
            for step in ("at_step", "part_step", "mask", "pgd20_eval"):
                print(f"{model_name:<10} {setting:<10} {step:<11} {r[step]['ms_per_batch']:>10.1f} "
                      f"{r[step]['images_per_s']:>10.1f}")
            print(f"{model_name:<10} {setting:<10} PART/AT step ratio {r['part_over_at']:.3f}; "
                  f"a 50k-image PART epoch ~ {r['cifar10_epoch_s']:.0f} s")
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.json}")
    return record


if __name__ == "__main__":
    main()
