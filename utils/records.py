"""A run's record (the results.json that utils/evaluate.py writes), read back and checked: the one reader of it
for every tool (the report, the grid, the device check)."""
import json
import math
import os

from .config import check_saved, upgrade
from .errors import UsageError
from .evaluate import AA_NAMES, column_value, record_columns
from .identity import effective, same_training
from .methods import METHODS
from .runs import open_regular


class RecordError(ValueError):
    """A results.json that cannot be used. `path` is the file, `why` what is wrong with it; str() says both."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def record_settings(rec: dict) -> dict:
    """The configuration a record's numbers come from: the effective settings of its config (every training and
    evaluation setting; see utils.config.effective) with the test-set sizes actually used (0 means all in the
    config). Records without a config (made by hand or by other code) are told apart by method alone."""
    cfg = rec.get("config")
    if not cfg or "variant" not in cfg:
        return {"method": rec.get("method")}
    eff = effective(upgrade(cfg))
    for k in ("n_eval", "n_eval_aa"):
        eff[k] = rec.get(k)
    return eff


def read_record(folder: str, name: str = "results") -> dict:
    """The results.json of a run folder (or another record of it, <name>.json: e.g. eval_last.json, which
    --eval-only writes), checked: UTF-8 JSON holding an object with a method name and an integer seed (or one in
    its config), accuracies that are numbers in [0, 100] or null, and a config (if any) that can be read, whose every
    setting is one its flag could have set (utils.config.check_saved), and whose method, variant, data set, model
    and seed are the record's, and (for a run's results.json) whose run is the one of its folder's config.json;
    sizes, radius and epoch as the config gives them (`size_problem`); a per_image_file that names a file beside it.
    Sets 'seed' and adds 'settings' (`record_settings`). Raises RecordError (a ValueError) naming the file and
    saying what is wrong, also when the file is missing or unreadable."""
    path = os.path.join(folder, f"{name}.json")
    try:
        with open_regular(path, encoding="utf-8") as fh:
            rec = json.load(fh)
    except UnicodeDecodeError:
        raise RecordError(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RecordError(path, f"not valid JSON ({e.msg}, line {e.lineno}): truncated or damaged") from None
    except (ValueError, RecursionError) as e:  # a number too long to convert, nesting too deep to parse
        raise RecordError(path, f"not a run's record ({type(e).__name__}: {str(e)[:80]})") from None
    except OSError as e:
        raise RecordError(path, f"cannot be read ({e.strerror})") from None
    if not isinstance(rec, dict):
        raise RecordError(path, f"holds a JSON {type(rec).__name__}, not a run's record")
    cfg = rec.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        raise RecordError(path, "its 'config' is not a JSON object")
    if not isinstance(rec.get("method"), str):
        raise RecordError(path, "names no method")
    seed = rec.get("seed", (cfg or {}).get("seed"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecordError(path, f"has no whole-number seed (found {seed!r})")
    rec["seed"] = seed
    for key in ("method", "variant", "data", "model", "seed"):  # written from the config: they differ if edited
        if cfg and key in cfg and key in rec and rec[key] != cfg[key]:
            raise RecordError(path, f"its {key} {rec[key]!r} is not its config's {cfg[key]!r}")
    if cfg and "variant" in cfg and (not isinstance(cfg["variant"], str) or cfg["variant"] not in METHODS):
        raise RecordError(path, f"unknown variant {cfg['variant']!r} (known: {', '.join(METHODS)})")
    pif = rec.get("per_image_file")
    if pif is not None and (not isinstance(pif, str) or not pif or os.path.basename(pif) != pif or pif in (".", "..")):
        raise RecordError(path, f"its per_image_file {pif!r} is not the name of a file beside it")
    checked = None
    if cfg and "variant" in cfg:
        try:  # every setting of the config as its flag would take it, as --resume checks a checkpoint's
            checked = check_saved(cfg, "config")
        except UsageError as e:
            raise RecordError(path, str(e).removeprefix("config: ")) from None
    try:
        rec["settings"] = record_settings(rec)
        cols = record_columns(rec)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RecordError(path, f"its config cannot be read ({type(e).__name__}: {e})") from None
    for c in cols:
        v = column_value(rec, c)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise RecordError(path, f"its {c} is {v!r}, not a number")
        if v is not None and not 0 <= v <= 100:
            raise RecordError(path, f"its {c} is {v!r}, not an accuracy in percent (0 to 100)")
    if checked is not None:
        problem = size_problem(rec, checked, name)
        if problem:
            raise RecordError(path, f"{problem}: the record does not come from the configuration it holds")
    if name == "results" and checked is not None:
        other = folder_run_differences(folder, checked)
        if other:
            raise RecordError(path, f"is not the run of its folder's config.json ({other}): a record copied from "
                                    f"another run folder")
    return rec


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def size_problem(rec: dict, cfg: dict, name: str) -> str | None:
    """What in a record disagrees with the config (checked) it holds, as utils.evaluate writes them: the test-set
    size n_test, the images evaluated (n_eval: the config's --n-eval, at most n_test, 0 meaning all), those under
    AutoAttack (n_eval_aa: None without aa / aa-official, else the config's --n-eval-aa, at most n_test, 0 meaning
    n_eval), the radius (eval_epsilon) and the epoch of the checkpoint (a run's results.json: the config's last,
    --epochs; another record: a count or None). None when all agree. A field the record lacks (records of older
    versions, or made by other code) is not checked; the sizes are checked only against an n_test."""
    if "n_test" in rec:
        n_test = rec["n_test"]
        if not _count(n_test) or n_test < 1:
            return f"its n_test {n_test!r} is not a test-set size"
        n_eval = min(cfg["n_eval"], n_test) if cfg.get("n_eval") else n_test
        if "n_eval" in rec and (rec["n_eval"] != n_eval or not _count(rec["n_eval"])):
            return f"its n_eval {rec['n_eval']!r} is not the {n_eval} images its config's --n-eval " \
                   f"{cfg.get('n_eval') or 0} takes of {n_test}"
        attacks = cfg.get("eval_attacks") or ()
        n_aa = (min(cfg["n_eval_aa"], n_test) if cfg.get("n_eval_aa") else n_eval) \
            if any(a in attacks for a in AA_NAMES) else None
        if "n_eval_aa" in rec and (rec["n_eval_aa"] != n_aa or not (n_aa is None or _count(rec["n_eval_aa"]))):
            return f"its n_eval_aa {rec['n_eval_aa']!r} is not the {n_aa} its config's --n-eval-aa and " \
                   f"--eval-attacks give"
    if "eval_epsilon" in rec and "eval_epsilon" in cfg:  # configs of the earliest versions lack it
        eps = rec["eval_epsilon"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or \
                not math.isclose(eps, cfg["eval_epsilon"], rel_tol=1e-9, abs_tol=1e-12):
            return f"its eval_epsilon {eps!r} is not its config's {cfg['eval_epsilon']!r}"
    if "epoch" in rec:
        epoch = rec["epoch"]
        if name == "results" and epoch != cfg["epochs"]:
            return f"its epoch {epoch!r} is not its config's last ({cfg['epochs']}), which a run's results.json " \
                   f"holds"
        if epoch is not None and (not _count(epoch) or epoch < 0):
            return f"its epoch {epoch!r} is not an epoch count"
    return None


def folder_run_differences(folder: str, cfg: dict) -> str | None:
    """How the run whose config.json lies in `folder` was trained otherwise than the run of `cfg` (a results.json's
    config, checked), e.g. another seed; None when they are one run, or when config.json is missing or
    unreadable."""
    try:
        with open_regular(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            own = check_saved(json.load(fh), "config.json")
        differ = same_training(own, cfg)
    except (OSError, ValueError, RecursionError, UsageError, KeyError, TypeError):
        return None
    def said(d):  # 'seed: 1 -> 2' -> 'seed 1 in config.json, 2 here'
        key, _, values = d.partition(": ")
        there, _, here = values.partition(" -> ")
        return f"{key} {there} in config.json, {here} here" if here else d
    return "; ".join(said(d) for d in differ[:3]) or None
