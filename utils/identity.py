"""Run identity: what makes two runs the same configuration. `effective` (the keys the report and the grid group
and compare by), `training_differences` (what keeps a config from continuing a checkpoint's run, as --resume
checks it), `same_training` (whether two stored configs trained the same weights) and `mask_only_keys`. The key
sets they read (RUN_CONTROL_KEYS, MASK_KEYS, ...) are in utils/config.py beside the flags."""
from .config import EVAL_KEYS, MASK_KEYS, RUN_CONTROL_KEYS, lr_at, masked_epochs, shown, upgrade
from .mask_sources import MASK_SOURCES
from .methods import METHODS


def training_differences(saved: dict, new: dict, epochs_done: int) -> list[str]:
    """What keeps `new` from continuing the run whose checkpoint config is `saved` after `epochs_done`
    epochs: one 'key: saved -> new' line per differing training key. --epochs may grow (not below the epochs
    done) and the lr schedule must agree on the epochs already trained."""
    skip = set(RUN_CONTROL_KEYS) | {"epochs", "lr_milestones", "method", "num_classes", "image_size"}
    out = []
    for key in sorted((set(saved) | set(new)) - skip):
        a, b = saved.get(key), new.get(key)
        if isinstance(a, tuple):
            a = list(a)
        if isinstance(b, tuple):
            b = list(b)
        if key == "data_fingerprint" and a is None:  # checkpoints written before fingerprints were stored
            continue
        if a != b:
            out.append(f"{key}: {shown(a)} -> {shown(b)}")
    if new["epochs"] < epochs_done:
        out.append(f"epochs: {new['epochs']} is fewer than the {epochs_done} epochs already done")
    if any(abs(lr_at(saved, e) - lr_at(new, e)) > 1e-15 for e in range(1, epochs_done + 1)):
        out.append(f"lr_milestones: {shown(saved.get('lr_milestones'))} -> {shown(new['lr_milestones'])} "
                   f"changes the lr of epochs already trained (pass --lr-milestones "
                   f"{shown(saved.get('lr_milestones'))} to keep the run's schedule)")
    return out


# what an --eval-only evaluation may set otherwise than training did (the data it evaluates on, the CAM backend)
EVALUATION_SIDE = ("data", "data_fingerprint", "cam_backend", "trained_on")


def same_training(a: dict, b: dict) -> list[str]:
    """How two stored configs (of checkpoints or records, from any version: later keys filled in) differ in what
    trained the weights: `training_differences` over all their epochs, without what an evaluation may set
    (EVALUATION_SIDE). Empty: the same training."""
    a, b = upgrade(a), upgrade(b)
    out = [d for d in training_differences(a, b, min(a["epochs"], b["epochs"]))
           if d.split(":")[0] not in EVALUATION_SIDE]
    return out + ([] if a["epochs"] == b["epochs"] else [f"epochs: {a['epochs']} -> {b['epochs']}"])


def mask_only_keys(variant) -> tuple:
    """The settings only a masked run of `variant` reads: MASK_KEYS, and --official-starts where the method's
    official start differs from its own only under a per-pixel budget (Method.starts_need_mask)."""
    return MASK_KEYS + (("official_starts",) if variant in METHODS and METHODS[variant].starts_need_mask else ())


def effective(cfg: dict) -> dict:
    """The config keys that determine a run's numbers: training and evaluation keys, without the run-control
    ones and without mask settings the run never used (a --no-mask run reads none, --official-starts of
    train_eval_part.py included; each source reads its own)."""
    out = {k: v for k, v in cfg.items() if k not in RUN_CONTROL_KEYS or k in EVAL_KEYS}
    for k in ("seed", "method", "num_classes", "image_size"):
        out.pop(k, None)
    masked = masked_epochs(cfg)
    out["mask"] = masked
    used = set(MASK_SOURCES[cfg["mask_source"]].keys) | {"mask_source", "warm_up"} if masked else set()
    if "part-pgd" in cfg.get("eval_attacks", ()):  # the mask-aware attack reads the CAM settings of every run
        used |= {"low_epsilon", "cam", "mask_rule", "cam_layer", "cam_backend"}
    for k in mask_only_keys(cfg["variant"]):
        if k not in used and (k in MASK_KEYS or not masked):
            out.pop(k, None)
    if not METHODS[cfg["variant"]].uses_beta:
        out.pop("beta", None)
    if not METHODS[cfg["variant"]].trades_forward:
        out.pop("official_trades_forward", None)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

