"""The robust evaluation suite: one registry of evaluation attacks and the JSON record (CIFAR-10-C: corruptions.py).

Attack names (for --eval-attacks, keys of results.json, columns of the report):
  natural    clean accuracy
  pgdN       PGD with N steps of the evaluation step size, random start (pgd20, pgd50, pgd100, ...)
  mma        minimum-margin attack (k = 3), 20 steps
  cw         CW-inf: PGD on the Carlini-Wagner margin loss, 30 steps, random start (TRADES / MART settings)
  part-pgd   PGD-20 within the model's own PART mask (eps where its CAM marks, eps_low elsewhere)
  aa         AutoAttack, standard version (fra31), on the first n_eval_aa images
  aa-official  AutoAttack as the official PART code runs it (torchattacks, 10 iterations per attack), seeded,
             on the first n_eval_aa images
"""
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from attacks import autoattack, autoattack_official, autoattack_version, cw, frozen, mma, pgd, torchattacks_version

from . import ROOT
from .batches import eval_batches, to_float
from .data import Dataset
from .mask_sources import epsilon_mask
from .units import fraction_text


@dataclass(frozen=True)
class EvalAttack:
    """run(model, x, y, ctx) -> images to classify; ctx holds eps, step_size and the run's config."""
    title: str
    run: Callable


def _pgd_steps(steps):
    return lambda model, x, y, c: pgd(model, x, y, c["eps"], c["step_size"], steps)


def _part_pgd(model, x, y, c):
    cfg = c["cfg"]
    budget = epsilon_mask(model, x, c["eps"], cfg["low_epsilon"], cfg["cam"], cfg["mask_rule"], cfg["cam_layer"],
                          cfg["cam_backend"])
    return pgd(model, x, y, budget, c["step_size"], 20)


EVAL_ATTACKS = {
    "natural": EvalAttack("Natural", lambda model, x, y, c: x),
    "pgd20": EvalAttack("PGD-20", _pgd_steps(20)),
    "mma": EvalAttack("MMA", lambda model, x, y, c: mma(model, x, y, c["eps"], c["step_size"], 20, k=3)),
    "cw": EvalAttack("CW-inf", lambda model, x, y, c: cw(model, x, y, c["eps"], c["step_size"], 30)),
    "part-pgd": EvalAttack("PART-PGD", _part_pgd),
    "aa": EvalAttack("AA", None),  # run on its own subset, see `evaluate`
    "aa-official": EvalAttack("AA (official)", None),  # likewise
}
AA_NAMES = ("aa", "aa-official")  # the attacks run on the first n_eval_aa images
DEFAULT_EVAL_ATTACKS = ("natural", "pgd20", "mma", "aa")


def eval_attack(name: str) -> EvalAttack:
    """The registry entry of `name`; pgdN for any N >= 1 is PGD with N steps."""
    if name in EVAL_ATTACKS:
        return EVAL_ATTACKS[name]
    m = re.fullmatch(r"pgd([1-9][0-9]*)", name)
    if m:
        return EvalAttack(f"PGD-{m.group(1)}", _pgd_steps(int(m.group(1))))
    raise ValueError(f"unknown evaluation attack {name!r}; choose from natural, pgdN (e.g. pgd20, pgd50), mma, cw, "
                     f"part-pgd, aa, aa-official")


def check_eval_attack(name: str) -> str:
    eval_attack(name)
    return name


def column_title(name: str) -> str:
    return "CIFAR-10-C" if name == "corruptions" else eval_attack(name).title


def library_versions(device: torch.device | None = None) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("torchvision", "numpy", "grad-cam", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    out["autoattack"] = autoattack_version()
    out["torchattacks"] = torchattacks_version()
    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out["cpu"] = cpu_description()
    return out


def cpu_description() -> str:
    """The host CPU's model name and the instruction set torch's CPU kernels use (e.g. 'Intel(R) Xeon(R)
    Processor, AVX512'): two machines with the same library versions can still round differently when these
    differ, since MKL and oneDNN pick their kernels by CPU."""
    name = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def provenance() -> dict:
    """The code's git commit, whether tracked files differ from it, and the exact command line."""
    out = {"commit": None, "dirty": None, "command": [sys.executable, *sys.argv]}
    try:
        out["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
        if out["commit"]:
            status = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout
            out["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _correct(model, x, y, batch_size) -> torch.Tensor:
    """Bool tensor (N,) on the model's device: whether the model classifies each image of x correctly."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                          for i in range(0, x.shape[0], batch_size)])


def evaluate(model: torch.nn.Module, data: Dataset, *, attacks=DEFAULT_EVAL_ATTACKS, eps: float = 8 / 255,
             step_size: float = 2 / 255, n_eval: int = 0, n_eval_aa: int = 0, batch_size: int = 256, seed: int = 0,
             cfg: dict | None = None, aa_log: str | None = None, log=None, progress: bool = False) -> dict:
    """Accuracy in percent on the first `n_eval` test images (all when 0) under each of `attacks` (names as in
    the module docstring), AutoAttack (aa, aa-official) on the first `n_eval_aa` (0: the same n_eval images).
    `cfg` is the run's config (needed by part-pgd: low_epsilon, cam, mask_rule). Each attack is seeded with `seed`
    afresh, so its figure does not depend on which other attacks ran. `log` (a logger) gets a line as each attack
    starts and ends; `aa_log` receives AutoAttack's own log.
    Returns {name: accuracy, ..., 'n_eval', 'n_eval_aa' (None without aa and aa-official), 'n_test',
    'time_s': {name: s}, 'aa_breakdown': {...} (with aa), 'aa_official_seed' (with aa-official: the seed
    torchattacks got), 'per_image': {name: bool array (size,), one per test image, in test-set order from
    index 0}}; the default attacks that did not run are None. The model is left as `attacks.frozen` guarantees."""
    from tqdm import tqdm
    device = next(model.parameters()).device
    n_test = data.x_test.shape[0]
    n = n_test if not n_eval else min(n_eval, n_test)
    n_aa = n if not n_eval_aa else min(n_eval_aa, n_test)
    ctx = {"eps": eps, "step_size": step_size, "cfg": cfg or {}}
    result = {**{a: None for a in DEFAULT_EVAL_ATTACKS}, "n_eval": n,
              "n_eval_aa": n_aa if any(a in attacks for a in AA_NAMES) else None,
              "n_test": n_test, "time_s": {}, "per_image": {}}
    say = log.info if log else (lambda *a: None)
    with frozen(model):
        for name in attacks:
            size = n_aa if name in AA_NAMES else n
            say("eval %s: started on %d test images", name, size)
            torch.manual_seed(seed)
            t = time.time()
            if name in AA_NAMES:
                x, y = to_float(data.x_test[:n_aa]).to(device), data.y_test[:n_aa].to(device)
                if name == "aa":
                    xa, result["aa_breakdown"] = autoattack(model, x, y, eps, num_classes=data.num_classes,
                                                            batch_size=batch_size, seed=seed, log_path=aa_log,
                                                            progress=(lambda m: say("eval aa: %s", m)))
                else:
                    xa = autoattack_official(model, x, y, eps, seed=seed, batch_size=batch_size)
                    result["aa_official_seed"] = seed
                hits = _correct(model, xa, y, batch_size)
            else:
                run = eval_attack(name).run
                parts = []
                for x, y in tqdm(eval_batches(data, batch_size, n), total=-(-n // batch_size), desc=name,
                                 disable=None if progress else True, leave=False):
                    x, y = x.to(device), y.to(device)
                    parts.append(_correct(model, run(model, x, y, ctx), y, batch_size))
                hits = torch.cat(parts)
            if device.type == "cuda":
                torch.cuda.synchronize()
            result["time_s"][name] = round(time.time() - t, 2)
            result["per_image"][name] = hits.cpu().numpy()
            correct = int(result["per_image"][name].sum())
            result[name] = 100.0 * correct / size
            say("eval %s: %.2f%% (%d/%d) in %.1f s", name, result[name], correct, size, result["time_s"][name])
    return result


# ----------------------------------------------------------------------------------------------------
# the record
# ----------------------------------------------------------------------------------------------------
def per_image_name(record_name: str) -> str:
    """The per-image file beside a record: results -> per_image.npz, eval_last -> eval_last_per_image.npz."""
    return "per_image.npz" if record_name == "results" else f"{record_name}_per_image.npz"


def per_image_arrays(res: dict, data: Dataset, fingerprint: str | None) -> dict:
    """The arrays of a per_image.npz: for each attack <name> (bool, one per image: correct under it) and
    <name>_index (int64, the test-set indices of those images); `labels` (int64) of the first max(size) test
    images; `n_test`; `data_fingerprint` (the test set's identity, '' when unknown)."""
    out = {}
    for name, hits in res["per_image"].items():
        out[name] = np.asarray(hits, dtype=bool)
        out[f"{name}_index"] = np.arange(len(hits), dtype=np.int64)
    size = max((len(h) for h in res["per_image"].values()), default=0)
    out["labels"] = data.y_test[:size].cpu().numpy().astype(np.int64)
    out["n_test"] = np.int64(res["n_test"])
    out["data_fingerprint"] = np.array(fingerprint or "")
    return out


ARCHITECTURES = {"resnet18": ("ResNet-18", 64), "wrn34-10": ("WideResNet-34-10", 10)}


def robustbench_fields(cfg: dict, res: dict) -> dict:
    """RobustBench's model-info fields (strings as RobustBench writes them)."""
    arch, standard = ARCHITECTURES.get(cfg["model"], (cfg["model"], None))
    if cfg.get("width") not in (None, standard):
        arch += f" (width {cfg['width']})"
    return {"clean_acc": None if res.get("natural") is None else f"{res['natural']:.2f}",
            "autoattack_acc": None if res.get("aa") is None else f"{res['aa']:.2f}",
            "eps": fraction_text(cfg["eval_epsilon"]), "architecture": arch, "dataset": cfg["data"],
            "threat_model": "Linf", "number_forward_passes": 1}


def make_record(cfg: dict, res: dict, checkpoint: str | None, eval_time_s: float, device=None,
                epoch: int | None = None) -> dict:
    """The JSON record of an evaluated model: accuracies, sizes, the checkpoint and the epoch it holds (None
    when unknown, e.g. another code's checkpoint), config, provenance, RobustBench fields."""
    accs = {k: v for k, v in res.items() if k not in ("n_eval", "n_eval_aa", "n_test", "time_s", "per_image")}
    return {"method": cfg["method"], "variant": cfg["variant"], "data": cfg["data"], "model": cfg["model"],
            "seed": cfg["seed"], **accs, "n_eval": res["n_eval"], "n_eval_aa": res["n_eval_aa"], "n_test": res["n_test"],
            "eval_epsilon": cfg["eval_epsilon"], "eval_time_s": round(eval_time_s, 1), "attack_time_s": res["time_s"],
            "checkpoint": checkpoint, "epoch": epoch, **robustbench_fields(cfg, res), **provenance(),
            "versions": library_versions(device), "config": cfg}


def record_columns(record: dict) -> list[str]:
    """The accuracy columns of a record: the attacks its config ran, in that order (a record without a config:
    the four standard columns), then CIFAR-10-C when evaluated."""
    attacks = record.get("config", {}).get("eval_attacks")
    names = [k for k in attacks if k in record] if attacks else [k for k in DEFAULT_EVAL_ATTACKS if k in record]
    if isinstance(record.get("corruptions"), dict):
        names.append("corruptions")
    return names


def column_value(record: dict, name: str):
    """A record's value of column `name`: the accuracy, the 'mean' of an entry that is a dict (CIFAR-10-C), or None
    where the record has none. The one reader of a column's value (the report's tables use it too)."""
    v = record.get(name)
    return v.get("mean") if isinstance(v, dict) else v


def markdown_table(record: dict, label: str | None = None) -> str:
    """One-row markdown table of a record's accuracies, in evaluation order ('-' where a value is None)."""
    cols = record_columns(record)
    head = ([("Method", label)] if label else []) + [(column_title(c), column_value(record, c)) for c in cols]
    cells = [v if isinstance(v, str) else ("-" if v is None else f"{v:.2f}") for _, v in head]
    return ("| " + " | ".join(t for t, _ in head) + " |\n|" + "---|" * len(head) + "\n| "
            + " | ".join(cells) + " |\n")
