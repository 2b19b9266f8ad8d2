"""The scripts' command line (`main`: parse the flags, train or evaluate, return the exit code; `run_script`: the
same work for a tool that trains in its own process) and --eval-only (`eval_only`: evaluate a saved checkpoint with
the config stored in it)."""
import json
import os

from models import CheckpointMismatch, load_checkpoint

from . import config as config_mod, identity
from .checks import check_cam_layer, check_fits, check_packages, upgrade_config
from .data import check_counts, load_dataset
from .devices import configure_backends, pick_device
from .engine import NonFinite, prepare_model
from .errors import Stop, UsageError, entry_point
from .corruptions import corruption_files
from .lifecycle import train
from .outputs import write_evaluation
from .runs import check_out_path, check_writable, holds_run, is_run_folder, make_logger, read_checkpoint, same_folder


EVAL_OVERRIDES = ("data", "data_dir", "download", "n_eval", "n_eval_aa", "eval_attacks", "eval_batch_size",
                  "eval_epsilon", "eval_corruptions", "cam_backend")


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
        check_eval_folder(out, path, obj)
    else:
        check_writable(out, "the checkpoint's folder (where the evaluation record goes; --out puts it elsewhere)")
    saved = obj.get("config")
    run_cfg = dict(cfg)
    if "config" in obj:  # ours (other code's checkpoints have no config entry)
        run_cfg = upgrade_config(saved, f"--eval-only: {path}")
        check_ignored_flags(cfg, run_cfg, explicit, path)
        for key in EVAL_OVERRIDES:
            if key in explicit or key not in run_cfg:
                run_cfg[key] = cfg[key]
        run_cfg["device"] = cfg["device"]  # where this evaluation runs, not where training ran
        run_cfg = config_mod.resolve(run_cfg["variant"], run_cfg)
        check_fits(saved, run_cfg["data"], run_cfg["num_classes"])
        epoch = obj.get("epoch")  # the record names it: it must be one this config trains
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)
                                  or not 1 <= epoch <= run_cfg["epochs"]):
            raise UsageError(f"--eval-only: {path} records no usable epoch (epoch {epoch!r} of the "
                             f"{run_cfg['epochs']} its config trains); it is damaged")
    check_packages(run_cfg)
    device = pick_device(run_cfg["device"], 0)
    configure_backends(run_cfg, device)
    data = load_dataset(run_cfg["data"], run_cfg["data_dir"], run_cfg.get("download", False))
    # sizes given now must fit; the checkpoint's own (on other, smaller data) are taken as "at most"
    asked = [(run_cfg.get(k) or 0) if k in explicit else 0 for k in ("n_eval", "n_eval_aa")]
    check_counts(data, run_cfg["data"], 0, *asked)
    run_cfg["data_fingerprint"] = data.fingerprint()
    run_cfg["num_classes"], run_cfg["image_size"] = data.num_classes, data.image_size
    if saved and (run_cfg["data"], run_cfg["data_fingerprint"]) != (saved["data"], saved.get("data_fingerprint")):
        # evaluated on other data than it was trained on: it must fit the model, and the record names both
        check_fits(saved, run_cfg["data"], data.num_classes, data.image_size)
        run_cfg["trained_on"] = {"data": saved["data"], "data_dir": saved.get("data_dir"),
                                 "data_fingerprint": saved.get("data_fingerprint")}
    if run_cfg.get("eval_corruptions"):
        corruption_files(run_cfg["eval_corruptions"], data.num_classes, data.image_size, asked[0])
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
    epoch = obj.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:  # other code's checkpoints: kept if a count
        epoch = None
    return write_evaluation(run_cfg, model, data, make_logger(None), out, f"eval_{stem}", path, epoch)


def _same(a, b) -> bool:
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def check_ignored_flags(cfg: dict, saved: dict, explicit: set, path: str) -> None:
    """Refuse flags given with --eval-only of our checkpoint that it would ignore: a training setting other than
    the checkpoint's (`saved`, its upgraded config), which the evaluation takes from the checkpoint. (Run-control
    flags, which change no number, pass.)"""
    ignored = [k for k in sorted(explicit - set(EVAL_OVERRIDES) - set(config_mod.RUN_CONTROL_KEYS))
               if k in saved and not _same(saved[k], cfg[k])]
    if ignored:
        def flag(k):
            name = "--no-mask" if k == "mask" else "--" + k.replace("_", "-")
            return name if isinstance(cfg[k], bool) else f"{name} {config_mod.shown(cfg[k])}"
        shown = "; ".join(f"{flag(k)} (the checkpoint's {k}: {config_mod.shown(saved[k])})" for k in ignored)
        raise UsageError(f"--eval-only evaluates {path} with the settings it was trained with, so these flags would be "
                         f"ignored: {shown}; drop them (it takes the data, device and evaluation flags)")


def _same_checkpoint(record: dict, obj: dict, path: str) -> bool:
    """Whether an evaluation record evaluated the checkpoint `obj` (read from `path`): for ours, the same training
    and epoch (wherever the files were moved since); for other code's, the same file."""
    cfg = record.get("config")
    if isinstance(obj.get("config"), dict) and isinstance(cfg, dict) and isinstance(cfg.get("epochs"), int):
        try:
            return not identity.same_training(obj["config"], cfg) and record.get("epoch") == obj.get("epoch")
        except (KeyError, TypeError, ValueError):
            return False
    was = record.get("checkpoint")
    return isinstance(was, str) and os.path.isfile(was) and os.path.samefile(was, path)


def check_eval_folder(out: str, path: str, obj: dict) -> None:
    """Refuse an --eval-only --out other than the checkpoint's own folder that holds a run (its record there
    would pass for that run's), or an evaluation record of another checkpoint under the name this one writes
    (`obj`: the checkpoint read from `path`)."""
    if same_folder(out, os.path.dirname(os.path.abspath(path))):
        return
    stem = f"eval_{os.path.splitext(os.path.basename(path))[0]}"
    others = [f for f in holds_run(out) if not f.startswith(stem + ".") and not f.startswith(stem + "_")]
    if any(not f.startswith("eval_") for f in others) or is_run_folder(out):
        raise UsageError(f"--out {out} holds a run ({', '.join(others) or 'config.json'}), and {path} is not one of "
                         f"its checkpoints: the evaluation record would pass for that run's; choose another --out")
    record = os.path.join(out, stem + ".json")
    if os.path.isfile(record):
        try:
            with open(record) as f:
                rec = json.load(f)
        except (OSError, ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict) or not _same_checkpoint(rec, obj, path):
            was = rec.get("checkpoint") if isinstance(rec, dict) else None
            raise UsageError(f"--out {out} already holds {stem}.json, the evaluation of {was or 'another checkpoint'}; "
                             f"choose another --out, or delete it")


def _what_exists(out: str) -> str:
    path = os.path.join(out, "last.pt")
    if os.path.isfile(path):
        try:
            epoch = read_checkpoint(path).get("epoch")
            return f"the last good checkpoint is {path} (epoch {epoch})"
        except UsageError:
            return f"{path} exists but cannot be read"
    return f"no checkpoint was written to {out}"


def run_script(variant: str, constants: dict, argv=None) -> dict:
    """Parse argv and train or evaluate as the script of `variant` does, raising what `main` turns into exit codes
    (UsageError, NonFinite, OSError, Interrupted, KeyboardInterrupt, Terminated): for a tool that trains in its own
    process and must tell a failed run from an interrupt. Returns the results record."""
    cfg, explicit = config_mod.parse(variant, constants, argv)
    return eval_only(cfg, explicit) if cfg.get("eval_only") else train(cfg)


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
