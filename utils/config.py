"""Turn a script's block of constants into typed CLI flags, and resolve + validate the run's config.

Every constant a script defines (upper case) becomes a flag of the same name in kebab case
(WARM_UP -> --warm-up). Run-control flags (where to write, resume, eval-only, evaluation size, speed
options) are not constants: their defaults are in `build_parser`.
"""
import argparse
import sys

from models import MODELS

from .cam import CAM_BACKENDS, CAMS
from .cam import RULES as MASK_RULES
from .data import DATASETS
from .errors import UsageError

EVAL_ATTACKS = ("natural", "pgd20", "mma", "aa")
VARIANTS = {"part": ("PART", "AT"), "part_t": ("PART-T", "TRADES"), "part_m": ("PART-M", "MART")}
ATTACKS = {"part": ("pgd", "mma"), "part_t": ("trades",), "part_m": ("mart",)}

# per-data-set defaults applied where a constant is None (what the official code forces for SVHN)
DATA_DEFAULTS = {
    "svhn": {"step_size": 1 / 255, "weight_decay": 3.5e-3},
    None: {"step_size": 2 / 255, "weight_decay": 2e-4},
}


def parse_fraction(text: str) -> float:
    """'8/255' -> 0.0313..., '0.01' -> 0.01. Raises argparse.ArgumentTypeError on anything else."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None


def _optional(kind):
    def parse(text):
        return None if text.lower() in ("none", "default") else kind(text)
    parse.__name__ = kind.__name__
    return parse


# constant name -> (argparse keyword arguments, help)
SPEC = {
    "DATA": (dict(choices=DATASETS), "data set"),
    "DATA_DIR": (dict(type=str), "data-set root folder (for cifar10-npz: the .npz file)"),
    "MODEL": (dict(choices=MODELS), "architecture"),
    "WIDTH": (dict(type=_optional(int)), "None: standard width; else ResNet-18's first-stage channels or the "
                                         "WRN's widen factor (small values for quick CPU runs)"),
    "EPOCHS": (dict(type=int), "total epochs, warm-up included"),
    "WARM_UP": (dict(type=int), "warm-up epochs with the plain method at full eps"),
    "BATCH_SIZE": (dict(type=int), "global batch size (split across torchrun processes)"),
    "LR": (dict(type=parse_fraction), "initial learning rate (SGD)"),
    "LR_MILESTONES": (dict(type=int, nargs="*"), "global epochs from which lr is multiplied by 0.1, 0.01, ..."),
    "MOMENTUM": (dict(type=parse_fraction), "SGD momentum"),
    "WEIGHT_DECAY": (dict(type=_optional(parse_fraction)), "None: 2e-4 (3.5e-3 on SVHN)"),
    "EPSILON": (dict(type=parse_fraction), "L-inf budget of important pixels (and of warm-up/baselines)"),
    "LOW_EPSILON": (dict(type=parse_fraction), "L-inf budget of the other pixels"),
    "STEP_SIZE": (dict(type=_optional(parse_fraction)), "attack step size; None: 2/255 (1/255 on SVHN)"),
    "NUM_STEPS": (dict(type=int), "attack steps in training"),
    "BETA": (dict(type=parse_fraction), "TRADES / MART regularisation weight"),
    "ATTACK": (dict(), "training attack"),
    "CAM": (dict(choices=CAMS), "class activation map method"),
    "MASK_RULE": (dict(choices=MASK_RULES), "how a CAM becomes a mask (README: official vs monotonic)"),
    "MASK": (dict(action=argparse.BooleanOptionalAction), "--no-mask trains the plain baseline (AT/TRADES/MART)"),
    "SEED": (dict(type=int), "random seed"),
}

def build_parser(variant: str, constants: dict) -> argparse.ArgumentParser:
    name, baseline = VARIANTS[variant]
    p = argparse.ArgumentParser(
        description=f"{name}: train with {baseline} warm-up then pixel-reweighted {baseline}, then evaluate "
                    f"(natural, PGD-20, MMA, AutoAttack). Flags override the constants at the top of the script.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("method (constants at the top of the script)")
    for const, default in constants.items():
        if const not in SPEC:
            raise KeyError(f"constant {const} has no flag spec in utils/config.py")
        kwargs, help_text = SPEC[const]
        kwargs = dict(kwargs)
        if const == "ATTACK":
            kwargs["choices"] = ATTACKS[variant]
        if const == "LR_MILESTONES":
            default = list(default)
        g.add_argument("--" + const.lower().replace("_", "-"), dest=const.lower(), default=default,
                       help=help_text, **kwargs)
    r = p.add_argument_group("run")
    r.add_argument("--out", help="run folder (default runs/<variant>-<data>-<model>-seed<N>)")
    r.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue from CKPT, or from <out>/last.pt when no path is given")
    r.add_argument("--eval-only", metavar="CKPT", help="evaluate a saved checkpoint (its config is read back)")
    r.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 / SVHN")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--n-train", type=int, default=0, help="use only the first N training images (0: all)")
    r.add_argument("--save-freq", type=int, default=10, help="keep epoch_N.pt every N epochs (0: never)")
    r.add_argument("--log-interval", type=int, default=50, help="batches between loss checks / progress updates")
    r.add_argument("--cam-layer", default=None, help="dotted name of the CAM target layer (default: layer4 / block3)")
    r.add_argument("--mask-figure", action=argparse.BooleanOptionalAction, default=True,
                   help="save mask.png (images, CAMs, masks) at the end")
    e = p.add_argument_group("evaluation")
    e.add_argument("--n-eval", type=int, default=0, help="test images in the final evaluation (0: all)")
    e.add_argument("--n-eval-aa", type=int, default=0, help="test images for AutoAttack (0: the --n-eval images)")
    e.add_argument("--n-eval-epoch", type=int, default=1000, help="test images for the per-epoch PGD-20 check")
    e.add_argument("--eval-attacks", nargs="+", choices=EVAL_ATTACKS, default=list(EVAL_ATTACKS),
                   help="what the final evaluation runs")
    e.add_argument("--eval-epsilon", type=parse_fraction, default=8 / 255, help="evaluation L-inf budget")
    e.add_argument("--eval-batch-size", type=int, default=256)
    s = p.add_argument_group("speed (defaults are faithful fp32)")
    s.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype on CUDA")
    s.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    s.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions on CUDA")
    s.add_argument("--cam-backend", choices=CAM_BACKENDS, default="grad-cam",
                   help="torch: the same CAMs computed on the device, no host copies (matches grad-cam to 1e-4)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set:
    """The dest names of the flags that appear on the command line (as opposed to defaults)."""
    shadow = argparse.ArgumentParser(add_help=False)
    for a in parser._actions:
        if a.option_strings and a.dest != "help":
            kw = {"dest": a.dest, "default": argparse.SUPPRESS}
            if a.nargs is not None and not isinstance(a, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
                kw["nargs"] = a.nargs
            if isinstance(a, argparse._StoreTrueAction):
                kw["action"] = "store_true"
            elif isinstance(a, argparse.BooleanOptionalAction):
                kw["action"] = argparse.BooleanOptionalAction
            shadow.add_argument(*a.option_strings, **kw)
    ns, _ = shadow.parse_known_args(argv)
    return set(vars(ns))


def resolve(variant: str, args: argparse.Namespace) -> dict:
    """The run's full config as a plain dict: data-set defaults filled in, names added, values checked.
    Raises UsageError with a message fit for the user."""
    cfg = dict(vars(args))
    cfg["variant"] = variant
    cfg["method"], cfg["baseline"] = VARIANTS[variant]
    cfg.setdefault("attack", ATTACKS[variant][0])
    cfg.setdefault("beta", None)
    for key, value in DATA_DEFAULTS.get(cfg["data"], DATA_DEFAULTS[None]).items():
        if cfg.get(key) is None:
            cfg[key] = value
    validate(cfg)
    if not cfg.get("out"):
        cfg["out"] = f"runs/{variant}-{cfg['data']}-{cfg['model']}-seed{cfg['seed']}"
    return cfg


def validate(cfg: dict) -> None:
    def bad(msg):
        raise UsageError(msg)
    if cfg["epochs"] < 1:
        bad(f"--epochs must be at least 1, got {cfg['epochs']}")
    if not 0 <= cfg["warm_up"] <= cfg["epochs"]:
        bad(f"--warm-up ({cfg['warm_up']}) must be between 0 and --epochs ({cfg['epochs']})")
    if cfg["epsilon"] < 0 or cfg["low_epsilon"] < 0:
        bad("--epsilon and --low-epsilon must be non-negative")
    if cfg["low_epsilon"] > cfg["epsilon"]:
        bad(f"--low-epsilon ({cfg['low_epsilon']:.6g}) must not exceed --epsilon ({cfg['epsilon']:.6g})")
    if cfg["batch_size"] < 1 or cfg["num_steps"] < 0:
        bad("--batch-size must be positive and --num-steps non-negative")
    if cfg.get("width") is not None and cfg["width"] < 1:
        bad(f"--width must be positive, got {cfg['width']}")
    if cfg["lr"] <= 0:
        bad(f"--lr must be positive, got {cfg['lr']}")


def parse(variant: str, constants: dict, argv=None) -> tuple[dict, set]:
    """Parse argv (default sys.argv[1:]) against the script's constants. Returns (config, explicit flags)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(variant, constants)
    args = parser.parse_args(argv)
    return resolve(variant, args), explicit_flags(parser, argv)
