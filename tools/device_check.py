"""One command that checks a machine end to end: agreement with the CPU, determinism and resume, speed at paper
scale, bf16 against fp32, several processes. Made for a short slot on a new GPU box.

    python -m tools.device_check                       # on whatever device is here (at most ~8 minutes on one H100)
    python -m tools.device_check --quick               # reduced sizes (~2 minutes on 2 CPU cores)
    python -m tools.device_check --data-dir ../shared/data/cifar10_subset.npz --json device_check_h200.json

Sections (each check is {"name", "section", "status": pass | fail | skipped, "figure", "reason"}):
  1 cpu-vs-device   the same input on the CPU and on the device: logits of a seeded ResNet-18 (fp32, TF32 off),
                    GradCAM from both CAM backends, the masks of the cam and official sources, PGD-20 without a
                    random start; each against the tolerance in TOLERANCES. Skipped without an accelerator.
  2 determinism     a tiny run done twice with --deterministic gives bit-identical weights; stopped after its first
                    epoch and resumed, it gives the weights of the uninterrupted run.
  3 speed           (tools.device_speed) AT and PART epochs through the real training loop on a synthetic
                    CIFAR-shaped set of 50,000 images (full-width ResNet-18, batch 128) under fp32, tf32, fast and
                    bf16, with peak memory; the official pipeline's per-image mask pass on OFFICIAL_IMAGES images,
                    scaled to 50,000; WRN-34-10 on WRN_FRACTION of an epoch. The goals (GOALS) are reported, never
                    failed; a goal the device cannot measure (peak memory on a CPU, where the figure is the process's
                    maximum RSS) or whose setting was not timed (--quick times fp32 only) is `skipped` with its reason.
  4 bf16-vs-fp32    the same short training in fp32 and in bf16 (the real subset when --data-dir names a .npz,
                    synthetic otherwise): natural and PGD-20 accuracy of both, no threshold.
  5 processes       a 2-process torchrun run (NCCL with two or more GPUs, else gloo on the CPU) whose ranks must end
                    with identical weights; on a GPU box, more processes than GPUs must stop with exit code 2.
A section whose requirements are absent is `skipped` with its reason. --sections names each section once. Exit
code 0 when no check fails, 1 when one does, 2 on bad input (one line); Ctrl-C or SIGTERM stops the check (exit
130 / 143), writes the record of what ran, marked interrupted, and removes the temporary run folders. The JSON
record (--json) holds the device, library versions, commit, checks, speed rows {model, method, setting, images,
measured_s, epoch_s, images_per_s, peak_mem_mb}, goals {name, goal, figure, status: met | not met | skipped, met,
reason} and `interrupted` (null, or {"by", "section", "check"}).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":  # the repository root on the path (run as a file: python tools/device_check.py), and
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.signals import hold_signals
    hold_signals()  # Ctrl-C / SIGTERM held until the libraries have loaded (entry_point ends with one line)
import torch  # noqa: E402

from tools.device_speed import OFFICIAL_IMAGES, SETTINGS, WRN_FRACTION, quiet, section_speed
from utils import ROOT
from utils.config import script_constants
from utils.cli import Parser, nonempty
from utils.batches import to_float
from utils.data import load_dataset, synthetic
from utils.devices import configure_backends, device_name, pick_device
from utils.entry import run_script
from utils.errors import Interrupted, Terminated, UsageError, entry_point, interruption
from utils.evaluate import library_versions, provenance
from utils.records import read_record
from utils.runs import check_outputs_apart, check_writable, make_logger, save_json

# section 1: what "agrees" means between the CPU and the device (fp32, TF32 off)
TOLERANCES = {
    "logits": 1e-3,          # max |logit difference| / max(1, max |logit|)
    "cam": 1e-2,             # max |CAM difference| (maps in [0, 1])
    "mask": 0.99,            # least share of equal budget elements (elements at the threshold may flip)
    "pgd20": 3.0,            # most percentage points between the two robust accuracies
}
# the sizes of each section, full and --quick
FULL = dict(width=None, n=64, run_width=16, run_train=512, run_batch=128, steps=3, epochs_bf16=5,
            speed_images=50000, speed_batch=128, settings=SETTINGS, official=OFFICIAL_IMAGES,
            wrn_images=int(50000 * WRN_FRACTION), wrn_width=None, wrn_settings=("tf32",), timeout=600)
QUICK = dict(width=8, n=16, run_width=4, run_train=64, run_batch=32, steps=2, epochs_bf16=2,
             speed_images=64, speed_batch=32, settings=("fp32",), official=4, wrn_images=32, wrn_width=1,
             wrn_settings=("fp32",), timeout=300)


class Report:
    """The checks and speed rows found so far; each check is printed as it is added."""

    def __init__(self):
        self.checks, self.speed, self.goals = [], [], []
        self.running = None  # (section, name) of the check in progress

    def add(self, section, name, status, figure="", reason=""):
        self.checks.append({"name": name, "section": section, "status": status, "figure": figure, "reason": reason})
        print(f"[{section}] {name:<34} {status:<8} {figure}{'  (' + reason + ')' if reason else ''}", flush=True)

    def guard(self, section, name, fn):
        """Run fn() -> (status, figure, reason); an exception is a failed check, told in one line. Ctrl-C and
        SIGTERM are no Exception (KeyboardInterrupt, Terminated, Interrupted): they stop the device check."""
        self.running = (section, name)
        try:
            self.add(section, name, *fn())
        except Exception as e:  # noqa: BLE001 - a check that crashes is a failed check, not a crashed command
            self.add(section, name, "fail", "", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        self.running = None




# ----------------------------------------------------------------------------------------------------
# 1. the same input on the CPU and on the device
# ----------------------------------------------------------------------------------------------------
def section_agreement(rep: Report, device: torch.device, size: dict) -> None:
    names = ["logits", "gradcam grad-cam backend", "gradcam torch backend", "mask cam source", "mask official source",
             "pgd20 no random start"]
    if device.type == "cpu":
        for name in names:
            rep.add(1, name, "skipped", reason="no accelerator: the device is the CPU")
        return
    from attacks import pgd
    from models import build_model
    from utils.cams import compute_cam
    from utils.mask_rules import mask_from_cam
    from utils.mask_sources import official_cam
    configure_backends({"tf32": False}, device)
    torch.manual_seed(0)
    model = build_model("resnet18", 10, size["width"]).eval()
    twin = build_model("resnet18", 10, size["width"]).to(device).eval()
    twin.load_state_dict(model.state_dict())
    data = synthetic(n_train=8, n_test=size["n"])
    x, y = to_float(data.x_test), data.y_test
    xd, yd = x.to(device), y.to(device)

    def logits():
        with torch.no_grad():
            a, b = model(x), twin(xd).cpu()
        d = float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
        return ("pass" if d <= TOLERANCES["logits"] else "fail"), f"max rel diff {d:.2e} (tol {TOLERANCES['logits']})", ""
    rep.guard(1, names[0], logits)

    def cam(backend):
        def check():
            if backend == "grad-cam" and not _has("pytorch_grad_cam"):
                return "skipped", "", "grad-cam is not installed"
            d = float((compute_cam(model, x, backend=backend) - compute_cam(twin, xd, backend=backend).cpu()).abs().max())
            return ("pass" if d <= TOLERANCES["cam"] else "fail"), f"max abs diff {d:.2e} (tol {TOLERANCES['cam']})", ""
        return check
    rep.guard(1, names[1], cam("grad-cam"))
    rep.guard(1, names[2], cam("torch"))

    def masks(fn):
        def check():
            a, b = fn(model, x), fn(twin, xd).cpu()
            share = float((a == b).float().mean())
            return ("pass" if share >= TOLERANCES["mask"] else "fail"), \
                f"{100 * share:.2f}% equal elements (least {100 * TOLERANCES['mask']:.0f}%)", ""
        return check
    cam_backend = "grad-cam" if _has("pytorch_grad_cam") else "torch"
    rep.guard(1, names[3], masks(lambda m, v: mask_from_cam(compute_cam(m, v, backend=cam_backend), 8 / 255, 7 / 255)))
    rep.guard(1, names[4], masks(lambda m, v: mask_from_cam(official_cam(m, v), 8 / 255, 7 / 255)))

    def attack():
        accs = []
        for m, v, t in ((model, x, y), (twin, xd, yd)):
            xa = pgd(m, v, t, 8 / 255, 2 / 255, 20, random_start=False)
            with torch.no_grad():
                accs.append(100.0 * float((m(xa).argmax(1) == t).float().mean()))
        d = abs(accs[0] - accs[1])
        return ("pass" if d <= TOLERANCES["pgd20"] else "fail"), \
            f"robust acc CPU {accs[0]:.2f}%, device {accs[1]:.2f}% on {len(y)} images (tol {TOLERANCES['pgd20']} pts)", ""
    rep.guard(1, names[5], attack)


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------------
# 2. determinism and resume; 4. bf16 against fp32 (tiny runs of the real scripts, in this process)
# ----------------------------------------------------------------------------------------------------
def to_argv(settings: dict) -> list:
    """The training script's command line for `settings` {flag name without '--': value}: True is a bare switch,
    None or False leaves the flag out, a list or tuple gives several values."""
    argv = []
    for flag, value in settings.items():
        if value is None or value is False:
            continue
        argv.append("--" + flag)
        if value is not True:
            argv.extend(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return argv


def tiny_run(size: dict, device) -> dict:
    """The settings of the tiny run that sections 2, 4 and 5 vary: a 2-epoch PART run (1 warm-up epoch) on
    synthetic data with its natural accuracy evaluated."""
    return {"data": "synthetic", "width": size["run_width"], "n-train": size["run_train"],
            "batch-size": size["run_batch"], "num-steps": size["steps"], "epochs": 2, "warm-up": 1, "lr-milestones": 2,
            "n-eval": 32, "n-eval-epoch": 32, "eval-attacks": ["natural"], "eval-batch-size": 32, "no-mask-figure": True,
            "device": str(device)}


def _train(settings: dict) -> None:
    """Run train_eval_part.py's training with `settings` (see `to_argv`) in this process, quietly. A failed run
    raises its error (UsageError, NonFinite, ...: the check fails with its line); Ctrl-C or SIGTERM raise
    KeyboardInterrupt, Terminated or Interrupted, which stop the device check (`utils.entry.run_script`)."""
    constants = script_constants(os.path.join(ROOT, "train_eval_part.py"))

    def run():
        make_logger(None)  # the run's log lines go to the captured output
        run_script("part", constants, to_argv(settings))
    quiet(run)


def _weights(folder: str) -> dict:
    return torch.load(os.path.join(folder, "last.pt"), map_location="cpu", weights_only=False)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def section_determinism(rep: Report, device: torch.device, size: dict, work: str) -> None:
    run = {**tiny_run(size, device), "deterministic": True}
    out = {k: os.path.join(work, f"det-{k}") for k in ("a", "b", "cut")}
    done = {}

    def twice():
        _train({**run, "out": out["a"]})
        _train({**run, "out": out["b"]})
        done["a"] = True
        same = _same(_weights(out["a"]), _weights(out["b"]))
        return ("pass" if same else "fail"), "bit-identical weights" if same else "the weights differ", ""
    rep.guard(2, "two --deterministic runs", twice)

    def resumed():
        if not done:
            return "skipped", "", "the uninterrupted run failed"
        _train({**run, "epochs": 1, "out": out["cut"]})
        _train({**run, "out": out["cut"], "resume": True})
        same = _same(_weights(out["a"]), _weights(out["cut"]))
        return ("pass" if same else "fail"), "bit-identical to the uninterrupted run" if same else "the weights differ", ""
    rep.guard(2, "stopped after epoch 1, resumed", resumed)
    configure_backends({"tf32": False}, device)


def section_bf16(rep: Report, device: torch.device, size: dict, work: str, data_dir: str | None) -> None:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        rep.add(4, "bf16 against fp32", "skipped", reason="this GPU does not support bf16")
        return
    run = {**tiny_run(size, device), "epochs": size["epochs_bf16"], "lr-milestones": size["epochs_bf16"],
           "eval-attacks": ["natural", "pgd20"]}
    on = "synthetic"
    if data_dir:
        run, on = {**run, "data": "cifar10-npz", "data-dir": data_dir}, "the subset"
    if not size["width"]:  # the full check: full-width model, all training images, 1000 test images (all 500 of
        # the synthetic set, which has fewer)
        run.update({"width": None, "n-train": 0, "n-eval": 1000 if data_dir else 0, "eval-batch-size": 500,
                    "num-steps": 10})

    def check():
        res = {}
        for amp in ("none", "bf16"):
            folder = os.path.join(work, f"amp-{amp}")
            _train({**run, "amp": amp, "out": folder})
            res[amp] = read_record(folder)
        a, b = res["none"], res["bf16"]
        return "pass", (f"fp32 natural {a['natural']:.2f} PGD-20 {a['pgd20']:.2f}; bf16 natural {b['natural']:.2f} "
                        f"PGD-20 {b['pgd20']:.2f} ({a['n_eval']} test images of {on}; no threshold)"), ""
    rep.guard(4, "bf16 against fp32", check)


# ----------------------------------------------------------------------------------------------------
# 5. several processes
# ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, device: str, out: str, size: dict) -> subprocess.CompletedProcess:
    """A torchrun run of n processes, in a process group of its own: a timeout, Ctrl-C or SIGTERM here ends torchrun
    and its workers (SIGTERM, then SIGKILL after 10 s) before the exception goes on, so that none is left running in
    the temporary folder."""
    argv = to_argv({**tiny_run(size, device), "out": out})
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", f"--master-port={_free_port()}",
           os.path.join(ROOT, "train_eval_part.py"), *argv]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out_text, err_text = proc.communicate(timeout=size["timeout"])
    except BaseException:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
                proc.communicate(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out_text, err_text)


def section_processes(rep: Report, device: torch.device, size: dict, work: str) -> None:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    backend, where = ("nccl", "cuda") if gpus >= 2 else ("gloo", "cpu")

    def ddp():
        out = os.path.join(work, "ddp")
        proc = _torchrun(2, where, out, size)
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            return "fail", "", f"torchrun exit code {proc.returncode}: {lines[-1][:200] if lines else ''}"
        same = read_record(out).get("ranks_identical")
        return ("pass" if same else "fail"), \
            f"2 ranks ({backend} on {where}): {'identical' if same else 'different'} weights", \
            "" if gpus >= 2 else "fewer than 2 GPUs: the CPU run"
    rep.guard(5, "2-process torchrun", ddp)

    def too_many():
        if not gpus:
            return "skipped", "", "no GPU"
        proc = _torchrun(gpus + 1, "cuda", os.path.join(work, "too-many"), size)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        ok = proc.returncode != 0 and bool(lines) and all("GPU(s) are visible" in line for line in lines)
        return ("pass" if ok else "fail"), f"{gpus + 1} processes on {gpus} GPU(s): " + \
            (lines[0][:160] if lines else f"exit code {proc.returncode}"), ""
    rep.guard(5, "more processes than GPUs", too_many)


# ----------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """The exit code: 0 when no check fails, 1 when one does; 2 and one line for bad input; 130 / 143 when
    interrupted (`utils.errors.entry_point`)."""
    return entry_point(lambda: device_check(argv))


def build_parser() -> Parser:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=device_name, default="auto",
                   help="the device to check (against the CPU in section 1) and to time: auto (the first CUDA GPU if "
                        "present, else the CPU), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quick", action="store_true",
                   help="reduced sizes, to try the check itself (about 2 minutes on 2 CPU cores; off: paper-scale sizes)")
    p.add_argument("--data-dir", type=nonempty,
                   help="the real CIFAR-10 subset (.npz, e.g. ../shared/data/cifar10_subset.npz) for section 4's "
                        "bf16-vs-fp32 training (default: synthetic data)")
    p.add_argument("--sections", nargs="+", type=int, choices=range(1, 6), default=[1, 2, 3, 4, 5],
                   help="the sections to run, each named once (a repeated one is refused): 1 cpu-vs-device, "
                        "2 determinism, 3 speed, 4 bf16-vs-fp32, 5 processes (default: all)")
    p.add_argument("--json", default="runs/device_check.json", type=nonempty,
                   help="where to write the JSON record (device, versions, checks, speed rows, goals); checked before "
                        "any check runs (default: runs/device_check.json)")
    return p


def device_check(argv=None) -> int:
    args = build_parser().parse_args(argv)
    twice = sorted({s for s in args.sections if args.sections.count(s) > 1})
    if twice:  # a section run twice would add its checks twice to the record
        raise UsageError(f"--sections names {', '.join(map(str, twice))} more than once; name each section once")
    check_writable(args.json, "--json", folder=False)  # bad input stops here, before any check
    check_outputs_apart([("--json", args.json)], [args.data_dir] if args.data_dir else [])
    if args.data_dir:
        load_dataset("cifar10-npz", args.data_dir)
    device = pick_device(args.device, 0)
    size = QUICK if args.quick else FULL
    # section 2's --deterministic runs need cuBLAS's workspace setting before the first cuBLAS call of the process
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    versions = library_versions(device)
    print(f"device check on {device} ({versions['device']}), torch {torch.__version__}, "
          f"{'quick' if args.quick else 'full'} sizes", flush=True)
    rep, t0 = Report(), time.time()
    sections = {1: lambda work: section_agreement(rep, device, size),
                2: lambda work: section_determinism(rep, device, size, work),
                3: lambda work: section_speed(rep, device, size),
                4: lambda work: section_bf16(rep, device, size, work, args.data_dir),
                5: lambda work: section_processes(rep, device, size, work)}
    stopped, section = None, None
    try:  # the temporary folder goes whatever happens; an interrupt stops the sections, and the record is written
        with tempfile.TemporaryDirectory(prefix="device_check_") as work:
            for section in sorted(args.sections):
                sections[section](work)
    except (KeyboardInterrupt, Terminated, Interrupted) as e:
        code, what = interruption(e)
        stopped = (code, what, {"by": what, "section": section, "check": rep.running[1] if rep.running else None})
    if rep.speed:
        print(f"\n{'model':<10} {'method':<20} {'setting':<22} {'images':>7} {'s':>8} {'50k-epoch s':>12} "
              f"{'images/s':>9} {'peak MiB':>9}")
        for r in rep.speed:
            peak = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
            print(f"{r['model']:<10} {r['method']:<20} {r['setting']:<22} {r['images']:>7} {r['measured_s']:>8.1f} "
                  f"{r['epoch_s']:>12.1f} {r['images_per_s']:>9.1f} {peak:>9}")
    for g in rep.goals:
        print(f"goal {g['name']}: " + (f"skipped ({g['reason']})" if g["status"] == "skipped" else
                                       f"{g['figure']} against {g['goal']} ({g['status']})"))
    failed = [c for c in rep.checks if c["status"] == "fail"]
    record = {"device": versions["device"], "torch_device": str(device), "quick": args.quick, "versions": versions,
              **provenance(), "time_s": round(time.time() - t0, 1), "tolerances": TOLERANCES, "checks": rep.checks,
              "speed": rep.speed, "goals": rep.goals, "interrupted": stopped[2] if stopped else None}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    save_json(args.json, record)  # an OSError here is one line and exit 2 (entry_point)
    counts = {s: sum(c["status"] == s for c in rep.checks) for s in ("pass", "fail", "skipped")}
    print(f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped in {record['time_s']:.0f} s; "
          f"wrote {args.json}")
    if stopped:
        code, what, where = stopped
        during = f"section {where['section']}" + (f", check '{where['check']}'" if where["check"] else "")
        raise Interrupted(code, f"\n{what} during {during}: the check stopped; {args.json} records the "
                                f"{len(rep.checks)} check(s) done before")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
