"""Speed benchmark (not a test): milliseconds per batch and images/s of the training and evaluation steps.

    python -m tools.benchmark --models resnet18 --width 16 --batch-size 32       # a quick look on a CPU
    python -m tools.benchmark --data cifar10-npz --data-dir ../shared/data/cifar10_subset.npz   # on a GPU box
    python -m tools.benchmark --eval --models resnet18 --width 16                 # evaluation attacks
    python -m tools.benchmark --epoch --settings tf32 fast bf16 fast+compile      # real epochs, on a GPU box

Training (default), on the current device, for each model and each speed setting:
  at_step        PGD-10 AT step (attack + update)
  part_step      PART step (CAM mask + PGD-10 + update)
  mask           the per-batch CAM mask alone (grad-cam in fp32, the torch backend in the fast settings)
  official_mask  the official pipeline's mask pass over a batch as the official code runs it: one image at a time
                 (torchcam when installed, else our transcription: the same CAM, bicubic resize and rule)
  pgd20_eval     PGD-20 evaluation of a batch, as the evaluation runs it (fp32, whatever the setting)
and the PART / AT ratio and the implied time of a 50,000-image CIFAR-10 epoch.
--epoch: real epochs through the training loop (utils.engine.train_epoch) instead of one repeated batch: an AT
epoch and a PART epoch over --n-train images for each model and setting, with seconds, images/s and peak memory.
A setting is a preset (fp32, tf32, bf16, fast = channels_last+tf32+torch-cam, fast-bf16) or any '+'-joined
combination of the speed flags channels_last, tf32, bf16, torch-cam and compile (e.g. tf32+compile, fast+bf16).
--eval: each evaluation attack on --eval-batch-size test images (natural, pgd20, pgd50, pgd100, mma, cw, part-pgd,
and aa when asked for), the median of --iters rounds, with its cost relative to PGD-20.
--clock cpu times with the process's CPU time instead of wall time: on a CPU shared with other runs (and with
OMP_NUM_THREADS=1) it measures the work done, which the other processes do not stretch.
Every timing follows at least one warm-up call. A JSON record (device, versions, settings, figures) goes to --json,
whose path is checked before any timing. Bad input exits 2 with one line. Ctrl-C or SIGTERM while timing stops the
benchmark (exit 130 / 143) and writes the record of the timings done so far, its `interrupted` naming the signal.
"""
import argparse
import os
import sys
import time

if __name__ == "__main__":  # the repository root on the path (run as a file: python tools/benchmark.py), and
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.signals import hold_signals
    hold_signals()  # Ctrl-C / SIGTERM held until the libraries have loaded (entry_point ends with one line)
import torch
import torch.nn.functional as F

from attacks import pgd
from models import MODELS
from utils import ROOT
from utils.cams import find_target_layer, unwrap
from utils.config import parse, script_constants
from utils.flag_spec import MAX_WIDTH, eval_attack
from utils.cli import POSITIVE, Parser, nonempty, number
from utils.batches import to_float
from utils.data import DATASETS, load_dataset
from utils.devices import (autocast, configure_backends, device_name, peak_memory_mb, pick_device, reset_peak_memory,
                           synchronize)
from utils.engine import build_run, prepare_model, prepare_training, train_epoch
from utils.errors import Interrupted, Terminated, UsageError, entry_point, interruption
from utils.evaluate import evaluate, library_versions
from utils.runs import check_outputs_apart, check_writable, save_json
from utils.mask_rules import mask_from_cam
from utils.mask_sources import epsilon_mask, official_cam, official_postprocess

# the speed flags a setting combines, as config values, and the named presets
SPEED_FLAGS = {"channels_last": dict(channels_last=True), "tf32": dict(tf32=True), "bf16": dict(amp="bf16"),
               "torch-cam": dict(cam_backend="torch"), "compile": dict(compile=True)}
PRESETS = {"fp32": (), "tf32": ("tf32",), "bf16": ("bf16",), "fast": ("channels_last", "tf32", "torch-cam"),
           "fast-bf16": ("channels_last", "tf32", "torch-cam", "bf16")}
FP32 = dict(channels_last=False, tf32=False, amp="none", cam_backend="grad-cam", compile=False)


def speed_setting(text: str) -> dict:
    """A setting's config values: a preset name or a '+'-joined combination of presets and SPEED_FLAGS."""
    cfg = dict(FP32)
    parts = text.split("+")
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r} names {', '.join(twice)} twice; name each part once")
    for part in parts:
        if part not in PRESETS and part not in SPEED_FLAGS:
            raise argparse.ArgumentTypeError(f"unknown speed setting {part!r}; use a preset ({', '.join(PRESETS)}) or "
                                             f"'+'-joined flags ({', '.join(SPEED_FLAGS)})")
        for flag in PRESETS.get(part, (part,)):
            cfg.update(SPEED_FLAGS[flag])
    return cfg


def setting_flags(cfg: dict) -> list:
    """The training scripts' flags that give a setting's config values."""
    return (["--channels-last"] if cfg["channels_last"] else []) + (["--tf32"] if cfg["tf32"] else []) + \
        ["--amp", cfg["amp"], "--cam-backend", cfg["cam_backend"]] + (["--compile"] if cfg["compile"] else [])


def official_image_pass(model, x, eps, low, cam="gradcam", layer=None) -> tuple[torch.Tensor, str]:
    """The official pipeline's masks for x (B, 3, H, W) computed as the official code does, one image at a time:
    with torchcam's GradCAM when it is installed (cam 'gradcam'), else with our transcription (`official_cam` on
    one image). Returns (budgets shaped like x, 'torchcam' or 'transcription')."""
    size = tuple(x.shape[-2:])
    try:
        from torchcam.methods import GradCAM  # optional; imported only here
    except ImportError:
        GradCAM = None
    if GradCAM is not None and cam == "gradcam":
        net = unwrap(model).eval()
        masks = []
        with GradCAM(net, target_layer=find_target_layer(net, layer)) as extractor:
            for i in range(x.shape[0]):
                out = net(x[i:i + 1])
                raw = extractor(out.argmax(1).item(), out)[0].detach().float()  # (1, h, w), relu'd
                masks.append(mask_from_cam(official_postprocess(raw.reshape(1, *raw.shape[-2:]), size), eps, low))
        return torch.cat(masks), "torchcam"
    return torch.cat([mask_from_cam(official_cam(model, x[i:i + 1], cam, layer), eps, low)
                      for i in range(x.shape[0])]), "transcription"


def bench_epochs(model_name, width, setting, data, device, batch, n_train, log_every=None,
                 data_name="synthetic", clock=time.perf_counter) -> list[dict]:
    """Time one AT epoch and one PART epoch (warm-up 0, PGD-10, the default `cam` source) of `model_name` on the
    first `n_train` training images of `data` (a Dataset) through the real training loop, under `setting` (a
    name `speed_setting` reads), timed with `clock`. Rows {model, method, setting, images, measured_s, epoch_s
    (scaled to 50,000 images), images_per_s, peak_mem_mb, compile_s}."""
    cfg_speed = speed_setting(setting)
    argv = ["--data", data_name, "--model", model_name, "--batch-size", str(batch), "--n-train", str(n_train),
            "--epochs", "1", "--warm-up", "0", "--device", str(device), *setting_flags(cfg_speed)]
    if width:
        argv += ["--width", str(width)]
    cfg, _ = parse("part", script_constants(os.path.join(ROOT, "train_eval_part.py")), argv)
    configure_backends(cfg, device)
    run = build_run(cfg, 0, 1, device, data=data)
    prepare_training(run)
    n = min(n_train, data.x_train.shape[0]) if n_train else data.x_train.shape[0]
    cfg["n_train"] = min(n, 2 * batch)  # untimed: two batches of each kind pay for autotuning and lazy imports
    for masked in (False, True):
        train_epoch(run, 1, masked)
    cfg["n_train"] = n
    rows = []
    for method, masked in (("AT", False), ("PART", True)):
        synchronize(device)
        reset_peak_memory(device)
        t = clock()
        train_epoch(run, 1, masked)
        synchronize(device)
        sec = clock() - t
        rows.append({"model": model_name, "method": method, "setting": setting, "images": n,
                     "measured_s": round(sec, 2), "epoch_s": round(sec * 50000 / n, 1),
                     "images_per_s": round(n / sec, 1), "peak_mem_mb": peak_memory_mb(device),
                     "compile_s": run.compile_time_s})
    return rows


EVAL_ATTACKS = ("natural", "pgd20", "pgd50", "pgd100", "mma", "cw", "part-pgd")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_it(fn, device, warmup, iters, clock=time.perf_counter):
    for _ in range(max(1, warmup)):  # first calls pay for allocation, cudnn autotuning, lazy imports
        fn()
    synchronize(device)
    t = clock()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (clock() - t) / iters


def bench_model(model_name, width, setting, data, device, batch, warmup, iters, clock=time.perf_counter):
    """Per-batch timings of the training steps on the first `batch` training images of `data` (on `device`)."""
    cfg = dict(model=model_name, width=width, **speed_setting(setting))
    configure_backends(cfg, device)
    torch.manual_seed(0)
    model = prepare_model(cfg, data.num_classes, device)
    if cfg["compile"]:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x, y = to_float(data.x_train[:batch]), data.y_train[:batch]
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
        return official_image_pass(model, x, eps, low)

    def part_step():
        budget = mask()
        with autocast(cfg, device):
            x_adv = pgd(model, x, y, budget, step, 10)
        update(x_adv)

    def pgd20():  # as the evaluation runs it: fp32 whatever the setting, the test images as it cuts them
        evaluate(model, data, attacks=("pgd20",), eps=eps, step_size=step, n_eval=batch, batch_size=batch)

    out = {"official_mask_by": official_image_pass(model, x[:1], eps, low)[1]}
    reset_peak_memory(device)
    for name, fn in (("at_step", at_step), ("part_step", part_step), ("mask", mask), ("official_mask", official_mask),
                     ("pgd20_eval", pgd20)):
        sec = time_it(fn, device, warmup, iters, clock)
        out[name] = {"ms_per_batch": round(1000 * sec, 2), "images_per_s": round(batch / sec, 1)}
    out["peak_mem_mb"] = peak_memory_mb(device)
    out["part_over_at"] = round(out["part_step"]["ms_per_batch"] / out["at_step"]["ms_per_batch"], 3)
    out["cifar10_epoch_s"] = round(50000 / out["part_step"]["images_per_s"], 1)
    return out


def _setting_name(text: str) -> str:
    speed_setting(text)  # raises argparse.ArgumentTypeError for an unknown part
    return text


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
            synchronize(device)
            t = clock()
            evaluate(model, data, attacks=(name,), n_eval=batch, batch_size=batch, cfg=cfg)
            synchronize(device)
            times[name].append(clock() - t)
    out = {name: {"s": round(sorted(v)[len(v) // 2], 3), "runs_s": [round(t, 3) for t in v]} for name, v in times.items()}
    base = out.get("pgd20", {}).get("s")
    for name in out:
        out[name]["vs_pgd20"] = round(out[name]["s"] / base, 2) if base else None
    return out


def build_parser() -> Parser:
    """The tool's command line (tools/flags.py documents it from here)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic", choices=list(DATASETS), help="data set to time on (default: synthetic, built in)")
    p.add_argument("--data-dir", default="data", type=nonempty,
                   help="where --data is: its root folder, or for cifar10-npz the .npz file (default: data)")
    p.add_argument("--models", nargs="+", default=["resnet18"], choices=list(MODELS), help="models to time, one after the other (default: resnet18)")
    p.add_argument("--width", type=number(int, 1, MAX_WIDTH, optional=True), default=None,
                   help="ResNet-18's first-stage channels (standard 64) or the WRN's widen factor (standard 10), "
                        "smaller for CPU runs; none: the standard models (default: none)")
    p.add_argument("--settings", nargs="+", default=None, type=_setting_name,
                   help="speed settings: presets fp32, tf32, bf16, fast, fast-bf16 or '+'-joined flags channels_last, "
                        "tf32, bf16, torch-cam, compile (default: fp32 and fast on CPU; fp32, fast, fast-bf16 on CUDA)")
    p.add_argument("--epoch", action="store_true",
                   help="time real epochs (an AT and a PART epoch) through the training loop instead of one repeated "
                        "batch")
    p.add_argument("--n-train", type=number(int, 0), default=0,
                   help="--epoch: training images per timed epoch (0: all of --data); epoch_s is the time scaled to "
                        "50,000 images (default: 0)")
    p.add_argument("--batch-size", type=POSITIVE, default=128, help="training batch in images (default: 128)")
    p.add_argument("--warmup", type=POSITIVE, default=2,
                   help="untimed calls of each step (with --eval: of each attack) before its timing, which pay for "
                        "allocation, cuDNN autotuning and lazy imports; at least 1 (default: 2)")
    p.add_argument("--iters", type=POSITIVE, default=5,
                   help="timed calls of each step, whose mean gives ms per batch; with --eval, timed rounds of every "
                        "attack, whose median is reported (default: 5)")
    p.add_argument("--eval", action="store_true",
                   help="time the evaluation attacks (in fp32, as the evaluation runs them) instead of training steps")
    p.add_argument("--eval-batch-size", type=POSITIVE, default=256,
                   help="test images per evaluation attack (default: 256)")
    p.add_argument("--eval-attacks", nargs="+", type=eval_attack, default=list(EVAL_ATTACKS),
                   help="attacks to time with --eval (default: natural pgd20 pgd50 pgd100 mma cw part-pgd; add aa if "
                        "you can wait)")
    p.add_argument("--device", default="auto", type=device_name,
                   help="device to time on: auto (the first CUDA GPU if present, else the CPU), cpu, cuda or cuda:N "
                        "(default: auto)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="wall: wall-clock time; cpu: this process's CPU time, which other processes on a shared CPU "
                        "do not stretch (default: wall)")
    p.add_argument("--json", default="runs/benchmark.json", type=nonempty,
                   help="where to write the JSON record (device, versions, settings, timings); checked before any "
                        "timing (default: runs/benchmark.json)")
    return p


def benchmark(argv=None) -> dict:
    """The tool: parse and check the flags and --json, time, print, write the record; returns the record."""
    args = build_parser().parse_args(argv)
    for flag, values in (("--models", args.models), ("--settings", args.settings or []),
                         ("--eval-attacks", args.eval_attacks)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:  # a second timing of one name would overwrite (or, for an attack, pool with) the first
            raise UsageError(f"{flag} names {', '.join(twice)} more than once")
    same = [(a, b) for i, a in enumerate(args.settings or []) for b in (args.settings or [])[:i]
            if speed_setting(a) == speed_setting(b)]
    if same:  # e.g. fast and channels_last+tf32+torch-cam: one setting timed twice under two names
        raise UsageError(f"--settings {same[0][1]} and {same[0][0]} are the same setting; name it once")
    check_writable(args.json, "--json", folder=False)
    check_outputs_apart([("--json", args.json)], [] if args.data == "synthetic" else [args.data_dir])
    if args.epoch and args.eval:
        raise UsageError("--epoch times training epochs and --eval the evaluation attacks; give one of them")
    given = sys.argv[1:] if argv is None else list(argv)
    mode = "--epoch" if args.epoch else "--eval" if args.eval else "the training-step timing"
    unused = {"--epoch": ("--warmup", "--iters", "--eval-batch-size", "--eval-attacks"), "--eval": ("--batch-size",),
              "the training-step timing": ("--eval-batch-size", "--eval-attacks")}[mode]
    named = [f for f in unused if any(a == f or a.startswith(f + "=") for a in given)]
    if named:
        raise UsageError(f"{', '.join(named)} {'do' if len(named) > 1 else 'does'} nothing with {mode}; drop "
                         f"{'them' if len(named) > 1 else 'it'} (or choose the mode that uses {'them' if len(named) > 1 else 'it'})")
    if args.settings and args.eval:
        raise UsageError("--settings are the training timings' speed settings; --eval times the attacks as the "
                         "evaluation runs them (fp32); drop one")
    if args.n_train and not args.epoch:
        raise UsageError("--n-train sets the images of an --epoch timing; give --epoch too")
    device = pick_device(args.device, 0)
    data = load_dataset(args.data, args.data_dir)
    n_train, n_test = data.x_train.shape[0], data.x_test.shape[0]
    if args.eval and args.eval_batch_size > n_test:
        raise UsageError(f"--eval-batch-size {args.eval_batch_size} is more than the {n_test} test images of "
                         f"{args.data}: the timings would be of {n_test} images; give at most {n_test}")
    if not args.eval and not args.epoch and args.batch_size > min(n_train, n_test):
        raise UsageError(f"--batch-size {args.batch_size} is more than the {n_train} training or {n_test} test images "
                         f"of {args.data} (a batch of each is timed): images/s would count images never used; give at "
                         f"most {min(n_train, n_test)}")
    epoch_images = min(args.n_train or n_train, n_train)
    if args.epoch and args.batch_size > epoch_images:
        raise UsageError(f"--batch-size {args.batch_size} is more than the {epoch_images} training images an --epoch "
                         f"timing uses; give at most {epoch_images}")
    record = {"device": library_versions(device)["device"], "versions": library_versions(device), "data": args.data,
              "width": args.width, "threads": torch.get_num_threads(), "clock": args.clock, "results": {},
              "interrupted": None}
    print(f"device: {record['device']} ({device}), data {args.data}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock")
    try:
        time_all(args, device, data, record)
    except (KeyboardInterrupt, Terminated, Interrupted) as e:  # what was timed is kept, and the record says so
        code, what = interruption(e)
        record["interrupted"] = what
        _write(args.json, record)
        raise Interrupted(code, f"\n{what}: the benchmark stopped; {args.json} records the timings done before") \
            from None
    _write(args.json, record)
    return record


def _write(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_json(path, record)
    print(f"wrote {path}")


def time_all(args, device, data, record: dict) -> None:
    """The timings of the mode `args` asks for (--epoch, --eval or training steps), printed and added to `record`
    as each is done."""
    if args.epoch:
        data = data.to(device)
        settings = args.settings or (["fp32", "fast", "fast-bf16"] if device.type == "cuda" else ["fp32", "fast"])
        record.update(batch_size=args.batch_size, mode="epoch", speed=[])
        header = (f"{'model':<10} {'method':<6} {'setting':<24} {'images':>7} {'s':>8} {'50k-epoch s':>12} "
                  f"{'images/s':>9} {'peak MiB':>9}")
        print(header + "\n" + "-" * len(header))
        for model_name in args.models:
            for setting in settings:
                for r in bench_epochs(model_name, args.width, setting, data, device, args.batch_size, args.n_train,
                                      data_name=args.data, clock=CLOCKS[args.clock]):
                    record["speed"].append(r)
                    print(f"{model_name:<10} {r['method']:<6} {setting:<24} {r['images']:>7} {r['measured_s']:>8.1f} "
                          f"{r['epoch_s']:>12.1f} {r['images_per_s']:>9.1f} {r['peak_mem_mb']:>9.1f}")
    elif args.eval:
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
        settings = args.settings or (["fp32", "fast", "fast-bf16"] if device.type == "cuda" else ["fp32", "fast"])
        data = data.to(device)
        record.update(batch_size=args.batch_size, iters=args.iters, warmup=args.warmup)
        header = f"{'model':<10} {'setting':<10} {'step':<14} {'ms/batch':>10} {'images/s':>10}"
        print(header + "\n" + "-" * len(header))
        for model_name in args.models:
            for setting in settings:
                r = bench_model(model_name, args.width, setting, data, device, args.batch_size, args.warmup,
                                args.iters, CLOCKS[args.clock])
                record["results"][f"{model_name}/{setting}"] = r
                for step in ("at_step", "part_step", "mask", "official_mask", "pgd20_eval"):
                    print(f"{model_name:<10} {setting:<10} {step:<14} {r[step]['ms_per_batch']:>10.1f} "
                          f"{r[step]['images_per_s']:>10.1f}")
                print(f"{model_name:<10} {setting:<10} PART/AT step ratio {r['part_over_at']:.3f}; "
                      f"a 50k-image PART epoch ~ {r['cifar10_epoch_s']:.0f} s")


def main(argv=None) -> int:
    """The entry point: the exit code of `benchmark` (0; 2 with one line for bad input, missing data or out of
    memory; 130 / 143 when interrupted)."""
    def body():
        benchmark(argv)
    return entry_point(body)


if __name__ == "__main__":
    sys.exit(main())
