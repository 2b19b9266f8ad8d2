"""The training engine behind train_eval_part.py, train_eval_part_t.py and train_eval_part_m.py: a run's state (`Run`,
built by `build_run`), its training modules (`prepare_training`), one epoch (`train_epoch`) and the epoch loop with
its per-epoch bookkeeping (`run_epochs`: lr schedule, check, metrics.csv row, checkpoints).

Schedule: epochs 1..warm_up train the plain method (AT / TRADES / MART) at full eps; later epochs attack each batch
within the per-element budget its mask source gives (utils.mask_sources). A run's start and end are in
utils.lifecycle; the command line and --eval-only in utils.entry.
"""
import math
import os
import signal
import time
from dataclasses import dataclass

import torch

from models import build_model

from .checks import check_cam_layer, uses_cam
from .config import lr_at
from .batches import epoch_generator, num_batches, seed64, train_batches
from .data import Dataset, check_counts, check_labels, load_dataset, train_size
from .devices import autocast, barrier, peak_memory_mb, reset_peak_memory
from .corruptions import corruption_files
from .evaluate import evaluate
from .mask_sources import BudgetStats, MaskSource, make_source
from .methods import METHODS, TrainLoss
from .metrics_csv import append_metrics
from .runs import RunFolder, make_logger, rng_state, save_checkpoint, seed_everything, set_rng_state


class NonFinite(RuntimeError):
    """The loss or the weights stopped being finite; the message says which checkpoint is the last good one."""


@dataclass
class Run:
    """A run's state: its config, data and model on the device, optimiser, mask source, process rank and count, and
    what the life cycle adds (the epoch to start from, the best per-epoch PGD-20, the run folder, the training
    modules)."""
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


def prepare_model(cfg: dict, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The configured model (architecture, width) on `device`, in channels_last when asked for."""
    model = build_model(cfg["model"], num_classes, cfg.get("width")).to(device)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def build_run(cfg: dict, rank: int, world: int, device: torch.device, data: Dataset | None = None) -> Run:
    """Data (fingerprinted into the config, with its classes and image size; `data` instead of cfg's data set
    when given, as the benchmark does), the CIFAR-10-C folder, model, optimiser and mask source; the CAM layer is
    checked."""
    if data is None:
        data = load_dataset(cfg["data"], cfg["data_dir"], cfg["download"])
    check_labels(data, cfg["data"], cfg["n_train"])  # the classes the epochs use: --n-train may leave only one
    check_counts(data, cfg["data"], cfg["n_train"], cfg["n_eval"], cfg.get("n_eval_aa") or 0, cfg["batch_size"])
    cfg["data_fingerprint"] = data.fingerprint()
    cfg["num_classes"], cfg["image_size"] = data.num_classes, data.image_size
    if cfg.get("eval_corruptions"):
        corruption_files(cfg["eval_corruptions"], data.num_classes, data.image_size, cfg["n_eval"])
    data = data.to(device)
    seed_everything(cfg["seed"])
    model = prepare_model(cfg, data.num_classes, device)
    if uses_cam(cfg):
        check_cam_layer(model, cfg, data.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    return Run(cfg, data, model, optimizer, make_source(cfg, data, rank, world), device, rank, world,
               make_logger(None))


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


def finite_weights(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


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
