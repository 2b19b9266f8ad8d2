"""Resuming a run: the checkpoint `--resume` names is checked against the run's config (`check_resume`) and restored
into the run (`resume_run`: weights, optimiser, RNG and mask-source state, epoch, best)."""
import torch

from models import CheckpointMismatch, extract_state_dict, load_checkpoint

from . import identity
from .checks import upgrade_config
from .engine import Run
from .errors import UsageError
from .runs import read_checkpoint, set_rng_state


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
    diffs = identity.training_differences(saved, cfg, epoch)
    if diffs:
        raise UsageError(f"--resume: {path} was trained with other settings ({'; '.join(diffs)}); resume with the "
                         f"run's own settings, or start a new run in another --out")
    return ckpt


def resume_run(run: Run, path: str) -> None:
    """Continue from the checkpoint at `path`: weights, optimiser, RNG and mask-source state, epoch, best."""
    ckpt = check_resume(run.cfg, path)
    try:
        load_checkpoint(run.model, path, obj=ckpt)
    except CheckpointMismatch as e:
        raise UsageError(f"--resume: {e}") from None
    own = run.model.state_dict()
    retyped = [f"{k} ({str(v.dtype).removeprefix('torch.')}, the model's {str(own[k].dtype).removeprefix('torch.')})"
               for k, v in extract_state_dict(ckpt).items() if k in own and v.dtype != own[k].dtype]
    if retyped:  # loading casts them: the run would go on from weights other than those it saved
        raise UsageError(f"--resume: {path} holds weights of another precision than the run saves "
                         f"({', '.join(retyped[:3])}{' ...' if len(retyped) > 3 else ''}); it is not this run's")
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
    settings other than lr are the optimizer's and, with momentum, every parameter has a momentum buffer that is a
    finite tensor of its parameter's shape and dtype (the run then stops, so the optimizer is not restored)."""
    before = optimizer.state_dict()["param_groups"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    momentum = any(group.get("momentum") for group in optimizer.param_groups)
    problem = None
    for i, p in enumerate(params):  # the saved buffers as saved: loading would cast them to the parameter's dtype
        buf = state["state"].get(i, {}).get("momentum_buffer")
        if buf is None and momentum:  # every parameter takes a step in each epoch
            problem = "no momentum buffer for a parameter, which a run with momentum has after its first step"
        elif buf is not None and (not torch.is_tensor(buf) or buf.shape != p.shape or buf.dtype != p.dtype
                                  or not bool(torch.isfinite(buf).all())):
            problem = (f"a momentum buffer that is not a finite {str(p.dtype).removeprefix('torch.')} tensor of its "
                       f"parameter's shape {tuple(p.shape)}")
    if problem:
        raise ValueError(problem)
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, before):
        for key, value in own.items():
            if key not in ("params", "lr", "initial_lr") and group.get(key) != value:
                raise ValueError(f"{key} {group.get(key)!r} where this run's config sets {value!r}")
