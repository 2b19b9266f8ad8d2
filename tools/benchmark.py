"""Speed benchmark (not a test): milliseconds per batch and images/s of the training and evaluation steps.

    python -m tools.benchmark --models resnet18 --width 16 --batch-size 32       # a quick look on a CPU
    python -m tools.benchmark --data cifar10-npz --data-dir ../shared/data/cifar10_subset.npz   # on a GPU box
    python -m tools.benchmark --eval --models resnet18 --width 16                 # evaluation attacks

Training (default), on the current device, for each model and each speed setting:
  at_step        PGD-10 AT step (attack + update)
  part_step      PART step (CAM mask + PGD-10 + update)
  mask           the per-batch CAM mask alone (grad-cam in fp32, the torch backend in the fast settings)
  official_mask  one batch of the official source's mask pass (torchcam-style CAM, bicubic resize, rule); the
                 pass costs this once per batch per epoch, beside the per-batch mask of the cam source
  pgd20_eval     PGD-20 evaluation of a batch
and the PART / AT ratio and the implied time of a 50,000-image CIFAR-10 epoch.
--eval: each evaluation attack on --eval-batch-size test images (natural, pgd20, pgd50, pgd100, mma, cw, part-pgd,
and aa when asked for), the median of --iters rounds, with its cost relative to PGD-20.
--clock cpu times with the process's CPU time instead of wall time: on a CPU shared with other runs (and with
OMP_NUM_THREADS=1) it measures the work done, which the other processes do not stretch.
Every timing follows at least one warm-up call. A JSON record (device, versions, settings, figures) goes to --json.
"""
import argparse
import json
import os
import sys
import time

if __name__ == "__main__":  # run as a file (python tools/benchmark.py): put the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import torch.nn.functional as F

from attacks import pgd
from models import MODELS
from utils.data import DATASETS, load_dataset, to_float
from utils.engine import autocast, configure_backends, pick_device, prepare_model
from utils.evaluate import eval_attack, evaluate, library_versions
from utils.mask_rules import mask_from_cam
from utils.mask_sources import epsilon_mask, official_cam

SETTINGS = {
    "fp32": dict(channels_last=False, tf32=False, amp="none", cam_backend="grad-cam"),
    "fast": dict(channels_last=True, tf32=True, amp="none", cam_backend="torch"),
    "fast-bf16": dict(channels_last=True, tf32=True, amp="bf16", cam_backend="torch"),
}
EVAL_ATTACKS = ("natural", "pgd20", "pgd50", "pgd100", "mma", "cw", "part-pgd")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_it(fn, device, warmup, iters, clock=time.perf_counter):
    for _ in range(max(1, warmup)):  # first calls pay for allocation, cudnn autotuning, lazy imports
        fn()
    _sync(device)
    t = clock()
    for _ in range(iters):
        fn()
    _sync(device)
    return (clock() - t) / iters


def bench_model(model_name, width, setting, x_all, y_all, device, batch, warmup, iters, num_classes,
                clock=time.perf_counter):
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

    def official_mask():
        return mask_from_cam(official_cam(model, x), eps, low, "official")

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
    for name, fn in (("at_step", at_step), ("part_step", part_step), ("mask", mask), ("official_mask", official_mask),
                     ("pgd20_eval", pgd20)):
        sec = time_it(fn, device, warmup, iters, clock)
        out[name] = {"ms_per_batch": round(1000 * sec, 2), "images_per_s": round(batch / sec, 1)}
    out["part_over_at"] = round(out["part_step"]["ms_per_batch"] / out["at_step"]["ms_per_batch"], 3)
    out["cifar10_epoch_s"] = round(50000 / out["part_step"]["images_per_s"], 1)
    return out


def bench_eval(model_name, width, data, device, batch, attacks, warmup, iters, clock=time.perf_counter):
    """Median seconds for each evaluation attack on the first `batch` test images over `iters` rounds (the attacks
    interleaved within a round), and the ratio to PGD-20."""
    torch.manual_seed(0)
    model = prepare_model(dict(model=model_name, width=width), data.num_classes, device).eval()
    cfg = {"low_epsilon": 7 / 255, "cam": "gradcam", "mask_rule": "official", "cam_layer": None,
           "cam_backend": "grad-cam"}
    for name in attacks:
        for _ in range(warmup):
            evaluate(model, data, attacks=(name,), n_eval=min(batch, 8), batch_size=batch, cfg=cfg)
    times = {name: [] for name in attacks}
    for _ in range(iters):
        for name in attacks:
            _sync(device)
            t = clock()
            evaluate(model, data, attacks=(name,), n_eval=batch, batch_size=batch, cfg=cfg)
            _sync(device)
            times[name].append(clock() - t)
    out = {name: {"s": round(sorted(v)[len(v) // 2], 3), "runs_s": [round(t, 3) for t in v]} for name, v in times.items()}
    base = out.get("pgd20", {}).get("s")
    for name in out:
        out[name]["vs_pgd20"] = round(out[name]["s"] / base, 2) if base else None
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", choices=list(DATASETS), help="data set (default: synthetic)")
    p.add_argument("--data-dir", default="data", help="data-set root, or the .npz file for cifar10-npz")
    p.add_argument("--models", nargs="+", default=["resnet18"], choices=list(MODELS), help="models (default: resnet18)")
    p.add_argument("--width", type=int, default=None, help="shrink the models (CPU runs); default: standard width")
    p.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS),
                   help="speed settings (default: fp32 and fast on CPU; all three on CUDA)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default: 128)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing, at least 1 (default: 2)")
    p.add_argument("--iters", type=int, default=5, help="timed calls (default: 5)")
    p.add_argument("--eval", action="store_true", help="time the evaluation attacks instead of training steps")
    p.add_argument("--eval-batch-size", type=int, default=256, help="test images per evaluation attack (default: 256)")
    p.add_argument("--eval-attacks", nargs="+", default=list(EVAL_ATTACKS), help="attacks to time with --eval "
                   "(default: natural pgd20 pgd50 pgd100 mma cw part-pgd; add aa if you can wait)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (for a shared CPU; default: wall)")
    p.add_argument("--json", default="runs/benchmark.json", help="where to write the record (default: runs/benchmark.json)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.iters < 1:
        p.error("--warmup and --iters must be at least 1")
    for name in args.eval_attacks:
        try:
            eval_attack(name)
        except ValueError as e:
            p.error(str(e))
    device = pick_device(args.device, 0)
    data = load_dataset(args.data, args.data_dir)
    record = {"device": library_versions(device)["device"], "versions": library_versions(device), "data": args.data,
              "width": args.width, "threads": torch.get_num_threads(), "clock": args.clock, "results": {}}
    print(f"device: {record['device']} ({device}), data {args.data}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock")
    if args.eval:
        record["eval_batch_size"] = args.eval_batch_size
        header = f"{'model':<10} {'attack':<10} {'s per ' + str(args.eval_batch_size) + ' images':>18} {'x PGD-20':>9}"
        print(header + "\n" + "-" * len(header))
        for model_name in args.models:
            r = bench_eval(model_name, args.width, data.to(device), device, args.eval_batch_size, args.eval_attacks,
                           args.warmup, args.iters, CLOCKS[args.clock])
            record["results"][f"{model_name}/eval"] = r
            for name, v in r.items():
                ratio = "" if v["vs_pgd20"] is None else f"{v['vs_pgd20']:.2f}"
                print(f"{model_name:<10} {name:<10} {v['s']:>18.2f} {ratio:>9}")
    else:
        settings = args.settings or (list(SETTINGS) if device.type == "cuda" else ["fp32", "fast"])
        x_all = to_float(data.x_train[:args.batch_size]).to(device)
        y_all = data.y_train[:args.batch_size].to(device)
        record.update(batch_size=args.batch_size, iters=args.iters, warmup=args.warmup)
        header = f"{'model':<10} {'setting':<10} {'step':<14} {'ms/batch':>10} {'images/s':>10}"
        print(header + "\n" + "-" * len(header))
        for model_name in args.models:
            for setting in settings:
                r = bench_model(model_name, args.width, setting, x_all, y_all, device, args.batch_size, args.warmup,
                                args.iters, data.num_classes, CLOCKS[args.clock])
                record["results"][f"{model_name}/{setting}"] = r
                for step in ("at_step", "part_step", "mask", "official_mask", "pgd20_eval"):
                    print(f"{model_name:<10} {setting:<10} {step:<14} {r[step]['ms_per_batch']:>10.1f} "
                          f"{r[step]['images_per_s']:>10.1f}")
                print(f"{model_name:<10} {setting:<10} PART/AT step ratio {r['part_over_at']:.3f}; "
                      f"a 50k-image PART epoch ~ {r['cifar10_epoch_s']:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.json}")
    return record


if __name__ == "__main__":
    main()
