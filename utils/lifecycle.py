"""A training run from start to end (`train`): everything checked before the run folder is touched (`setup`), the
folder opened and the training modules prepared (`start`), the epochs (utils.engine), the final evaluation
(utils.records); Ctrl-C or SIGTERM ends it with what to do next (utils.errors.Interrupted)."""
import os

from .checks import check_inputs, check_resume_folder
from .devices import barrier, configure_backends, pick_device, ranks_identical, setup_distributed
from .engine import Run, build_run, prepare_training, run_epochs
from .errors import Interrupted, Terminated, UsageError, interruption
from .outputs import write_evaluation, write_mask_figure
from .resume import resume_run
from .metrics_csv import truncate_metrics
from .runs import RunFolder, clear_run, drop_later_files, make_logger, save_json


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
        check_resume_folder(cfg, path)
    return run, path


def open_folder(run: Run, resumed_from: str | None) -> None:
    """Rank 0: lock the run folder, clear another run's leftovers (or trim metrics.csv on resume), start log.txt
    and write config.json; a failure here removes a folder this run created."""
    cfg, out = run.cfg, run.out
    run.folder = RunFolder(out)
    try:
        if resumed_from:
            dropped = truncate_metrics(os.path.join(out, "metrics.csv"), run.start_epoch - 1)  # before any file goes
            stale = drop_later_files(out, run.start_epoch - 1, resumed_from)
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
        done = run.start_epoch - 1 >= cfg["epochs"]  # a finished run: nothing to train, the evaluation again
        replaced = "the record it evaluates anew" if done else "the later epochs it replaces"
        log.info("resumed from %s (epoch %d done%s)%s%s", resumed_from, run.start_epoch - 1,
                 ": training is finished, the final evaluation runs again" if done else "",
                 f"; dropped {dropped} unreadable or later line(s) of metrics.csv" if dropped else "",
                 f"; removed or replaced files of {replaced}: {', '.join(stale)}" if stale else "")
    for note in run.notes:
        log.warning("%s", note)
    log.info("data %s: %d train / %d test images, %d classes; model %s (%d parameters) on %s, %d process(es)",
             cfg["data"], run.data.x_train.shape[0], run.data.x_test.shape[0], run.data.num_classes, cfg["model"],
             sum(p.numel() for p in run.model.parameters()), run.device, run.world)
    if cfg.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter
        run.tb = SummaryWriter(os.path.join(out, "tb"))


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
        code, what = interruption(e)
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
