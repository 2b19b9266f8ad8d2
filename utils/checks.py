"""The checks of a run's input, made before anything is written or trained: the run folder, the batch split and the
optional packages (`check_inputs`, `check_packages`), the CAM layer (`check_cam_layer`), the data a checkpoint's model
fits (`check_fits`) and a checkpoint's stored config (`upgrade_config`). Each raises UsageError with one line."""
import importlib.util
import os

import torch

from . import config as config_mod
from .cams import check_target_layer
from .errors import UsageError
from .mask_sources import MASK_SOURCES
from .runs import check_out_path, holds_run, in_use_message, lock_holder, same_folder


def uses_cam(cfg: dict) -> bool:
    return (cfg["mask"] and MASK_SOURCES[cfg["mask_source"]].uses_cam) or "part-pgd" in cfg["eval_attacks"] \
        or bool(cfg["cam_layer"])


def upgrade_config(saved, where: str) -> dict:
    """A checkpoint's config, checked as flags are (`config.check_saved`), with the keys later versions added,
    resolved again. Raises UsageError naming `where` when it is not a usable config."""
    return config_mod.check_saved(saved, where)


def check_inputs(cfg: dict, world: int) -> None:
    """The checks that need neither data nor model: the run folder (a fresh run's holds no other run), the batch
    split, the optional inputs."""
    out = cfg["out"]
    check_out_path(out)
    existing = holds_run(out)
    if existing and not (cfg.get("resume") or cfg.get("overwrite")):
        if lock_holder(out):  # a run in progress: --resume or --overwrite would only meet its lock
            raise UsageError(in_use_message(out))
        resume = "add --resume to continue it, " if any(f.endswith(".pt") for f in existing) else ""
        raise UsageError(f"{out} holds another run ({', '.join(existing)}); {resume}add --overwrite to delete its "
                         f"files and start over, or choose another --out")
    if cfg["batch_size"] % world:
        raise UsageError(f"--batch-size {cfg['batch_size']} is not divisible by the {world} processes")
    needs = {"tensorboard": "--tensorboard"} if cfg.get("tensorboard") else {}
    if uses_cam(cfg) and cfg["cam_backend"] == "grad-cam":
        needs["pytorch_grad_cam"] = "the grad-cam CAM backend"
    check_packages(cfg, needs)


def check_resume_folder(cfg: dict, path: str) -> None:
    """A run resumes from a checkpoint of its own folder (--out): from elsewhere, its metrics.csv and checkpoints
    would mix two runs. (Checked once the checkpoint itself has been read and found usable.)"""
    if not same_folder(os.path.dirname(os.path.abspath(path)), cfg["out"]):  # links, second mounts too
        raise UsageError(f"--resume {path} lies outside --out {cfg['out']}: a run resumes from a checkpoint of its own "
                         f"folder (its metrics.csv and checkpoints are that run's); pass --out "
                         f"{os.path.dirname(path) or '.'}, or copy the whole run folder and resume there")


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
