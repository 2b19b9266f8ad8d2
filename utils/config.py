"""Turn a script's block of constants into typed CLI flags, and resolve and check the run's config.

Every constant a script defines (upper case) becomes a flag of the same name in kebab case
(WARM_UP -> --warm-up). Run-control flags (where to write, resume, evaluation, speed) are not constants:
their defaults are in `build_parser`. Every value is range-checked where it is parsed; a bad one raises
UsageError with one line naming the flag, which the scripts print before exiting with code 2.
"""
import argparse
import difflib
import sys

from .cams import CAM_BACKENDS
from .data import DATASETS
from .devices import device_name
from .cli import BUDGET, COUNT, POSITIVE, Parser, nonempty
from .errors import UsageError
from .evaluate import DEFAULT_EVAL_ATTACKS
from .flag_spec import SPEC, eval_attack
from .mask_sources import MASK_SOURCES
from .methods import METHODS
from .units import fraction_text

# Run identity, the one rule (docs/runs.md, "Run identity"): every key of a run's config is part of the configuration
# that resume checks and the report groups by, except RUN_CONTROL_KEYS, which do not change how the weights are
# trained: they may differ when a run is resumed, and runs that differ only in them are the same training
# configuration. EVAL_KEYS among them change the reported numbers. Speed settings that change the arithmetic
# (amp, tf32, cam_backend) are therefore part of the identity; RECORDED_KEYS, which change only how the same
# arithmetic is scheduled (and the device and process count it ran on), are recorded and shown, never split a table.
EVAL_KEYS = ("n_eval", "n_eval_aa", "eval_epsilon", "eval_corruptions")
RECORDED_KEYS = ("channels_last", "compile", "deterministic", "device", "world_size")
RUN_CONTROL_KEYS = ("out", "resume", "overwrite", "eval_only", "download", "data_dir", "save_freq",
                    "log_interval", "mask_figure", "tensorboard", "n_eval_epoch", "eval_attacks", "eval_batch_size",
                    "as_published") + RECORDED_KEYS + EVAL_KEYS
# Keys that matter only once masks are used (after warm-up, without --no-mask); which of them a run reads
# depends on its mask source.
MASK_KEYS = ("mask_source", "low_epsilon", "cam", "mask_rule", "cam_layer", "cam_backend", "mask_refresh",
             "region_eps", "warm_up")


def masked_epochs(cfg: dict) -> bool:
    """Whether any epoch of the run uses its mask source: a masked run (no --no-mask) with epochs after warm-up.
    One whose warm-up covers every epoch trains its baseline method throughout, and is that method's run."""
    return bool(cfg["mask"]) and cfg["warm_up"] < cfg["epochs"]


def lr_at(cfg: dict, epoch: int) -> float:
    """The schedule: learning rate of global epoch `epoch` (1-based), lr * 0.1 ** (milestones <= epoch)."""
    return cfg["lr"] * 0.1 ** sum(epoch >= m for m in cfg["lr_milestones"])


def shown(default) -> str:
    if isinstance(default, (list, tuple)):
        return " ".join(fraction_text(v) for v in default) or "none"
    return "none" if default is None else fraction_text(default)


def build_parser(variant: str, constants: dict) -> Parser:
    method = METHODS[variant]
    name, baseline = method.names[method.attacks[0]]
    article = "an" if baseline[0] in "AEIOU" else "a"
    p = Parser(description=f"{name}: train with {article} {baseline} warm-up then pixel-reweighted {baseline}, then "
                           f"evaluate (natural, PGD-20, MMA, AutoAttack). Flags override the constants at the top "
                           f"of the script; budgets may be given as fractions (8/255).")
    p.flags = []  # every action added, so that `explicit_flags` can suppress their defaults

    def add(group, *names, **kwargs):
        p.flags.append(group.add_argument(*names, **kwargs))

    g = p.add_argument_group("method (constants at the top of the script)")
    for const, default in constants.items():
        if const not in SPEC:
            near = difflib.get_close_matches(const, list(SPEC), n=1)
            raise UsageError(f"the constant {const} at the top of the script is no setting; "
                             + (f"did you mean {near[0]}?" if near else f"the settings are {', '.join(SPEC)}"))
        kwargs = dict(SPEC[const].kwargs)
        if const == "ATTACK":
            kwargs["choices"] = list(method.attacks)
        if isinstance(default, tuple):
            default = list(default)
        add(g, "--" + const.lower().replace("_", "-"), dest=const.lower(), default=default,
                       help=f"{SPEC[const].help} (default: {shown(default)})", **kwargs)
    r = p.add_argument_group("run")
    add(r, "--out", type=nonempty, help="run folder, where config.json, metrics.csv, results.json and the checkpoints "
                                        "go (default: runs/<method>-<data>-<model>-seed<N>, e.g. "
                                        "runs/at-cifar10-resnet18-seed1)")
    add(r, "--resume", nargs="?", const="last", metavar="CKPT", type=nonempty,
                   help="continue the run in --out from CKPT, or from <out>/last.pt when no path is given; the "
                        "training settings must equal the checkpoint's (--epochs may grow)")
    add(r, "--overwrite", action="store_true",
                   help="start a fresh run in an --out that holds another run, deleting that run's files")
    add(r, "--eval-only", metavar="CKPT", type=nonempty,
        help="train nothing: evaluate the checkpoint CKPT with the training settings its config holds")
    add(r, "--download", action="store_true",
        help="let torchvision download CIFAR-10 / SVHN into --data-dir when missing (off: missing data stops the run)")
    add(r, "--device", type=device_name, default="auto",
        help="auto (the first CUDA GPU if present, else the CPU; under torchrun each process's own GPU), cpu, cuda or "
             "cuda:N")
    add(r, "--n-train", type=COUNT, default=0, help="train on the first N training images (0: all)")
    add(r, "--save-freq", type=COUNT, default=10,
        help="also keep the checkpoint epoch_N.pt every N epochs (0: never); last.pt and best.pt (best per-epoch "
             "PGD-20) are written regardless")
    add(r, "--log-interval", type=POSITIVE, default=50,
                   help="batches between updates of the progress bar's loss")
    add(r, "--cam-layer", default=None, type=nonempty,
                   help="dotted module name of the CAM target layer, for other models (default: layer4 for ResNet-18, "
                        "block3 for the WRN)")
    add(r, "--mask-figure", action=argparse.BooleanOptionalAction, default=True,
                   help="save mask.png in the run folder at the end: images, their CAMs and budgets")
    add(r, "--tensorboard", action="store_true",
                   help="also write per-epoch scalars for TensorBoard into <out>/tb (needs pip install tensorboard)")
    e = p.add_argument_group("evaluation")
    add(e, "--n-eval", type=COUNT, default=0, help="test images in the final evaluation (0: all)")
    add(e, "--n-eval-aa", type=COUNT, default=0, help="test images for AutoAttack (0: the --n-eval images)")
    add(e, "--n-eval-epoch", type=COUNT, default=1000,
                   help="test images for the per-epoch natural / PGD-20 check (0: all; lower it to speed up small runs)")
    add(e, "--eval-attacks", nargs="+", type=eval_attack, default=list(DEFAULT_EVAL_ATTACKS),
                   metavar="ATTACK", help="what the final evaluation runs: natural, pgdN (PGD with N steps, e.g. "
                   "pgd20 pgd50 pgd100), mma, cw, part-pgd, aa, aa-official "
                   "(default: natural pgd20 mma aa)")
    add(e, "--eval-epsilon", type=BUDGET, default=8 / 255,
        help="L-inf budget of the evaluation attacks (default: 8/255)")
    add(e, "--eval-batch-size", type=POSITIVE, default=256,
        help="test images per batch of the per-epoch check and final evaluation (default: 256)")
    add(e, "--eval-corruptions", metavar="DIR", type=nonempty,
                   help="also evaluate natural accuracy on CIFAR-10-C from DIR (<name>.npy per corruption, labels.npy; "
                        "tools.make_cifar10c writes one)")
    s = p.add_argument_group("speed (defaults are faithful fp32)")
    add(s, "--amp", choices=("none", "bf16"), default="none",
        help="bf16: autocast the training attacks and loss to bfloat16 (meant for CUDA; the attacks' losses, MMA's "
             "margins and the evaluation stay fp32); none: fp32 (default: none)")
    add(s, "--channels-last", action="store_true",
        help="channels_last memory format for the model and batches (the same arithmetic, scheduled otherwise)")
    add(s, "--tf32", action="store_true",
        help="allow TF32 matmuls and convolutions on CUDA (off: true fp32); changes the arithmetic, so runs with and "
             "without it are kept apart")
    add(s, "--cam-backend", choices=CAM_BACKENDS, default="grad-cam",
                   help="grad-cam: the pytorch-grad-cam package; torch: the same CAMs computed on the device, no host "
                        "copies (matches grad-cam to 1e-4; default: grad-cam)")
    add(s, "--compile", action="store_true",
        help="torch.compile the model the training attacks and the loss run (experimental; CAMs and the evaluation "
             "run the plain model); the compile time is kept apart, as compile_time_s in results.json")
    add(s, "--deterministic", action="store_true",
        help="deterministic cuDNN / cuBLAS algorithms (CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set) and no cuDNN "
             "autotuning: reruns and resumes on a GPU give bit-identical weights (slower; warns where torch has no "
             "deterministic op)")
    o = p.add_argument_group("as published (the official code's behaviour; docs/method.md: deviations from the official code)")
    add(o, "--official-starts", action="store_true",
        help="attack starts as the official code draws them: PGD / MMA uniform at the scalar --epsilon, clipped to "
             "the per-pixel budget only by the first step; TRADES / MART x + 0.001 N(0, 1) not projected")
    add(o, "--official-trades-forward", action="store_true",
        help="TRADES only (train_eval_part_t.py; the other two scripts exit 2 on it): run the model on the natural "
             "batch twice in train mode, as the official code does (same loss and gradient; BatchNorm running "
             "statistics differ)")
    add(o, "--as-published", action="store_true",
        help="preset: --mask-source official --official-starts (--official-trades-forward for TRADES) and adds "
             "aa-official to the default --eval-attacks (an explicit --eval-attacks is used as given); config.json "
             "records what it set")
    return p


def explicit_flags(parser: Parser, argv) -> set:
    """The dest names of the flags that appear on the command line (as opposed to defaults): parse again
    with every action's default set to argparse.SUPPRESS (public argparse API only)."""
    for action in parser.flags:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


# keys that later versions added, at the values older code used (for checkpoints and records written before)
LATER_DEFAULTS = {"mask_source": "cam", "mask_refresh": 1, "cam_backend": "grad-cam", "data_fingerprint": None,
                  "region_eps": [6 / 255, 12 / 255, 12 / 255, 12 / 255], "tensorboard": False, "eval_corruptions": None,
                  "overwrite": False, "official_starts": False, "official_trades_forward": False,
                  "as_published": False, "deterministic": False}


def upgrade(saved: dict) -> dict:
    """A config (from a checkpoint or a record) with the keys later versions added filled in."""
    cfg = dict(saved)
    for key, value in LATER_DEFAULTS.items():
        cfg.setdefault(key, value)
    cfg.pop("baseline", None)
    return cfg


def _value_problem(action: argparse.Action, value) -> str | None:
    """Why `value`, read back from a file, is not one the flag behind `action` could have set (None: it is)."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    items = value
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {value!r}"
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            return f"must hold {action.nargs} values, got {len(value)}"
        if action.nargs == "+" and not value:
            return "must hold at least one value, got none"
    else:
        items = [value]
    for item in items:
        if item is None:
            optional = action.default is None
            if not optional and action.type is not None:
                try:
                    optional = action.type("none") is None
                except (argparse.ArgumentTypeError, ValueError):
                    pass
            if not optional:
                return "must be set, got none"
            continue
        kind = getattr(action.type, "__name__", "")
        if kind in ("int", "float"):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or (kind == "int" and not isinstance(item, int)):
                return f"must be {'a whole' if kind == 'int' else 'a'} number, got {item!r}"
            text = repr(item)
        elif not isinstance(item, str):
            return f"must be text, got {item!r}"
        else:
            text = item
        try:
            parsed = action.type(text) if action.type is not None else text
        except (argparse.ArgumentTypeError, ValueError) as e:
            return str(e)
        if action.choices is not None and parsed not in action.choices:
            return f"must be one of {', '.join(map(str, action.choices))}, got {item!r}"
    return None


# flags whose stored value is not reused: where the run was written, and the device it trained on
_NOT_REUSED = ("out", "device", "resume", "eval_only", "overwrite", "as_published")


def check_saved(saved, where: str) -> dict:
    """A config read back from a checkpoint, checked as its flags are checked when parsed: a dict naming a known
    method, whose every flag's value has the type and range the flag takes, and that resolves. Returns it upgraded
    and resolved. Raises UsageError (one line, naming `where` and the bad key) otherwise."""
    if not isinstance(saved, dict):
        raise UsageError(f"{where}: its stored config is a {type(saved).__name__}, not a dict of settings")
    variant = saved.get("variant")
    if not isinstance(variant, str) or variant not in METHODS:
        raise UsageError(f"{where}: its stored config names no known method (variant {variant!r}; expected one of "
                         f"{', '.join(METHODS)})")
    # the flags of the variant's constants, with a default that is not None: None is then accepted only where
    # the flag itself takes 'none'
    constants = {c: 0 for c in SPEC if c.lower() in saved and (c != "BETA" or METHODS[variant].uses_beta)}
    for action in build_parser(variant, constants).flags:
        if action.dest in saved and action.dest not in _NOT_REUSED:
            problem = _value_problem(action, saved[action.dest])
            if problem:
                raise UsageError(f"{where}: its stored config ({variant}) has an impossible "
                                 f"{action.option_strings[0]} ({problem})")
    # what training adds to the config: the data's class count and image size (an int, or [height, width])
    classes, size = saved.get("num_classes"), saved.get("image_size")
    sizes = [size] if isinstance(size, int) else size if isinstance(size, (list, tuple)) and len(size) == 2 else None
    if (classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1)) or \
            (size is not None and (sizes is None or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                                        for s in sizes))):
        raise UsageError(f"{where}: its stored config has an impossible class count or image size "
                         f"(num_classes {classes!r}, image_size {size!r})")
    try:
        return resolve(variant, upgrade(saved))
    except KeyError as e:
        raise UsageError(f"{where}: its stored config lacks the setting {e}") from None
    except UsageError as e:  # settings that contradict each other (validate)
        raise UsageError(f"{where}: its stored config ({variant}) is impossible: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{where}: its stored config is malformed ({type(e).__name__}: {e})") from None


def resolve(variant: str, args: dict) -> dict:
    """The run's full config as a plain dict: data-set defaults and the lr schedule filled in, the method's
    names added, values checked. Raises UsageError with a message fit for the user."""
    cfg = upgrade(args)
    method = METHODS[variant]
    cfg["variant"] = variant
    cfg.setdefault("attack", method.attacks[0])
    cfg.setdefault("beta", None)
    cfg["region_eps"] = list(cfg["region_eps"])
    spec = DATASETS[cfg["data"]]
    for key in ("step_size", "weight_decay"):
        if cfg.get(key) is None:
            cfg[key] = getattr(spec, key)
    if cfg.get("lr_milestones") is None:
        cfg["lr_milestones"] = [cfg["epochs"]]
    # a run whose budgets come from no CAM (the regions source), or that never leaves its warm-up, is its baseline
    cfg["method"] = method.label(cfg["attack"], masked_epochs(cfg) and MASK_SOURCES[cfg["mask_source"]].uses_cam)
    cfg["num_classes"], cfg["image_size"] = spec.num_classes, spec.image_size
    validate(cfg)
    if not cfg.get("out"):
        cfg["out"] = f"runs/{cfg['method'].lower()}-{cfg['data']}-{cfg['model']}-seed{cfg['seed']}"
    return cfg


def validate(cfg: dict) -> None:
    """Checks that involve more than one value (single values are checked when parsed), of flags and of configs
    read back alike."""
    for key, ordered in (("lr_milestones", True), ("eval_attacks", False)):  # a repeat would compound / run twice
        values = [shown(v) for v in cfg[key]]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice or (ordered and list(cfg[key]) != sorted(cfg[key])):
            why = f"{', '.join(twice)} is named twice" if twice else "they are not in increasing order"
            raise UsageError(f"--{key.replace('_', '-')} {' '.join(values)}: {why}; name each "
                             f"{'epoch once, in increasing order' if ordered else 'attack once'}")
    if not 0 <= cfg["warm_up"] <= cfg["epochs"]:
        raise UsageError(f"--warm-up ({cfg['warm_up']}) must be between 0 and --epochs ({cfg['epochs']})")
    if cfg["low_epsilon"] > cfg["epsilon"]:
        raise UsageError(f"--low-epsilon ({fraction_text(cfg['low_epsilon'])}) must not exceed --epsilon "
                         f"({fraction_text(cfg['epsilon'])})")
    if cfg.get("beta") is None and METHODS[cfg["variant"]].uses_beta:
        raise UsageError("this method needs --beta")
    if cfg["official_trades_forward"] and not METHODS[cfg["variant"]].trades_forward:
        raise UsageError(f"--official-trades-forward applies to TRADES only (train_eval_part_t.py), not to "
                         f"{METHODS[cfg['variant']].script}")


# what --as-published sets (official_trades_forward only where the method has a TRADES loss); it also adds
# aa-official to the default evaluation
AS_PUBLISHED = {"mask_source": "official", "official_starts": True, "official_trades_forward": True}


def apply_as_published(variant: str, args: dict, explicit: set) -> None:
    """With --as-published, set the official settings in `args` (parsed flags) and record them under
    'as_published' as {key: value}. Unless --eval-attacks is explicit (then it is used as given, so a study can
    evaluate every row alike), aa-official joins the default attacks and `explicit` gains eval_attacks. Raises
    UsageError where an explicit flag asks for something else (e.g. --mask-source cam)."""
    if not args.get("as_published"):
        return
    preset = {k: v for k, v in AS_PUBLISHED.items()
              if k != "official_trades_forward" or METHODS[variant].trades_forward}
    for key, value in preset.items():
        if key in explicit and args[key] != value:
            raise UsageError(f"--as-published sets --{key.replace('_', '-')} {shown(value)}, which contradicts "
                             f"--{key.replace('_', '-')} {shown(args[key])}; drop one of them")
    args.update(preset)
    if "eval_attacks" in explicit:
        args["as_published"] = preset
        return
    args["eval_attacks"] = list(args["eval_attacks"]) + [a for a in ("aa-official",) if a not in args["eval_attacks"]]
    args["as_published"] = {**preset, "eval_attacks": args["eval_attacks"]}
    explicit.add("eval_attacks")


def check_constants(parser: Parser, constants: dict, explicit: set) -> None:
    """Check each constant at the top of a script that no flag overrides as its flag checks what it is given
    (argparse checks only the text of a command line, never a default): its type, range and choices. None is a
    value only where the flag takes 'none' or is a list (its default then applies). Raises UsageError naming the
    constant."""
    for action in parser.flags:
        const = action.dest.upper()
        if const not in constants or action.dest in explicit:
            continue
        value = constants[const]
        if value is None:
            problem = None if action.nargs in ("*", "+") or _takes_none(action) else "must be set, got None"
        else:
            problem = _value_problem(action, list(value) if isinstance(value, tuple) else value)
        if problem:
            raise UsageError(f"{const} = {value!r} at the top of the script: {problem}; fix it there, or override it "
                             f"with {action.option_strings[0]}")


def _takes_none(action: argparse.Action) -> bool:
    try:
        return action.type is not None and action.type("none") is None
    except (argparse.ArgumentTypeError, ValueError):
        return False


def parse(variant: str, constants: dict, argv=None) -> tuple[dict, set]:
    """Parse argv (default sys.argv[1:]) against the script's constants. Returns (config, explicit flags).
    Raises UsageError for any bad value."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser(variant, constants).parse_args(argv))
    for flag in ("resume", "overwrite"):
        if args.get("eval_only") and args.get(flag):
            raise UsageError(f"--eval-only evaluates a checkpoint and trains nothing, so --{flag} would be ignored; "
                             f"drop it")
    if args.get("resume") and args.get("overwrite"):
        raise UsageError("--resume continues the run in --out and --overwrite deletes it; give one of them")
    explicit = explicit_flags(build_parser(variant, constants), argv)
    check_constants(build_parser(variant, constants), constants, explicit)
    apply_as_published(variant, args, explicit)
    try:
        cfg = resolve(variant, args)
    except KeyError as e:  # a flag of every script that has no constant: the script lost the line
        raise UsageError(f"the constant {str(e.args[0]).upper()} is missing at the top of the script; put it back "
                         f"(see --help of the shipped script for its default)") from None
    return cfg, explicit


def script_constants(path: str) -> dict:
    """The block of constants at the top of a script, read as the script itself does (without running it)."""
    ns = {"__name__": "constants"}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), ns)
    return {k: v for k, v in ns.items() if k.isupper()}
