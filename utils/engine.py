"""The one training engine behind train_eval_part.py, train_eval_part_t.py and train_eval_part_m.py.

Schedule: epochs 1..warm_up train the plain method (AT / TRADES / MART) at full eps; later epochs attack
each batch within the per-element budget its mask source gives (utils.mask_sources). Then the evaluation
suite on the test set (utils.evaluate). Reading order: `train` sets up a run, runs its epochs and writes its
record; `train_epoch` is one epoch; `eval_only` evaluates a saved checkpoint.
"""
import importlib.util
import math
import os
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from models import CheckpointMismatch, build_model, load_checkpoint

from . import config as config_mod
from .cams import check_target_layer
from .config import lr_at
from .data import Dataset, epoch_generator, load_dataset, num_batches, seed64, to_float, train_batches, train_size
from .errors import Stop, Terminated, UsageError, entry_point
from .evaluate import (corruption_files, evaluate, evaluate_corruptions, make_record, markdown_table, per_image_arrays,
                       per_image_name)
from .figures import save_mask_figure
from .mask_sources import MASK_SOURCES, BudgetStats, MaskSource, make_source
from .methods import METHODS, TrainLoss
from .runs import (RunFolder, append_metrics, check_out_path, check_writable, clear_run, drop_later_files, holds_run,
                   make_logger, read_checkpoint, rng_state, save_checkpoint, save_json, save_npz, save_text, seed_everything,
                   set_rng_state, truncate_metrics)


class NonFinite(RuntimeError):
    """The loss or the weights stopped being finite; the message says which checkpoint is the last good one."""


class Interrupted(Stop):
    """A run stopped by Ctrl-C or SIGTERM after it started: the exit code and what to do next."""


# ----------------------------------------------------------------------------------------------------
# devices and models
# ----------------------------------------------------------------------------------------------------
def setup_distributed(device_name: str):
    """(rank, world_size, local_rank) from the distributed environment: the variables torchrun sets (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which the grid's submitit executors also export from the
    job's environment. Initialises the process group (NCCL when the processes run on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"WORLD_SIZE is {world} but {', '.join(missing)} not set: start the processes with torchrun "
                         f"(or the grid's local or slurm executor), which sets them")
    if device_name.startswith("cuda:"):
        raise UsageError(f"--device {device_name} would put every torchrun process on one GPU; use --device cuda "
                         f"(each process takes the GPU of its LOCAL_RANK)")
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if gpus:  # before any CUDA call: every rank stops with one line instead of rank N failing inside CUDA
        per_node, visible = int(os.environ.get("LOCAL_WORLD_SIZE", world)), torch.cuda.device_count()
        if max(per_node, local + 1) > visible:
            raise UsageError(f"torchrun started {per_node} processes on this node but only {visible} GPU(s) are "
                             f"visible; use --nproc-per-node {visible} (or fewer), or --device cpu")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if gpus else "gloo")
    return dist.get_rank(), world, local


def barrier(world: int):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but CUDA is not available here")
    return torch.device(name)


def configure_backends(cfg: dict, device: torch.device) -> None:
    """The backend switches of a run: TF32 on CUDA as --tf32 says; with --deterministic, deterministic cuDNN and
    cuBLAS algorithms (the workspace variable set before the first cuBLAS call) and no autotuning, otherwise
    cuDNN autotuning on CUDA. Sets the process-wide switches every time, so a later run is not left with them."""
    deterministic = bool(cfg.get("deterministic"))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # torch flags the backward of adaptive_avg_pool2d on CUDA, whose 1x1 output (the models' global pooling)
        # takes the kernel without atomics: warn rather than stop, hide that one warning; the device check
        # (tools.device_check, section 2) is what shows the reruns are bit-identical
        warnings.filterwarnings("ignore", message=".*adaptive_avg_pool2d_backward_cuda.*")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = cfg["tf32"]
        torch.backends.cudnn.allow_tf32 = cfg["tf32"]


def autocast(cfg: dict, device: torch.device):
    if cfg.get("amp") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_model(cfg: dict, num_classes: int, device: torch.device) -> torch.nn.Module:
    model = build_model(cfg["model"], num_classes, cfg.get("width")).to(device)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mb` (on CUDA; a process's maximum RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """MiB: on CUDA the peak of torch.cuda.max_memory_allocated on `device` since `reset_peak_memory`; elsewhere
    the process's maximum resident set size so far."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)


def finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


# ----------------------------------------------------------------------------------------------------
# a run
# ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    cfg: dict
    data: Dataset
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    source: MaskSource
    device: torch.device
    rank: int
    world: int
    log: object
    start_epoch: int = 1
    best: float = -1.0
    folder: RunFolder | None = None
    train_module: torch.nn.Module | None = None
    tb: object = None
    last_saved: int | None = None  # epoch of the newest last.pt this process wrote or resumed from
    attack_model: torch.nn.Module | None = None  # what the training attacks run: the model, compiled with --compile
    compile_time_s: float | None = None
    notes: tuple = ()  # lines for log.txt found before it was opened

    @property
    def out(self) -> str:
        return self.cfg["out"]

    def checkpoint(self, epoch: int, name: str) -> None:
        save_checkpoint(os.path.join(self.out, name), {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch,
            "best_pgd20": self.best, "rng": rng_state(), "mask_source": self.source.state_dict(), "config": self.cfg})
        if name == "last.pt":
            self.last_saved = epoch


def _uses_cam(cfg: dict) -> bool:
    return (cfg["mask"] and MASK_SOURCES[cfg["mask_source"]].uses_cam) or "part-pgd" in cfg["eval_attacks"] \
        or bool(cfg["cam_layer"])


def check_resume(cfg: dict, path: str) -> dict:
    """Read the checkpoint `--resume` names and check it can continue this run: it has optimiser and RNG state,
    and its config agrees on every training key. Returns the checkpoint. Raises UsageError naming each
    differing key with both values."""
    ckpt = read_checkpoint(path)
    if not all(k in ckpt for k in ("optimizer", "rng", "epoch", "config")):
        raise UsageError(f"{path} holds model weights only (no optimizer or RNG state): it can be evaluated with "
                         f"--eval-only, but not resumed")
    saved = upgrade_config(ckpt["config"], f"--resume: {path}")
    epoch = ckpt["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= saved["epochs"]:
        raise UsageError(f"--resume: {path} records no usable epoch (epoch {epoch!r} of the {saved['epochs']} its "
                         f"config trains); it is damaged or not ours")
    best = ckpt.get("best_pgd20", -1.0)
    if isinstance(best, bool) or not isinstance(best, (int, float)) or not -1 <= best <= 100:
        raise UsageError(f"--resume: {path} records no usable best PGD-20 (best_pgd20 {best!r}); it is damaged")
    diffs = config_mod.training_differences(saved, cfg, epoch)
    if diffs:
        raise UsageError(f"--resume: {path} was trained with other settings ({'; '.join(diffs)}); resume with the "
                         f"run's own settings, or start a new run in another --out")
    return ckpt


def upgrade_config(saved, where: str) -> dict:
    """A checkpoint's config, checked as flags are (`config.check_saved`), with the keys later versions added,
    resolved again. Raises UsageError naming `where` when it is not a usable config."""
    return config_mod.check_saved(saved, where)


def check_inputs(cfg: dict, world: int) -> None:
    """The checks that need neither data nor model: the run folder, the batch split, the optional inputs."""
    out = cfg["out"]
    check_out_path(out)
    existing = holds_run(out)
    if existing and not (cfg.get("resume") or cfg.get("overwrite")):
        resume = "add --resume to continue it, " if any(f.endswith(".pt") for f in existing) else ""
        raise UsageError(f"{out} holds another run ({', '.join(existing)}); {resume}add --overwrite to delete its "
                         f"files and start over, or choose another --out")
    if cfg["batch_size"] % world:
        raise UsageError(f"--batch-size {cfg['batch_size']} is not divisible by the {world} processes")
    needs = {"tensorboard": "--tensorboard"} if cfg.get("tensorboard") else {}
    if _uses_cam(cfg) and cfg["cam_backend"] == "grad-cam":
        needs["pytorch_grad_cam"] = "the grad-cam CAM backend"
    check_packages(cfg, needs)


def check_packages(cfg: dict, needs: dict | None = None) -> None:
    """Raise UsageError (one line with the pip command) if a package the evaluation attacks, or `needs`
    ({'module|alternative': what needs it}), asks for is not installed."""
    needs = dict(needs or {})
    if "aa" in cfg["eval_attacks"]:
        needs["pyautoattack|autoattack"] = "AutoAttack (--eval-attacks aa)"
    if "aa-official" in cfg["eval_attacks"]:
        needs["torchattacks"] = "the official code's AutoAttack (--eval-attacks aa-official)"
    for modules, what in needs.items():
        if not any(importlib.util.find_spec(m) for m in modules.split("|")):
            package = {"pytorch_grad_cam": "grad-cam", "pyautoattack|autoattack": "pyautoattack",
                       "torchattacks": "torchattacks==3.4.0"}.get(modules, modules)
            raise UsageError(f"{what} needs the {package} package, which is not installed: pip install {package}")


def check_cam_layer(model: torch.nn.Module, cfg: dict, image_size) -> None:
    """The CAM layer exists and gives a feature map (`check_target_layer`); else UsageError."""
    try:
        check_target_layer(model, cfg["cam_layer"], image_size)
    except ValueError as e:
        raise UsageError(str(e)) from None


def build_run(cfg: dict, rank: int, world: int, device: torch.device, data: Dataset | None = None) -> Run:
    """Data (fingerprinted into the config, with its classes and image size; `data` instead of cfg's data set
    when given, as the benchmark does), the CIFAR-10-C folder, model, optimiser and mask source; the CAM layer is
    checked."""
    if data is None:
        data = load_dataset(cfg["data"], cfg["data_dir"], cfg["download"])
    cfg["data_fingerprint"] = data.fingerprint()
    cfg["num_classes"], cfg["image_size"] = data.num_classes, data.image_size
    if cfg.get("eval_corruptions"):
        corruption_files(cfg["eval_corruptions"], data.num_classes, data.image_size)
    data = data.to(device)
    seed_everything(cfg["seed"])
    model = prepare_model(cfg, data.num_classes, device)
    if _uses_cam(cfg):
        check_cam_layer(model, cfg, data.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    return Run(cfg, data, model, optimizer, make_source(cfg, data, rank, world), device, rank, world,
               make_logger(None))


def resume_run(run: Run, path: str) -> None:
    """Continue from the checkpoint at `path`: weights, optimiser, RNG and mask-source state, epoch, best."""
    ckpt = check_resume(run.cfg, path)
    try:
        load_checkpoint(run.model, path, obj=ckpt)
    except CheckpointMismatch as e:
        raise UsageError(f"--resume: {e}") from None
    mask_state = ckpt.get("mask_source") or {}
    saved_world = ckpt["config"].get("world_size")
    if mask_state and saved_world not in (None, run.world):  # its masks are of other batches: recomputed instead
        run.notes += (f"the checkpoint's mask-source state is of {saved_world} process(es), this run has {run.world}: "
                      f"not restored, recomputed at the next epoch",)
        mask_state = {}
    parts = (("optimizer state", lambda: load_optimizer(run.optimizer, ckpt["optimizer"])),
             ("RNG state", lambda: set_rng_state(ckpt["rng"])),
             ("mask-source state", lambda: run.source.load_state_dict(mask_state)))
    for what, load in parts:
        try:
            note = load()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise UsageError(f"--resume: {path}: its {what} does not fit this run ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:100] if str(e) else ''}); it is damaged or not ours") from None
        if isinstance(note, str):
            run.notes += (note,)
    run.start_epoch, run.best, run.last_saved = ckpt["epoch"] + 1, ckpt.get("best_pgd20", -1.0), ckpt["epoch"]


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved SGD state into `optimizer` (built from this run's config). Raises ValueError unless the state's
    settings other than lr are the optimizer's and every momentum buffer is a finite tensor of its parameter's
    shape (the run then stops, so the optimizer is not restored)."""
    before = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict(state)
    problem = None
    for group, own in zip(optimizer.param_groups, before):
        for key, value in own.items():
            if key not in ("params", "lr", "initial_lr") and group.get(key) != value:
                problem = f"{key} {group.get(key)!r} where this run's config sets {value!r}"
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None and (not torch.is_tensor(buf) or buf.shape != p.shape or not bool(torch.isfinite(buf).all())):
                problem = f"a momentum buffer that is not a finite tensor of its parameter's shape {tuple(p.shape)}"
    if problem:
        raise ValueError(problem)


def open_folder(run: Run, resumed_from: str | None) -> None:
    """Rank 0: lock the run folder, clear another run's leftovers (or trim metrics.csv on resume), start log.txt
    and write config.json; a failure here removes a folder this run created."""
    cfg, out = run.cfg, run.out
    run.folder = RunFolder(out)
    try:
        if resumed_from:
            dropped = truncate_metrics(os.path.join(out, "metrics.csv"), run.start_epoch - 1)
            stale = drop_later_files(out, run.start_epoch - 1)
        else:
            clear_run(out)  # --overwrite, or the leftovers of a start that never finished an epoch
        log = run.log = make_logger(out)
        save_json(os.path.join(out, "config.json"), cfg)
    except OSError as e:
        run.folder.abandon()
        raise UsageError(f"cannot write to the run folder {out} ({e.strerror or e})") from None
    except BaseException:
        run.folder.abandon()
        raise
    log.info("config: %s", " ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
    if resumed_from:
        log.info("resumed from %s (epoch %d done)%s%s", resumed_from, run.start_epoch - 1,
                 f"; dropped {dropped} unreadable or later line(s) of metrics.csv" if dropped else "",
                 f"; removed files of the later epochs it replaces: {', '.join(stale)}" if stale else "")
    for note in run.notes:
        log.warning("%s", note)
    log.info("data %s: %d train / %d test images, %d classes; model %s (%d parameters) on %s, %d process(es)",
             cfg["data"], run.data.x_train.shape[0], run.data.x_test.shape[0], run.data.num_classes, cfg["model"],
             sum(p.numel() for p in run.model.parameters()), run.device, run.world)
    if cfg.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter
        run.tb = SummaryWriter(os.path.join(out, "tb"))


def setup(cfg: dict) -> tuple[Run, str | None]:
    """Everything before the run folder is touched: (the run, the checkpoint it resumes from or None). Bad input
    of any kind (the run folder, the data, the CAM layer, the CIFAR-10-C folder, the checkpoint to resume, a model
    too large for memory) is found here, before a folder is created or a batch trained."""
    rank, world, local = setup_distributed(cfg["device"])
    cfg["world_size"] = world
    device = pick_device(cfg["device"], local)
    configure_backends(cfg, device)
    check_inputs(cfg, world)
    run = build_run(cfg, rank, world, device)
    path = None
    if cfg.get("resume"):
        path = os.path.join(run.out, "last.pt") if cfg["resume"] == "last" else cfg["resume"]
        resume_run(run, path)
    return run, path


def start(run: Run, resumed_from: str | None) -> None:
    """The rest of the start, which `train` runs where an interrupt is reported with its hint: the run folder
    (rank 0; a failure while opening it leaves no new folder behind) and the training modules."""
    if run.rank == 0:
        open_folder(run, resumed_from)
    else:
        run.log.setLevel("WARNING")
    barrier(run.world)
    prepare_training(run)
    if run.compile_time_s is not None:
        run.log.info("torch.compile: %.1f s before epoch %d (not counted in its time)", run.compile_time_s,
                     run.start_epoch)


def prepare_training(run: Run) -> None:
    """The modules the epochs run: `train_module` (model + loss, in DDP across processes) and `attack_model`.
    With --compile both are compiled, and one untimed step on the first batch compiles them now, its time kept
    in `compile_time_s`; it leaves the weights, BatchNorm buffers, gradients and RNG as it found them."""
    cfg, device = run.cfg, run.device
    run.train_module = TrainLoss(run.model, METHODS[cfg["variant"]], cfg)
    run.attack_model = run.model
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        run.train_module = DDP(run.train_module, device_ids=[device.index] if device.type == "cuda" else None)
    if not cfg.get("compile"):
        return
    run.train_module, run.attack_model = torch.compile(run.train_module), torch.compile(run.model)
    t = time.time()
    buffers = {k: v.clone() for k, v in run.model.named_buffers()}
    rng = rng_state()
    x, y = next(iter(train_batches(run.data, cfg["batch_size"], epoch_generator(cfg["seed"], 0), run.rank, run.world,
                                   cfg["n_train"])))
    if cfg.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(cfg, device):
        x_adv = METHODS[cfg["variant"]].attack(run.attack_model, x, y, cfg["epsilon"], cfg)
        run.model.train()
        loss = run.train_module(x, x_adv, y)
    loss.backward()
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in run.model.named_buffers():
            v.copy_(buffers[k])
    set_rng_state(rng)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    run.compile_time_s = round(time.time() - t, 2)


def _fault_point(epoch: int, batch: int, first_epoch: int) -> bool:
    """Fault injection for the tests: PART_FAULT_KILL_AT='epoch,batch' SIGKILLs this process there;
    PART_FAULT_SIGNAL_AT='epoch,batch,NAME' sends it signal NAME there (e.g. USR2, a scheduler's preemption) if this
    process started before that epoch, so that the resumed process passes the point; PART_FAULT_NAN_AT='epoch,batch'
    makes that batch's loss NaN (returns True)."""
    def at(var):
        spec = os.environ.get(var)
        return bool(spec) and tuple(map(int, spec.split(",")[:2])) == (epoch, batch)
    if at("PART_FAULT_KILL_AT"):
        os.kill(os.getpid(), signal.SIGKILL)
    if at("PART_FAULT_SIGNAL_AT") and first_epoch < epoch:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["PART_FAULT_SIGNAL_AT"].split(",")[2]))
    return at("PART_FAULT_NAN_AT")


def train_epoch(run: Run, epoch: int, masked: bool) -> dict:
    """Train one epoch in place: each batch attacked within its budget (the mask source's after warm-up, else
    eps), then one SGD step on the method's loss. Returns {'loss': mean training loss, 'budget_mean',
    'eps_share'} over all processes. Raises NonFinite."""
    from tqdm import tqdm
    cfg, model, device = run.cfg, run.model, run.device
    method = METHODS[cfg["variant"]]
    torch.manual_seed(seed64((cfg["seed"] * 100003 + epoch) * 64 + run.rank))
    gen = epoch_generator(cfg["seed"], epoch)
    if masked:
        run.source.start_epoch(model, epoch, run.log)
    n = train_size(run.data, cfg["n_train"])
    total = num_batches(n, cfg["batch_size"], run.world)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    stats = BudgetStats(cfg["epsilon"], device)
    steps = 0
    bar = tqdm(train_batches(run.data, cfg["batch_size"], gen, run.rank, run.world, cfg["n_train"]), total=total,
               desc=f"epoch {epoch}", leave=False, disable=None if run.rank == 0 else True)
    for i, (x, y) in enumerate(bar):
        poison = _fault_point(epoch, i, run.start_epoch)
        if cfg.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        eps = run.source.budget(model, x, i) if masked else cfg["epsilon"]
        stats.add(eps, x)
        with autocast(cfg, device):
            x_adv = method.attack(run.attack_model, x, y, eps, cfg)
            model.train()
            loss = run.train_module(x, x_adv, y)
            if poison:
                loss = loss * float("nan")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        loss_sum += loss.detach().double()
        steps += 1
        value = loss.item()  # one scalar sync a batch; the CAM pass synchronises every batch anyway
        if not math.isfinite(value):
            raise NonFinite(f"loss is {value} at epoch {epoch}, batch {i}")
        if i % cfg["log_interval"] == 0 or i == total - 1:
            bar.set_postfix(loss=f"{value:.4f}", eps="mask" if masked else "full")
    totals = torch.cat([torch.stack([loss_sum, torch.tensor(float(steps), dtype=torch.float64, device=device)]),
                        stats.tensor()])
    if run.world > 1:
        import torch.distributed as dist
        dist.all_reduce(totals)
    out = {"loss": totals[0].item() / max(totals[1].item(), 1), **BudgetStats.summary(totals[2:])}
    if not math.isfinite(out["loss"]):
        raise NonFinite(f"mean loss is {out['loss']} in epoch {epoch}")
    return out


def quick_eval(cfg: dict, model: torch.nn.Module, data: Dataset) -> dict:
    """Natural and PGD-20 accuracy on the first n_eval_epoch test images (no MMA / AA)."""
    return evaluate(model, data, attacks=("natural", "pgd20"), eps=cfg["eval_epsilon"], step_size=cfg["step_size"],
                    n_eval=cfg["n_eval_epoch"], batch_size=cfg["eval_batch_size"], seed=cfg["seed"])


def run_epochs(run: Run) -> None:
    """The epoch loop: lr schedule, one epoch, the finite-weights check, the per-epoch check and row of
    metrics.csv, and the checkpoints (best by per-epoch PGD-20, epoch_N every save_freq, last)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    cfg, log = run.cfg, run.log
    with logging_redirect_tqdm([log]):
        for epoch in tqdm(range(run.start_epoch, cfg["epochs"] + 1), desc="epochs", initial=run.start_epoch - 1,
                          total=cfg["epochs"], disable=None if run.rank == 0 else True):
            t0 = time.time()
            reset_peak_memory(run.device)
            lr = lr_at(cfg, epoch)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            masked = cfg["mask"] and epoch > cfg["warm_up"]
            phase = "warm-up" if epoch <= cfg["warm_up"] else ("part" if cfg["mask"] else "plain")
            if masked and epoch == cfg["warm_up"] + 1:
                log.info("warm-up done; from epoch %d every batch is attacked within its %s budget", epoch,
                         cfg["mask_source"])
            stats = train_epoch(run, epoch, masked)
            train_time = time.time() - t0
            peak = peak_memory_mb(run.device)
            if not finite_weights(run.model):
                raise NonFinite(f"the weights are not finite after epoch {epoch} (the loss was {stats['loss']:.4g})")
            if run.rank == 0:
                t1 = time.time()
                q = quick_eval(cfg, run.model, run.data)
                eval_time = time.time() - t1
                own = getattr(run.source, "own_share", None) if masked else None
                row = {"epoch": epoch, "phase": phase, "lr": lr, "loss": round(stats["loss"], 5),
                       "natural": round(q["natural"], 2), "pgd20": round(q["pgd20"], 2),
                       "budget_mean": stats["budget_mean"], "eps_share": stats["eps_share"],
                       "own_mask_share": None if own is None else round(own, 6),
                       "epoch_time_s": round(train_time, 2), "eval_time_s": round(eval_time, 2), "peak_mem_mb": peak}
                append_metrics(os.path.join(run.out, "metrics.csv"), row)
                log.info("epoch %3d  %-7s  lr %.5f  loss %.4f  budget %.3f/255 (%.3f at eps)  natural %6.2f  "
                         "pgd20 %6.2f (%d test)  train %.1fs  check %.1fs", epoch, phase, lr, stats["loss"],
                         stats["budget_mean"], stats["eps_share"], q["natural"], q["pgd20"], q["n_eval"],
                         train_time, eval_time)
                if run.tb is not None:
                    for key in ("loss", "natural", "pgd20", "budget_mean", "eps_share", "lr"):
                        run.tb.add_scalar(key, row[key], epoch)
                    run.tb.flush()
                if q["pgd20"] > run.best:
                    run.best = q["pgd20"]
                    run.checkpoint(epoch, "best.pt")
                if cfg["save_freq"] and epoch % cfg["save_freq"] == 0:
                    run.checkpoint(epoch, f"epoch_{epoch}.pt")
                run.checkpoint(epoch, "last.pt")
            barrier(run.world)


def write_evaluation(cfg: dict, model: torch.nn.Module, data: Dataset, log, folder: str, name: str,
                     checkpoint: str | None, epoch: int | None, extra: dict | None = None) -> dict:
    """Run the evaluation suite as configured and write <folder>/<name>.json (with `extra`'s fields) and .md, the
    per-image record (`per_image_name(name)`) and, with AutoAttack, aa_log.txt. `epoch`: the epoch the checkpoint
    holds."""
    t = time.time()
    res = evaluate(model, data, attacks=tuple(cfg["eval_attacks"]), eps=cfg["eval_epsilon"],
                   step_size=cfg["step_size"], n_eval=cfg["n_eval"], n_eval_aa=cfg.get("n_eval_aa", 0),
                   batch_size=cfg["eval_batch_size"], seed=cfg["seed"], cfg=cfg,
                   aa_log=os.path.join(folder, "aa_log.txt"), log=log, progress=True)
    if cfg.get("eval_corruptions"):
        res["corruptions"] = evaluate_corruptions(model, cfg["eval_corruptions"], cfg["n_eval"],
                                                  cfg["eval_batch_size"], log)
    record = make_record(cfg, res, checkpoint, time.time() - t, next(model.parameters()).device, epoch)
    record.update(extra or {})
    aa_note = f" (AA on the first {res['n_eval_aa']})" if res["n_eval_aa"] not in (None, res["n_eval"]) else ""
    log.info("evaluation on %d of %d test images%s:\n%s", res["n_eval"], res["n_test"], aa_note,
             markdown_table(record, record["method"]))
    record["per_image_file"] = per_image_name(name)
    save_npz(os.path.join(folder, record["per_image_file"]), per_image_arrays(res, data, cfg.get("data_fingerprint")))
    save_json(os.path.join(folder, f"{name}.json"), record)
    save_text(os.path.join(folder, f"{name}.md"), markdown_table(record, record["method"]))
    log.info("wrote %s", os.path.join(folder, f"{name}.json"))
    return record


def write_mask_figure(run: Run, n: int = 8) -> None:
    cfg = run.cfg
    x = to_float(run.data.x_test[:n]).to(run.device)
    cam, budget = run.source.preview(run.model, x)
    note = "" if cfg["mask"] else " (not used: this run trained with --no-mask)"
    save_mask_figure(os.path.join(run.out, "mask.png"), x, cam, budget, cfg["epsilon"], cfg["low_epsilon"],
                     f"{cfg['method']}, mask source '{cfg['mask_source']}'{note}: budgets of the first {n} test images")


def ranks_identical(model: torch.nn.Module) -> bool:
    """Whether every process holds bit-identical parameters (a hash of their bytes, gathered from all ranks)."""
    import hashlib

    import torch.distributed as dist
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    hashes = [None] * dist.get_world_size()
    dist.all_gather_object(hashes, h.hexdigest())
    return len(set(hashes)) == 1


def train(cfg: dict) -> dict:
    """Train and evaluate as configured; returns the results record (rank 0) or {}."""
    run, resumed_from = setup(cfg)
    try:
        start(run, resumed_from)
        run_epochs(run)
        extra = {"compile_time_s": run.compile_time_s} if run.compile_time_s is not None else {}
        if run.world > 1:  # rank 0 evaluates alone; the others leave now rather than wait out a long AutoAttack
            import torch.distributed as dist
            extra["ranks_identical"] = ranks_identical(run.model)
            if not extra["ranks_identical"]:
                run.log.warning("the processes ended with different weights; rank 0's are saved and evaluated")
            dist.destroy_process_group()
        if run.rank != 0:
            return {}
        record = write_evaluation(cfg, run.model, run.data, run.log, run.out, "results", os.path.join(run.out, "last.pt"),
                                  cfg["epochs"], extra)
        if cfg["mask_figure"]:
            write_mask_figure(run)
        return record
    except (KeyboardInterrupt, Terminated) as e:
        if run.rank == 0 and not (run.folder and run.folder.held):
            raise  # before the folder was opened, or it was abandoned: nothing to resume or start again from
        code, what = (143, "terminated (SIGTERM)") if isinstance(e, Terminated) else (130, "interrupted (Ctrl-C)")
        if run.last_saved == cfg["epochs"]:
            hint = ("training had finished (last.pt holds the last epoch): the same command plus --resume runs the "
                    "evaluation again")
        elif run.last_saved is not None:
            hint = f"continue with the same command plus --resume (last.pt holds epoch {run.last_saved})"
        else:
            hint = "no epoch was finished, so there is nothing to resume: start again with the same command"
        if run.rank == 0:
            run.log.warning("%s; %s", what, hint)
        raise Interrupted(code, f"\n{what}; {hint}") from None
    finally:
        if run.tb is not None:
            run.tb.close()
        if run.folder is not None:
            run.folder.release()


# ----------------------------------------------------------------------------------------------------
# evaluating a checkpoint
# ----------------------------------------------------------------------------------------------------
EVAL_OVERRIDES = ("data", "data_dir", "download", "n_eval", "n_eval_aa", "eval_attacks", "eval_batch_size",
                  "eval_epsilon", "eval_corruptions", "cam_backend")


def _pixels(size) -> str:
    return "? px" if size is None else f"{size}x{size} px" if isinstance(size, int) else f"{size[0]}x{size[1]} px"


def check_fits(saved: dict, data: str, num_classes: int, image_size=None) -> None:
    """Refuse data whose class count or image size (when given) differs from those the checkpoint's model was
    trained on (`saved`: its config; a key it lacks is not checked)."""
    classes, size = saved.get("num_classes"), saved.get("image_size")
    if (classes is not None and num_classes != classes) or \
            (image_size is not None and size is not None and _pixels(image_size) != _pixels(size)):
        raise UsageError(f"--data {data} ({num_classes} classes, {_pixels(image_size)}) does not fit the checkpoint's "
                         f"model, trained on {saved.get('data')} ({classes} classes, {_pixels(size)}); evaluate on "
                         f"data of the model's classes and image size")


def eval_only(cfg: dict, explicit: set) -> dict:
    """Evaluate a checkpoint with the config stored in it; the flags given on the command line for the data,
    device and evaluation take precedence (other data must have the classes and image size the model was trained
    on). A checkpoint of other code (TRADES, MART, official PART) takes everything from the flags. Writes
    eval_<checkpoint>.json/.md beside the checkpoint (or in --out), whose writability is checked first."""
    path = cfg["eval_only"]
    obj = read_checkpoint(path)
    out = cfg["out"] if "out" in explicit else os.path.dirname(os.path.abspath(path))
    if "out" in explicit:
        check_out_path(out)
    else:
        check_writable(out, "the checkpoint's folder (where the evaluation record goes; --out puts it elsewhere)")
    saved = obj.get("config")
    run_cfg = dict(cfg)
    if "config" in obj:  # ours (other code's checkpoints have no config entry)
        run_cfg = upgrade_config(saved, f"--eval-only: {path}")
        for key in EVAL_OVERRIDES:
            if key in explicit or key not in run_cfg:
                run_cfg[key] = cfg[key]
        run_cfg["device"] = cfg["device"]  # where this evaluation runs, not where training ran
        run_cfg = config_mod.resolve(run_cfg["variant"], run_cfg)
        check_fits(saved, run_cfg["data"], run_cfg["num_classes"])
    check_packages(run_cfg)
    device = pick_device(run_cfg["device"], 0)
    configure_backends(run_cfg, device)
    data = load_dataset(run_cfg["data"], run_cfg["data_dir"], run_cfg.get("download", False))
    run_cfg["data_fingerprint"] = data.fingerprint()
    run_cfg["num_classes"], run_cfg["image_size"] = data.num_classes, data.image_size
    if saved and (run_cfg["data"], run_cfg["data_fingerprint"]) != (saved["data"], saved.get("data_fingerprint")):
        # evaluated on other data than it was trained on: it must fit the model, and the record names both
        check_fits(saved, run_cfg["data"], data.num_classes, data.image_size)
        run_cfg["trained_on"] = {"data": saved["data"], "data_dir": saved.get("data_dir"),
                                 "data_fingerprint": saved.get("data_fingerprint")}
    if run_cfg.get("eval_corruptions"):
        corruption_files(run_cfg["eval_corruptions"], data.num_classes, data.image_size)
    data = data.to(device)
    model = prepare_model(run_cfg, data.num_classes, device)
    try:
        load_checkpoint(model, path, obj=obj)
    except CheckpointMismatch as e:
        raise UsageError(f"{e} (model {run_cfg['model']}, width {run_cfg.get('width')}, "
                         f"{data.num_classes} classes)") from None
    if "part-pgd" in run_cfg["eval_attacks"]:
        check_cam_layer(model, run_cfg, data.image_size)
    os.makedirs(out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
    return write_evaluation(run_cfg, model, data, make_logger(None), out, f"eval_{stem}", path, epoch)


# ----------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------
def _what_exists(out: str) -> str:
    path = os.path.join(out, "last.pt")
    if os.path.isfile(path):
        try:
            epoch = read_checkpoint(path).get("epoch")
            return f"the last good checkpoint is {path} (epoch {epoch})"
        except UsageError:
            return f"{path} exists but cannot be read"
    return f"no checkpoint was written to {out}"


def main(variant: str, constants: dict, argv=None, handle_sigterm: bool = True) -> int:
    """Entry point of the three scripts. Returns the process exit code: 0 done, 2 bad input (or a failed
    write, or out of memory), 3 non-finite loss or weights, 130 Ctrl-C, 143 SIGTERM (`utils.errors.entry_point`).
    `handle_sigterm=False` leaves SIGTERM to a caller that handles it itself (a scheduler's task, which is signalled
    before it is requeued)."""
    make_logger(None)
    state = {}

    def body():
        cfg, explicit = config_mod.parse(variant, constants, argv)
        state["cfg"] = cfg
        try:
            if cfg.get("eval_only"):
                eval_only(cfg, explicit)
            else:
                train(cfg)
        except NonFinite as e:
            raise Stop(3, f"error: training stopped: {e}; {_what_exists(cfg['out'])}. Try a lower --lr or check "
                          f"the data.") from None

    def where():
        cfg = state.get("cfg")
        return f" ({_what_exists(cfg['out'])})" if cfg and not cfg.get("eval_only") and os.path.isdir(cfg["out"]) else ""

    return entry_point(body, where, handle_sigterm)
