"""The one training engine behind train_eval_part.py, train_eval_part_t.py and train_eval_part_m.py.

Schedule: epochs 1..warm_up train the plain method (AT / TRADES / MART) at full eps; later epochs attack
each batch within a per-pixel budget from `utils.cam.epsilon_mask`, computed for that very (augmented)
batch with the current model. Then natural / PGD-20 / MMA / AutoAttack on the test set.
"""
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch

from models import CheckpointMismatch, build_model, extract_state_dict, load_checkpoint

from . import config as config_mod
from .cam import compute_cam, epsilon_mask, mask_from_cam, save_mask_figure, unwrap
from .data import epoch_generator, load_dataset, num_batches, to_float, train_batches
from .errors import UsageError
from .evaluate import evaluate, library_versions, markdown_table
from .methods import METHODS, TrainLoss
from .runs import (append_metrics, make_logger, rng_state, save_checkpoint, save_json, save_text,
                   seed_everything, set_rng_state, truncate_metrics)


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------
# set-up
# ----------------------------------------------------------------------------------------------------
def lr_at(cfg: dict, epoch: int) -> float:
    """Learning rate of global epoch `epoch` (1-based): lr * 0.1 ** (number of milestones <= epoch)."""
    return cfg["lr"] * 0.1 ** sum(epoch >= m for m in cfg["lr_milestones"])


def setup_distributed():
    """(rank, world_size, local_rank) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
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
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
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


# ----------------------------------------------------------------------------------------------------
# one epoch
# ----------------------------------------------------------------------------------------------------
def _fault_point(epoch: int, batch: int) -> None:
    """Fault injection for the kill-and-resume test: PART_FAULT_KILL_AT='epoch,batch' SIGKILLs this process."""
    spec = os.environ.get("PART_FAULT_KILL_AT")
    if spec and tuple(map(int, spec.split(","))) == (epoch, batch):
        os.kill(os.getpid(), signal.SIGKILL)


def train_epoch(cfg, epoch, model, train_module, optimizer, data, device, rank, world, log):
    """Train one epoch in place. Returns the mean training loss. Raises NonFiniteLoss."""
    from tqdm import tqdm
    method = METHODS[cfg["variant"]]
    masked = epoch > cfg["warm_up"] and cfg["mask"]
    torch.manual_seed((cfg["seed"] * 100003 + epoch) * 64 + rank)
    gen = epoch_generator(cfg["seed"], epoch)
    n = data.x_train.shape[0] if not cfg["n_train"] else min(cfg["n_train"], data.x_train.shape[0])
    total = num_batches(n, cfg["batch_size"], world)
    loss_sum = torch.zeros((), device=device)
    steps = 0
    bar = tqdm(train_batches(data, cfg["batch_size"], gen, rank, world, cfg["n_train"]), total=total,
               desc=f"epoch {epoch}", leave=False, disable=None if rank == 0 else True)
    for i, (x, y) in enumerate(bar):
        _fault_point(epoch, i)
        if cfg.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        eps = cfg["epsilon"]
        if masked:
            eps = epsilon_mask(model, x, cfg["epsilon"], cfg["low_epsilon"], cfg["cam"], cfg["mask_rule"],
                               cfg.get("cam_layer"), cfg.get("cam_backend", "grad-cam"))
        with autocast(cfg, device):
            x_adv = method.attack(model, x, y, eps, cfg)
            model.train()
            loss = train_module(x, x_adv, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float()
        steps += 1
        value = loss.item()  # one scalar sync a batch; the CAM pass synchronises every batch anyway
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss is {value} at epoch {epoch}, batch {i}")
        if i % cfg["log_interval"] == 0 or i == total - 1:
            bar.set_postfix(loss=f"{value:.4f}", eps="mask" if masked else "full")
    mean = (loss_sum / max(steps, 1)).item()
    if not math.isfinite(mean):
        raise NonFiniteLoss(f"mean loss is {mean} in epoch {epoch}")
    return mean


def quick_eval(cfg, model, data):
    """Natural and PGD-20 accuracy on the first n_eval_epoch test images (no MMA / AA)."""
    return evaluate(model, data, eps=cfg["eval_epsilon"], step_size=cfg["step_size"], steps=20,
                    attacks=("natural", "pgd20"), n_eval=cfg["n_eval_epoch"], batch_size=cfg["eval_batch_size"],
                    seed=cfg["seed"])


def method_label(cfg: dict) -> str:
    """The paper's row name: AT / PART, TRADES / PART-T, MART / PART-M, and MMA / PART-MMA for --attack mma."""
    if cfg["variant"] == "part" and cfg.get("attack") == "mma":
        return "PART-MMA" if cfg["mask"] else "MMA"
    return cfg["method"] if cfg["mask"] else cfg["baseline"]


def final_record(cfg, model, data, log, checkpoint_path=None):
    """Full evaluation -> the RobustBench-style record written as results.json."""
    t = time.time()
    res = evaluate(model, data, eps=cfg["eval_epsilon"], step_size=cfg["step_size"], steps=20,
                   attacks=tuple(cfg["eval_attacks"]), n_eval=cfg["n_eval"], n_eval_aa=cfg.get("n_eval_aa", 0),
                   batch_size=cfg["eval_batch_size"],
                   seed=cfg["seed"], progress=True)
    method = method_label(cfg)
    record = {"method": method, "variant": cfg["variant"], "data": cfg["data"], "model": cfg["model"],
              "seed": cfg["seed"], **{k: res[k] for k in ("natural", "pgd20", "mma", "aa")},
              "n_eval": res["n_eval"], "n_eval_aa": res["n_eval_aa"], "n_test": res["n_test"], "eval_epsilon": cfg["eval_epsilon"],
              "eval_time_s": round(time.time() - t, 1), "attack_time_s": res["time_s"],
              "checkpoint": checkpoint_path, "versions": library_versions(), "config": cfg}
    aa_note = f" (AA on the first {res['n_eval_aa']})" if res["n_eval_aa"] not in (None, res["n_eval"]) else ""
    log.info("evaluation on %d of %d test images%s:\n%s", res["n_eval"], res["n_test"], aa_note,
             markdown_table(record, method))
    return record


def write_mask_figure(cfg, model, data, path, n=8):
    x = to_float(data.x_test[:n]).to(next(model.parameters()).device)
    cam = compute_cam(model, x, cfg["cam"], cfg.get("cam_layer"), cfg.get("cam_backend", "grad-cam"))
    mask = mask_from_cam(cam, cfg["epsilon"], cfg["low_epsilon"], cfg["mask_rule"])
    save_mask_figure(path, x, cam, mask, cfg["epsilon"])


# ----------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------
def train(cfg: dict) -> dict:
    """Run training + final evaluation as configured; returns the results record (rank 0) or {}."""
    rank, world, local = setup_distributed()
    device = pick_device(cfg["device"], local)
    configure_backends(cfg, device)
    out = cfg["out"]
    if rank == 0:
        os.makedirs(out, exist_ok=True)
    barrier(world)
    log = make_logger(out if rank == 0 else None)
    if rank != 0:
        log.setLevel("WARNING")
    if cfg["batch_size"] % world:
        raise UsageError(f"--batch-size {cfg['batch_size']} is not divisible by the {world} processes")

    data = load_dataset(cfg["data"], cfg["data_dir"], cfg["download"]).to(device)
    cfg["num_classes"] = data.num_classes
    seed_everything(cfg["seed"])
    model = prepare_model(cfg, data.num_classes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    start_epoch, best = 1, -1.0
    if cfg.get("resume"):
        path = os.path.join(out, "last.pt") if cfg["resume"] == "last" else cfg["resume"]
        if not os.path.isfile(path):
            raise UsageError(f"--resume: no checkpoint at {path}")
        ckpt = load_checkpoint(model, path)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch, best = ckpt["epoch"] + 1, ckpt.get("best_pgd20", -1.0)
        if rank == 0:
            truncate_metrics(os.path.join(out, "metrics.csv"), ckpt["epoch"])
        log.info("resumed from %s (epoch %d done)", path, ckpt["epoch"])
    elif rank == 0 and os.path.exists(os.path.join(out, "metrics.csv")):
        os.remove(os.path.join(out, "metrics.csv"))

    if rank == 0:
        save_json(os.path.join(out, "config.json"), cfg)
        log.info("config: %s", " ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
        log.info("data %s: %d train / %d test images, %d classes; model %s (%d parameters) on %s, %d process(es)",
                 cfg["data"], data.x_train.shape[0], data.x_test.shape[0], data.num_classes, cfg["model"],
                 sum(p.numel() for p in model.parameters()), device, world)

    train_module = TrainLoss(model, METHODS[cfg["variant"]], cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_module = DDP(train_module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.get("compile"):
        train_module = torch.compile(train_module)

    def checkpoint(epoch, path):
        save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                               "best_pgd20": best, "rng": rng_state(), "config": cfg})

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm([log]):
        for epoch in tqdm(range(start_epoch, cfg["epochs"] + 1), desc="epochs", initial=start_epoch - 1,
                          total=cfg["epochs"], disable=None if rank == 0 else True):
            t0 = time.time()
            lr = lr_at(cfg, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            phase = "warm-up" if epoch <= cfg["warm_up"] else ("part" if cfg["mask"] else "plain")
            if epoch == cfg["warm_up"] + 1 and cfg["mask"]:
                log.info("warm-up done; from epoch %d every batch is attacked within its CAM mask", epoch)
            loss = train_epoch(cfg, epoch, model, train_module, optimizer, data, device, rank, world, log)
            train_time = time.time() - t0
            if rank == 0:
                q = quick_eval(cfg, model, data)
                row = {"epoch": epoch, "phase": phase, "lr": lr, "loss": round(loss, 5),
                       "natural": round(q["natural"], 2), "pgd20": round(q["pgd20"], 2),
                       "epoch_time_s": round(train_time, 2)}
                append_metrics(os.path.join(out, "metrics.csv"), row)
                log.info("epoch %3d  %-7s  lr %.5f  loss %.4f  natural %6.2f  pgd20 %6.2f  (%d test)  %.1fs",
                         epoch, phase, lr, loss, q["natural"], q["pgd20"], q["n_eval"], train_time)
                if q["pgd20"] > best:
                    best = q["pgd20"]
                    checkpoint(epoch, os.path.join(out, "best.pt"))
                if cfg["save_freq"] and epoch % cfg["save_freq"] == 0:
                    checkpoint(epoch, os.path.join(out, f"epoch_{epoch}.pt"))
                checkpoint(epoch, os.path.join(out, "last.pt"))
            barrier(world)

    if world > 1:  # rank 0 evaluates alone; the others leave now rather than wait out a long AutoAttack
        import torch.distributed as dist
        dist.destroy_process_group()
    if rank != 0:
        return {}
    record = final_record(cfg, model, data, log, os.path.join(out, "last.pt"))
    save_json(os.path.join(out, "results.json"), record)
    save_text(os.path.join(out, "results.md"), markdown_table(record, record["method"]))
    if cfg["mask_figure"]:
        write_mask_figure(cfg, model, data, os.path.join(out, "mask.png"))
    log.info("wrote %s", out)
    return record


def eval_only(cfg: dict, explicit: set) -> dict:
    """Evaluate a checkpoint with the config stored in it; flags given on the command line for data location,
    device and evaluation override it. Writes eval_<checkpoint>.json/.md beside the checkpoint (or in --out)."""
    path = cfg["eval_only"]
    if not os.path.isfile(path):
        raise UsageError(f"--eval-only: no checkpoint at {path}")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    saved = obj.get("config") if isinstance(obj, dict) else None
    run_cfg = dict(cfg)  # a foreign checkpoint (TRADES, MART, official PART): everything comes from the flags
    if saved:
        run_cfg = dict(saved)
        for key in ("data_dir", "download", "device", "n_eval", "n_eval_aa", "eval_attacks", "eval_batch_size",
                    "eval_epsilon"):
            if key in explicit or key not in run_cfg:
                run_cfg[key] = cfg[key]
    device = pick_device(run_cfg["device"], 0)
    configure_backends(run_cfg, device)
    data = load_dataset(run_cfg["data"], run_cfg["data_dir"], run_cfg.get("download", False)).to(device)
    model = prepare_model(run_cfg, data.num_classes, device)
    try:
        load_checkpoint(model, path)
    except CheckpointMismatch as e:
        raise UsageError(f"{e} (model {run_cfg['model']}, width {run_cfg.get('width')}, "
                         f"{data.num_classes} classes)") from None
    out = cfg["out"] if "out" in explicit else os.path.dirname(os.path.abspath(path))
    os.makedirs(out, exist_ok=True)
    log = make_logger(None)
    record = final_record(run_cfg, model, data, log, path)
    stem = os.path.splitext(os.path.basename(path))[0]
    save_json(os.path.join(out, f"eval_{stem}.json"), record)
    save_text(os.path.join(out, f"eval_{stem}.md"), markdown_table(record, record["method"]))
    log.info("wrote %s", os.path.join(out, f"eval_{stem}.json"))
    return record


def main(variant: str, constants: dict, argv=None) -> int:
    """Entry point of the three scripts. Returns the process exit code (2 for bad input)."""
    try:
        cfg, explicit = config_mod.parse(variant, constants, argv)
        if cfg.get("eval_only"):
            eval_only(cfg, explicit)
        else:
            train(cfg)
        return 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: training stopped: {e}. The last good checkpoint is kept in {cfg['out']}/last.pt; "
              f"try a lower --lr or check the data.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130
