"""Read run folders and print their tables: one row per configuration, mean +- std over seeds, and differences.

    python -m tools.report runs/                      # every run folder below runs/
    python -m tools.report docs/studies/mask-source --per-seed --plot curves.png
    python -m tools.report runs/ --diff "PART (mask_source=cam)" "PART (mask_source=permuted)" --csv table.csv

Runs are grouped by their whole configuration: every training and evaluation setting except the seed and
the run-control flags (where to write, how often to log, ...), and without the mask settings a run never used
(a --no-mask run reads none of them). Runs that differ in anything else are never averaged together. One table
per (data set, model); each row is labelled by its method and by the settings that differ between the rows
of its table, e.g. `PART (cam=layercam)`. A cell is the mean +- sample standard deviation over the runs that
have that column, with their number in brackets. Two runs of one configuration with the same seed are not
averaged: the newer is kept and a warning names both. Budget columns come from metrics.csv: the mean budget
(in 1/255) and the share of elements at eps over the epochs after warm-up. After the table, each masked row
minus its unmasked baseline (same settings otherwise), and any --diff A B, each with its 95% confidence interval:
the paired t-interval over the seeds both rows have, or Welch's interval over the runs when they share none
(utils/stats.py holds the statistics). Unfinished runs are listed as missing, never counted as zero. A
results.json or metrics.csv that cannot be used (truncated, not a record, not UTF-8, without a seed, of an unknown
method, malformed rows) is left out, and the report names the file and why at its end; a per_image.npz that
does not match its run stops the report (exit 2).

    python -m tools.report docs/studies/figure1 --diff ul6, br6, --mark natural=1.23 pgd20=0.94 --plan 0.5 1.0 \
        --bootstrap 10000 --json r.json                # with the published effect beside the interval
    python -m tools.report --mcnemar RUN_A RUN_B     # exact McNemar test of two runs on the same test images

--plan DELTA gives, per difference and column, the seeds the paired t-test needs to detect DELTA points with
--power at two-sided --alpha, and the smallest difference the current seeds resolve. --bootstrap N adds a
percentile bootstrap interval that resamples test images and seeds together, from the runs' per_image.npz;
--bootstrap-over images (or seeds) resamples only that one, which shows where the interval's width comes from.
"""
import argparse
import csv
import json
import math
import os
import sys

if __name__ == "__main__":  # run as a file (python tools/report.py): put the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np

from utils import stats
from utils.config import MASK_KEYS, RECORDED_KEYS, SEED, Parser, effective, nonempty, number, upgrade
from utils.errors import UsageError, entry_point
from utils.evaluate import AA_NAMES, column_title, per_image_name, record_columns
from utils.methods import METHODS, labels
from utils.runs import check_writable, read_metrics
from utils.units import fraction_text

ORDER = list(labels())  # AT, PART, MMA, PART-MMA, TRADES, ...
FIXED = ("variant", "mask", "attack", "data", "model")  # said by the table's title and the method name


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def find_runs(paths):
    """Run folders among `paths` and below them: any folder holding config.json or results.json (a run folder's
    subfolders are searched too, so a stray config.json in a root hides nothing)."""
    found = []
    for p in paths:
        for root, dirs, files in os.walk(p):
            if "config.json" in files or "results.json" in files:
                found.append(root)
    return sorted(set(found))


def read_record(folder) -> dict:
    """The results.json of a run folder, checked: UTF-8 JSON holding an object with a method name and an integer
    seed (or one in its config), accuracies that are numbers in [0, 100] or null, and a config (if any) that the
    report can read and whose method, variant, data set, model and seed are the record's. Adds 'settings'. Raises
    ValueError saying what is wrong."""
    try:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            rec = json.load(fh)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg}, line {e.lineno}): truncated or damaged") from None
    except OSError as e:
        raise ValueError(f"cannot be read ({e.strerror})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"holds a JSON {type(rec).__name__}, not a run's record")
    cfg = rec.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError("its 'config' is not a JSON object")
    if not isinstance(rec.get("method"), str):
        raise ValueError("names no method")
    seed = rec.get("seed", (cfg or {}).get("seed"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"has no whole-number seed (found {seed!r})")
    rec["seed"] = seed
    for key in ("method", "variant", "data", "model", "seed"):  # written from the config: they differ if edited
        if cfg and key in cfg and key in rec and rec[key] != cfg[key]:
            raise ValueError(f"its {key} {rec[key]!r} is not its config's {cfg[key]!r}")
    if cfg and "variant" in cfg and (not isinstance(cfg["variant"], str) or cfg["variant"] not in METHODS):
        raise ValueError(f"unknown variant {cfg['variant']!r} (known: {', '.join(METHODS)})")
    try:
        rec["settings"] = settings(rec)
        cols = record_columns(rec)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"its config cannot be read ({type(e).__name__}: {e})") from None
    for c in cols:
        v = value(rec, c)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"its {c} is {v!r}, not a number")
        if v is not None and not 0 <= v <= 100:
            raise ValueError(f"its {c} is {v!r}, not an accuracy in percent (0 to 100)")
    return rec


METRIC_NUMBERS = ("lr", "loss", "natural", "pgd20", "budget_mean", "eps_share", "epoch_time_s", "eval_time_s")


def _number_or_blank(v) -> bool:
    if v in (None, ""):
        return True
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def read_run_metrics(folder):
    """(rows of metrics.csv whose epoch is a whole number and whose numbers are numbers, one per epoch (the last
    row of a repeated epoch) in epoch order, a note on what was left out or None)."""
    path = os.path.join(folder, "metrics.csv")
    if not os.path.exists(path):
        return [], None
    try:
        rows = read_metrics(path)
        with open(path, newline="", errors="replace") as f:  # every row, to count those read_metrics skips
            reader = csv.DictReader(f)
            total = sum(1 for _ in reader)
    except (csv.Error, OSError, UnicodeError) as e:
        return [], f"cannot be read ({type(e).__name__}: {e}); left out of the budget columns and curves"
    if reader.fieldnames and "epoch" not in reader.fieldnames:
        return [], "has no epoch column (not a metrics.csv); left out of the budget columns and curves"
    good = [r for r in rows if all(_number_or_blank(r.get(k)) for k in METRIC_NUMBERS)]
    bad = total - len(good)
    last = {r["epoch"]: r for r in good}  # as a resume trims it: one row per epoch, the last one seen
    repeated = len(good) - len(last)
    notes = [f"{bad} malformed row(s) left out of the budget columns and curves"] if bad else []
    if repeated:
        notes.append(f"{repeated} repeated epoch row(s); the last row of each epoch is used")
    return sorted(last.values(), key=lambda r: r["epoch"]), "; ".join(notes) or None


def load_runs(folders, skipped=None, per_image=False):
    """(runs, unfinished folders). A run is its results.json content plus 'folder', 'metrics' (the rows of
    metrics.csv) and 'settings' (its configuration). A results.json that cannot be used leaves its run out, and
    malformed rows of a metrics.csv are left out; each such file is appended to `skipped` as (path, why)."""
    runs, unfinished = [], []
    skipped = [] if skipped is None else skipped
    for f in folders:
        path = os.path.join(f, "results.json")
        if not os.path.isfile(path):
            unfinished.append(f)
            continue
        try:
            rec = read_record(f)
        except ValueError as e:
            skipped.append((path, str(e)))
            continue
        rec["folder"], rec["mtime"] = f, os.path.getmtime(path)
        rec["metrics"], note = read_run_metrics(f)
        if note:
            skipped.append((os.path.join(f, "metrics.csv"), note))
        rec["per_image"] = load_per_image(f, rec) if per_image else None
        runs.append(rec)
    return runs, unfinished


def load_per_image(folder: str, rec: dict, name: str = "results") -> dict | None:
    """The run's per-image record (see utils.evaluate.per_image_arrays) as {'columns': {col: bool array},
    'test_set': {col: identity of the images}}, or None when the run has none. Raises UsageError when the file
    is unreadable or does not match its record (another length, or another accuracy than results.json says)."""
    path = os.path.join(folder, rec.get("per_image_file") or per_image_name(name))
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged zip member raises zlib.error, NotImplementedError, ...
        raise UsageError(f"{path} is not a readable per-image record ({type(e).__name__})") from None
    out = {"columns": {}, "test_set": {}}
    fingerprint = str(arrays.get("data_fingerprint", ""))
    labels, n_test = arrays.get("labels"), arrays.get("n_test", np.int64(-1))
    if labels is not None and labels.ndim != 1 or np.ndim(n_test) != 0 or n_test.dtype.kind not in "iu":
        raise UsageError(f"{path} is not a per-image record (its labels are not a vector or its n_test not a count)")
    for col in record_columns(rec):
        if col not in arrays or col == "corruptions":
            continue
        bits, index = arrays[col], arrays.get(f"{col}_index")
        size = rec.get("n_eval_aa") if col in AA_NAMES else rec.get("n_eval")
        acc = value(rec, col)
        if (bits.dtype != bool or bits.ndim != 1 or index is None or index.shape != bits.shape or labels is None
                or index.dtype.kind not in "iu" or (len(index) and not 0 <= index.min() <= index.max() < len(labels))):
            raise UsageError(f"{path}: '{col}' is not a per-image record (bool vector with its test indices)")
        if (size is not None and len(bits) != size) or acc is None or abs(100.0 * bits.mean() - acc) > 1e-6:
            raise UsageError(f"{path} does not match {os.path.join(folder, 'results.json')}: {col} has "
                             f"{len(bits)} images at {100.0 * bits.mean():.2f}%, the record {size} at {acc}")
        out["columns"][col] = bits
        out["test_set"][col] = (fingerprint, int(n_test), index.tobytes(), labels[index].tobytes())
    return out


def settings(rec: dict) -> dict:
    """The configuration a record's numbers come from (see the module docstring); records without a config
    (made by hand or by other code) are told apart by method alone."""
    cfg = rec.get("config")
    if not cfg or "variant" not in cfg:
        return {"method": rec.get("method")}
    eff = effective(upgrade(cfg))
    for k in ("n_eval", "n_eval_aa"):  # the sizes actually used (0 means all in the config)
        eff[k] = rec.get(k)
    return eff


QUADRANTS = ("ul", "ur", "br", "bl")  # the order of region_eps (utils/mask_sources.py)


def _setting_text(key, v) -> str:
    """A setting as a label shows it; region budgets name their quadrants in 1/255: ul6,ur12,br12,bl12."""
    if key == "region_eps" and isinstance(v, list) and len(v) == 4 and \
            all(abs(e * 255 - round(e * 255)) < 1e-9 for e in v):
        return ",".join(f"{q}{round(e * 255)}" for q, e in zip(QUADRANTS, v))
    return _text(v)


def _text(v) -> str:
    if isinstance(v, list):
        return " ".join(_text(x) for x in v)
    return fraction_text(v) if isinstance(v, float) else str(v)


def columns(runs) -> list[str]:
    """Accuracy columns present in any run, in evaluation order (natural, pgdN, mma, cw, part-pgd, aa, aa-official,
    CIFAR-10-C)."""
    seen = []
    for r in runs:
        for c in record_columns(r):
            if c not in seen and (r.get(c) is not None or c not in ("natural", "pgd20", "mma", "aa")):
                seen.append(c)
    rank = {"natural": 0, "mma": 2, "cw": 3, "part-pgd": 4, "aa": 5, "aa-official": 5.5, "corruptions": 6}
    return sorted(seen, key=lambda c: (rank.get(c, 1), int(c[3:]) if c.startswith("pgd") and c[3:].isdigit() else 0))


def value(run, col):
    v = run.get(col)
    return v.get("mean") if isinstance(v, dict) else v


def budget_stats(run) -> dict:
    """Mean budget (1/255) and share at eps over the epochs after warm-up (all epochs if none) that record each,
    from metrics.csv."""
    rows = [r for r in run["metrics"] if r.get("budget_mean") not in (None, "")]
    after = [r for r in rows if r.get("phase") != "warm-up"] or rows
    out = {}
    for k in ("budget_mean", "eps_share"):
        vals = [float(r[k]) for r in after if r.get(k) not in (None, "")]
        out[k] = sum(vals) / len(vals) if vals else None
    return out


def mean_std(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return m, s, len(vals)


# ----------------------------------------------------------------------------------------------------
# grouping
# ----------------------------------------------------------------------------------------------------
LABELS = {name: (baseline, masked) for name, (_, _, masked, baseline) in labels().items()}  # -> (baseline, masked?)


class Group:
    """The runs of one configuration. `masked` and `core` (the settings apart from the mask ones) pair a masked
    group with its baseline."""

    def __init__(self, settings, method):
        self.settings, self.method, self.runs, self.label = settings, method, [], method
        self.masked = settings["mask"] if "mask" in settings else LABELS.get(method, (None, False))[1]
        self.core = {k: v for k, v in settings.items() if k not in MASK_KEYS and k not in ("mask", "method")}

    def stat(self, col):
        return mean_std([value(r, col) for r in self.runs])

    def budget(self, key):
        return mean_std([budget_stats(r)[key] for r in self.runs])


def group_runs(runs, warn):
    """{(data, model): [Group, ...]} with one run per seed in each group, labelled by what differs."""
    tables = {}
    for r in sorted(runs, key=lambda r: r["mtime"]):
        key = json.dumps(identity(r["settings"], r), sort_keys=True, default=str)
        groups = tables.setdefault((r.get("data"), r.get("model")), {})
        g = groups.setdefault(key, Group(r["settings"], r.get("method")))
        twin = next((o for o in g.runs if o.get("seed") == r.get("seed")), None)
        if twin is not None:
            warn(f"two runs of one configuration with seed {r.get('seed')}: {twin['folder']} and {r['folder']}; "
                 f"only the newer, {r['folder']}, is used")
            g.runs.remove(twin)
        g.runs.append(r)
    out = {}
    for table, groups in tables.items():
        gs = list(groups.values())
        label_groups(gs)
        out[table] = sorted(gs, key=lambda g: (ORDER.index(g.method) if g.method in ORDER else len(ORDER), g.label))
    return out


def identity(settings: dict, run: dict) -> dict:
    """What tells a run's group apart: its settings, and for a record without a config the test-set sizes it
    names (a config's settings hold them already), so that runs on other test images are never averaged."""
    return {"n_eval": run.get("n_eval"), "n_eval_aa": run.get("n_eval_aa"), **settings}


def label_groups(groups):
    """Label each group: its method, plus `key=value` for each setting whose values differ among the groups that
    have it, where the group's value is not the one most of those groups share (all values when none is). Groups
    this leaves alike (a setting only one of them has, e.g. the regions source beside plain AT) get every setting
    that tells them apart, on the groups that have it: no two groups share a label."""
    keys = sorted({k for g in groups for k in g.settings} - set(FIXED) - {"method"})
    shown = {g: [] for g in map(id, groups)}
    for k in keys:
        values = [_setting_text(k, g.settings[k]) for g in groups if k in g.settings]
        if len(set(values)) < 2:
            continue
        counts = sorted(((values.count(v), v) for v in set(values)), reverse=True)
        modal = counts[0][1] if counts[0][0] > counts[1][0] else None
        for g in groups:
            if k in g.settings and _setting_text(k, g.settings[k]) != modal:
                shown[id(g)].append(f"{k}={_setting_text(k, g.settings[k])}")

    def name(g):
        return g.method + (f" ({', '.join(shown[id(g)])})" if shown[id(g)] else "")

    for fixed in (False, True):  # the settings a method name says (FIXED) only where the others do not suffice
        alike = {}
        for g in groups:
            alike.setdefault(name(g), []).append(g)
        for same in (gs for gs in alike.values() if len(gs) > 1):
            ids = [identity(g.settings, g.runs[0]) for g in same]
            for k in sorted({k for i in ids for k in i if (k in FIXED) == fixed} - {"method"}):
                texts = [_setting_text(k, i[k]) if k in i else None for i in ids]
                if len(set(texts)) > 1:
                    for g, t in zip(same, texts):
                        if t is not None and f"{k}={t}" not in shown[id(g)]:
                            shown[id(g)].append(f"{k}={t}")
    for g in groups:
        g.label = name(g)


def baseline_of(group, groups):
    """The unmasked group of the same method with the same settings apart from the mask ones, if any."""
    if not group.masked:
        return None
    name = LABELS.get(group.method, (None,))[0]
    return next((g for g in groups if not g.masked and g.method == name and g.core == group.core), None)


# ----------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------
def fmt(ms, digits=2, sign=""):
    m, s, n = ms
    if n == 0:
        return "missing"
    return (f"{m:{sign}.{digits}f}" if s is None else f"{m:{sign}.{digits}f} ± {s:.{digits}f}") + f" [{n}]"


def seed_values(group, col) -> dict:
    """{seed: value of `col`} over the group's runs that have the column."""
    return {r.get("seed"): value(r, col) for r in group.runs if value(r, col) is not None}


def per_image_values(group, col) -> dict | None:
    """{seed: bool vector} of `col` over the group's runs that have the column, or None when one of them has no
    per-image record of it."""
    runs = [r for r in group.runs if value(r, col) is not None]
    if not runs or any(r["per_image"] is None or col not in r["per_image"]["columns"] for r in runs):
        return None
    return {r.get("seed"): r["per_image"]["columns"][col] for r in runs}


def check_same_images(groups, col) -> None:
    """Raise UsageError unless every run of `groups` with a per-image record of `col` scored the same test
    images (same data fingerprint, test-set size, indices and labels)."""
    seen = {}
    for g in groups:
        for r in g.runs:
            if r["per_image"] is not None and col in r["per_image"]["test_set"]:
                seen.setdefault(r["per_image"]["test_set"][col], r["folder"])
    if len(seen) > 1:
        a, b = list(seen.values())[:2]
        raise UsageError(f"per-image records of {col} in {a} and {b} come from different test images; they cannot "
                         f"be paired (evaluate both on the same test set)")


BOOTSTRAP_NOTE = {
    "both": "Bootstrap: {n} percentile replicates resampling test images and seeds together (one draw of images "
            "shared by all runs; seeds paired where the rows share them); unlike the t-interval, which holds the "
            "test set fixed, it also counts which test images were drawn.",
    "images": "Bootstrap: {n} percentile replicates resampling test images only (one draw shared by all runs; "
              "every seed kept once): the spread that the draw of the test set alone gives.",
    "seeds": "Bootstrap: {n} percentile replicates resampling seeds only (paired where the rows share them; "
             "every test image kept once): like the t-interval, it holds the test set fixed.",
}


def difference(a, b, col, bootstrap=0, boot_seed=0, boot_over="both") -> dict | None:
    """A - B on `col`: the mean (paired over shared seeds, else of the rows' means), its 95% interval, and with
    `bootstrap` > 0 the per-image bootstrap interval over `boot_over` (see stats.bootstrap_interval; None where a
    run has no per-image record). None when a row has no value."""
    iv = stats.difference_interval(seed_values(a, col), seed_values(b, col))
    if iv is None:
        return None
    boot = None
    if bootstrap:
        va, vb = per_image_values(a, col), per_image_values(b, col)
        if va and vb:
            check_same_images([a, b], col)
            boot = list(stats.bootstrap_interval(va, vb, bootstrap, boot_seed, over=boot_over))
    return {"a": a.label, "b": b.label, "column": col, "mean": iv.mean,
            "ci95": None if iv.lo is None else [iv.lo, iv.hi], "n": iv.n, "paired": iv.paired,
            "n_a": iv.n_a if not iv.paired else None, "n_b": iv.n_b if not iv.paired else None, "test": iv.test,
            "bootstrap_ci95": boot}


def plan(a, b, col, deltas, power=0.8, alpha=0.05) -> list[dict]:
    """Per delta: the paired sd of A - B over the shared seeds, the seeds the paired t-test needs to detect delta
    with `power` at two-sided `alpha`, and the smallest difference the current pairs resolve. With fewer than 2
    pairs, sd, seeds and resolvable are None."""
    va, vb = seed_values(a, col), seed_values(b, col)
    d = [va[k] - vb[k] for k in sorted(va.keys() & vb.keys())]
    sd = float(np.std(d, ddof=1)) if len(d) >= 2 else None
    resolvable = None if sd is None else stats.resolvable_delta(sd, len(d), power, alpha)
    return [{"a": a.label, "b": b.label, "column": col, "n": len(d), "sd": sd, "delta": delta,
             "seeds": None if sd is None else stats.seeds_needed(delta, sd, power, alpha), "resolvable": resolvable,
             "power": power, "alpha": alpha} for delta in deltas]


def comparisons(groups, diffs):
    """[(A, B)]: each masked group against its baseline, each baseline that has no masked group, and each
    --diff A B. A side given as a str (or None) names a row that has no finished run."""
    pairs = [(g, baseline_of(g, groups)) for g in groups if g.masked]
    paired = {id(b) for _, b in pairs if b is not None}
    pairs += [(None, g) for g in groups if not g.masked and id(g) not in paired]
    for a_name, b_name in diffs:
        a, b = find_group(groups, a_name), find_group(groups, b_name)
        pairs.append((a, b) if a is not None and b is not None else (a or a_name, b or b_name))
    return pairs


def pair_names(a, b) -> tuple[str, str]:
    return (a.label if isinstance(a, Group) else (a or _masked_name(b)),
            b.label if isinstance(b, Group) else (b or "its baseline"))


def _signed(v, digits=2):
    return "-" if v is None else f"{v:+.{digits}f}"


def _bound(v):
    """An interval end to two decimals, or to two significant digits where two decimals would read as zero, so
    that which side of zero it lies on shows."""
    return f"{v:+.2g}" if 0 < abs(v) < 0.005 else f"{v:+.2f}"


def _interval(ci):
    return "n/a" if ci is None else f"[{_bound(ci[0])}, {_bound(ci[1])}]"


def run_times(run) -> list[str]:
    """[epochs, training seconds, min-max seconds per epoch, seconds of per-epoch checks, seconds of final
    evaluation] of a run, from its metrics.csv (epoch_time_s, eval_time_s) and results.json (eval_time_s); "-"
    where the record has none. A resumed run counts the epochs of every part."""
    rows = run["metrics"]
    train = [float(r["epoch_time_s"]) for r in rows if r.get("epoch_time_s") not in (None, "")]
    check = [float(r["eval_time_s"]) for r in rows if r.get("eval_time_s") not in (None, "")]
    final = run.get("eval_time_s")
    return [str(len(rows)) if rows else "-", f"{sum(train):.0f}" if train else "-",
            f"{min(train):.0f}–{max(train):.0f}" if train else "-", f"{sum(check):.0f}" if check else "-",
            f"{final:.0f}" if isinstance(final, (int, float)) else "-"]


def seed_differences(a, b, col) -> dict:
    """{seed: a - b} of `col` over the seeds both groups have a value for."""
    va, vb = seed_values(a, col), seed_values(b, col)
    return {s: va[s] - vb[s] for s in va.keys() & vb.keys()}


def paired_diff(a, b, col):
    """(mean, sample std, n) of the per-seed differences a - b over the seeds both groups have a value for: the
    comparison to read when rows share their seeds (and so their warm-up and data order)."""
    return mean_std(list(seed_differences(a, b, col).values()))


def pooled_std(groups, col) -> str:
    """The pooled within-group sample standard deviation of `col`, sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over
    the groups with two or more runs: the seed-to-seed noise a difference of means is to be read against."""
    stats = [(n, s) for _, s, n in map(lambda g: g.stat(col), groups) if s is not None]
    dof = sum(n - 1 for n, _ in stats)
    return "missing" if dof == 0 else f"{math.sqrt(sum((n - 1) * s * s for n, s in stats) / dof):.2f}"


def _masked_name(baseline: "Group") -> str:
    """The masked method's name for a baseline group (PART for AT, PART-T for TRADES, ...)."""
    return next((name for name, (base, masked) in LABELS.items() if masked and base == baseline.method), "masked")


def find_group(groups, name):
    """The group labelled `name`, or the only one whose label contains it."""
    exact = [g for g in groups if g.label == name]
    if exact:
        return exact[0]
    part = [g for g in groups if name in g.label]
    return part[0] if len(part) == 1 else None


def check_diffs(tables, diffs) -> None:
    """Raise UsageError for a --diff side that is part of several rows' labels (and no row's whole label) in a
    table, and for a --diff whose sides name one row. A side that names no row is shown as missing (its runs may
    not have finished)."""
    for groups in tables.values():
        for a_name, b_name in diffs:
            for name in (a_name, b_name):
                part = [g.label for g in groups if name in g.label]
                if len(part) > 1 and name not in part:
                    raise UsageError(f"--diff {name!r} is part of {len(part)} row labels ({'; '.join(part)}); give "
                                     f"one whole label")
            a = find_group(groups, a_name)
            if a is not None and a is find_group(groups, b_name):
                raise UsageError(f"--diff {a_name!r} {b_name!r}: both name the row {a.label!r}; a row minus itself is 0")


def recorded(runs) -> str:
    """One line naming the values of the recorded settings (utils.config.RECORDED_KEYS: they do not split rows)
    over `runs`, each with its number of runs; the device is the one the record names, and a key older records
    lack (with no default that is certain for them) reads "not recorded"."""
    parts = []
    for key in RECORDED_KEYS:
        seen = {}
        for r in runs:
            cfg = upgrade(r.get("config") or {})  # keys added later read as their defaults
            v = (r.get("versions") or {}).get("device") or cfg.get(key) if key == "device" else cfg.get(key)
            text = _text(v) if v is not None or key in cfg else "not recorded"  # e.g. world_size before it was kept
            seen[text] = seen.get(text, 0) + 1
        parts.append(f"{key} " + ", ".join(f"{v} [{n}]" for v, n in sorted(seen.items())))
    return "Recorded, not grouped by: " + "; ".join(parts) + "."


def analyse(tables, diffs=(), deltas=(), power=0.8, alpha=0.05, bootstrap=0, boot_seed=0, boot_over="both") -> dict:
    """{(data, model): {'columns', 'pairs': [(A, B, [difference or None per column])], 'plan': [...], 'first_diff'}}
    for the comparisons of each table (see `comparisons`); a difference is None where a row or a value is missing,
    and pairs[first_diff:] are the --diff ones."""
    out = {}
    for key, groups in tables.items():
        cols = columns([r for g in groups for r in g.runs])
        pairs, plans = [], []
        for a, b in comparisons(groups, diffs):
            complete = isinstance(a, Group) and isinstance(b, Group)
            pairs.append((*pair_names(a, b), [difference(a, b, c, bootstrap, boot_seed, boot_over) if complete else None
                                              for c in cols]))
            if complete and deltas:
                plans += [row for c in cols for row in plan(a, b, c, deltas, power, alpha)]
        # `comparisons` lists the --diff pairs last: pairs[first_diff:] are the ones --mark annotates
        out[key] = {"columns": cols, "pairs": pairs, "plan": plans, "first_diff": len(pairs) - len(diffs)}
    return out


def reference(marks, is_diff, column, d):
    """(value, inside) for a --diff difference on a --mark'ed column: the published value and whether it lies in
    the difference's 95% interval (None without one); None for other rows and columns."""
    if not is_diff or column not in marks:
        return None
    v = marks[column]
    return v, None if d is None or d["ci95"] is None else d["ci95"][0] <= v <= d["ci95"][1]


def _reference_cell(ref):
    if ref is None:
        return ""
    v, inside = ref
    return f"{v:+.2f} (" + ("no interval" if inside is None else "inside" if inside else "outside") + ")"


def markdown(tables, unfinished=(), expected_seeds=None, per_seed=False, analysis=None, bootstrap=0, diffs=(),
             marks=(), times=False, boot_over="both"):
    """The report as markdown: per (data, model) the table of rows, the differences with their intervals (and,
    for each --diff, the `marks` reference values beside them), the noise scale, the seed plan (when `analysis`
    has one), with `per_seed`, every run and the paired per-seed differences, and with `times` every run's
    compute time (`run_times`)."""
    analysis = analysis if analysis is not None else analyse(tables, diffs)
    marks = dict(marks)
    out = []
    for (data, model), groups in sorted(tables.items(), key=lambda t: str(t[0])):
        runs = [r for g in groups for r in g.runs]
        cols = columns(runs)
        has_budget = any(budget_stats(r)["budget_mean"] is not None for r in runs)
        head = ["Method", *[column_title(c) for c in cols]] + (["Budget (1/255)", "At eps"] if has_budget else []) + \
            ["Seeds", "Test images"]
        out += [f"### {data}, {model}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g in groups:
            seeds = sorted(r.get("seed") for r in g.runs)
            note = ",".join(map(str, seeds))
            absent = [s for s in (expected_seeds or []) if s not in seeds]
            if absent:
                note += f" (missing {','.join(map(str, absent))})"
            n_eval = g.settings.get("n_eval", g.runs[0].get("n_eval"))
            n_aa = g.settings.get("n_eval_aa", g.runs[0].get("n_eval_aa"))
            images = f"{n_eval}" + (f" (AA {n_aa})" if n_aa not in (None, n_eval) else "")
            budget = [fmt(g.budget("budget_mean")), fmt(g.budget("eps_share"), 3)] if has_budget else []
            out.append(f"| {g.label} | " + " | ".join(fmt(g.stat(c)) for c in cols) + " | " +
                       " | ".join(budget + [note, images]) + " |")
        out += ["", recorded(runs)]
        result = analysis[(data, model)]
        if result["pairs"]:
            head = ["Difference", "Column", "Mean", "95% CI", "Interval"] + \
                (["Bootstrap 95% CI"] if bootstrap else []) + (["Reference (--mark)"] if marks else [])
            out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for i, (a, b, cells) in enumerate(result["pairs"]):
                label = f"{a} − {b}"
                for c, d in zip(cols, cells):
                    row = ([label, column_title(c), "missing", "", ""] if d is None else
                           [label, column_title(c), _signed(d["mean"]), _interval(d["ci95"]), d["test"]])
                    if bootstrap:
                        row.append("" if d is None else
                                   _interval(d["bootstrap_ci95"]) if d["bootstrap_ci95"] else "no per-image record")
                    if marks:
                        row.append(_reference_cell(reference(marks, i >= result["first_diff"], c, d)))
                    out.append("| " + " | ".join(row) + " |")
            out += ["", "| Noise scale | " + " | ".join(column_title(c) for c in cols) + " |",
                    "|" + "---|" * (len(cols) + 1),
                    "| Pooled std | " + " | ".join(pooled_std(groups, c) for c in cols) + " |"]
        if result["plan"]:
            p0 = result["plan"][0]
            deltas = sorted({r["delta"] for r in result["plan"]})
            out += ["", f"Seed plan: paired t-test, power {p0['power']:g}, two-sided alpha {p0['alpha']:g}.", "",
                    "| Difference | Column | Pairs | Paired sd | " +
                    " | ".join(f"Seeds for {d:g}" for d in deltas) + " | Resolvable now |",
                    "|" + "---|" * (5 + len(deltas))]
            rows = {}
            for r in result["plan"]:
                rows.setdefault((r["a"], r["b"], r["column"]), []).append(r)
            for (a, b, c), rs in rows.items():
                if rs[0]["sd"] is None:
                    cells = [str(rs[0]["n"]), "no plan: fewer than 2 pairs"] + [""] * (len(deltas) + 1)
                else:
                    seeds = {r["delta"]: r["seeds"] for r in rs}
                    cells = [str(rs[0]["n"]), f"{rs[0]['sd']:.2f}"] + \
                        [str(seeds[d]) if seeds[d] is not None else "more than 100000" for d in deltas] + \
                        [f"{rs[0]['resolvable']:.2f}"]
                out.append(f"| {a} − {b} | {column_title(c)} | " + " | ".join(cells) + " |")
        if per_seed:
            complete = [(a, b) for a, b in comparisons(groups, diffs) if isinstance(a, Group) and isinstance(b, Group)]
            out += ["", "| Run | Seed | " + " | ".join(column_title(c) for c in cols) + " |",
                    "|" + "---|" * (len(cols) + 2)]
            for g in groups:
                for r in sorted(g.runs, key=lambda r: r.get("seed")):
                    cells = ["-" if value(r, c) is None else f"{value(r, c):.2f}" for c in cols]
                    out.append(f"| {g.label} | {r.get('seed')} | " + " | ".join(cells) + " |")
            if complete:
                out += ["", "| Paired difference (same seeds) | " + " | ".join(column_title(c) for c in cols) + " |",
                        "|" + "---|" * (len(cols) + 1)]
                for a, b in complete:
                    cells = [fmt(paired_diff(a, b, c), sign="+") for c in cols]
                    out.append(f"| {a.label} − {b.label} | " + " | ".join(cells) + " |")
                out += ["", "| Per-seed difference | Seed | " + " | ".join(column_title(c) for c in cols) + " |",
                        "|" + "---|" * (len(cols) + 2)]
                for a, b in complete:
                    d = {c: seed_differences(a, b, c) for c in cols}
                    for s in sorted({s for c in cols for s in d[c]}):
                        cells = [_signed(d[c][s]) if s in d[c] else "-" for c in cols]
                        out.append(f"| {a.label} − {b.label} | {s} | " + " | ".join(cells) + " |")
        if times:
            out += ["", "| Run | Seed | Epochs | Training (s) | Per epoch (s) | Per-epoch check (s) | Final eval (s) |",
                    "|" + "---|" * 7]
            for g in groups:
                for r in sorted(g.runs, key=lambda r: r.get("seed")):
                    out.append(f"| {g.label} | {r.get('seed')} | " + " | ".join(run_times(r)) + " |")
        out.append("")
    out.append("Accuracy in percent: mean ± sample standard deviation over seeds [number of runs]. A difference is "
               "the mean of the per-seed differences over the seeds both rows have, with the paired t-interval (paired "
               "t, n pairs), or, when the rows share no seed, the difference of the means with Welch's interval "
               "(Welch t, n runs + n runs); n/a where too few runs give no interval. The pooled std is the "
               "within-row seed-to-seed noise over the rows with two or more runs.")
    if bootstrap:
        out.append(BOOTSTRAP_NOTE[boot_over].format(n=bootstrap))
    if unfinished:
        out.append("\nRun folders without results.json (unfinished or crashed), counted as missing:")
        out.extend(f"- {f}" for f in unfinished)
    return "\n".join(out) + "\n"


def report_json(tables, analysis, unfinished=(), bootstrap=0, marks=(), boot_over="both") -> dict:
    """The whole report as plain data: groups (label, method, settings, seeds, per-column mean/std/n),
    differences and plan (lists of flat rows; see `difference` and `plan`; the rows of a --diff pair on a `marks`
    column carry `reference` and `reference_inside`), unfinished folders."""
    marks = dict(marks)
    groups, differences, plans = [], [], []
    for (data, model), gs in sorted(tables.items(), key=lambda t: str(t[0])):
        cols = analysis[(data, model)]["columns"]
        for g in gs:
            groups.append({"data": data, "model": model, "label": g.label, "method": g.method,
                           "seeds": sorted(r.get("seed") for r in g.runs), "folders": [r["folder"] for r in g.runs],
                           "settings": g.settings,
                           "columns": {c: dict(zip(("mean", "std", "n"), g.stat(c))) for c in cols}})
        result = analysis[(data, model)]
        for i, (a, b, cells) in enumerate(result["pairs"]):
            for c, d in zip(cols, cells):
                row = {"data": data, "model": model, **(d or {"a": a, "b": b, "column": c, "mean": None, "ci95": None,
                                                              "n": 0, "paired": None, "bootstrap_ci95": None})}
                ref = reference(marks, i >= result["first_diff"], c, d)
                if ref is not None:
                    row["reference"], row["reference_inside"] = ref
                differences.append(row)
        plans += [{"data": data, "model": model, **r} for r in analysis[(data, model)]["plan"]]
    return {"groups": groups, "differences": differences, "plan": plans, "bootstrap": bootstrap or None,
            "bootstrap_over": boot_over if bootstrap else None, "unfinished": list(unfinished)}


def write_csv(path, tables):
    rows = []
    for (data, model), groups in sorted(tables.items(), key=lambda t: str(t[0])):
        cols = columns([r for g in groups for r in g.runs])
        for g in groups:
            row = {"data": data, "model": model, "method": g.label, "seeds": " ".join(str(r.get("seed")) for r in g.runs)}
            for c in cols:
                m, s, n = g.stat(c)
                row.update({f"{c}_mean": None if n == 0 else round(m, 4), f"{c}_std": None if s is None else round(s, 4),
                            f"{c}_n": n})
            for k in ("budget_mean", "eps_share"):
                m, s, n = g.budget(k)
                row[k] = None if n == 0 else round(m, 5)
            rows.append(row)
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def curves(tables) -> dict:
    """{label: {'epoch': [...], column: (means, stds)}} per group, over the epochs every run of it with a
    metrics.csv has; a group whose curves come from only some of its runs says how many in its label."""
    out = {}
    for (data, model), groups in sorted(tables.items(), key=lambda t: str(t[0])):
        for g in groups:
            per_run = [{int(r["epoch"]): r for r in run["metrics"]} for run in g.runs if run["metrics"]]
            if not per_run:
                continue
            epochs = sorted(set.intersection(*(set(m) for m in per_run)))
            label = g.label if len(tables) == 1 else f"{data}, {model}: {g.label}"
            if len(per_run) < len(g.runs):
                label += f" [curves of {len(per_run)} of its {len(g.runs)} runs]"
            entry = {"epoch": epochs}
            for col in ("natural", "pgd20", "budget_mean", "eps_share"):
                if all(m[e].get(col) not in (None, "") for m in per_run for e in epochs):
                    stats = [mean_std([float(m[e][col]) for m in per_run]) for e in epochs]
                    entry[col] = ([s[0] for s in stats], [s[1] if s[1] is not None else float("nan") for s in stats])
            out[label] = entry
    return out


def mcnemar_table(folder_a: str, folder_b: str) -> tuple[str, list[dict]]:
    """The exact McNemar test per attack between two finished runs evaluated on the same test images."""
    recs = []
    for f in (folder_a, folder_b):
        try:
            rec = read_record(f)
        except ValueError as e:
            raise UsageError(f"--mcnemar: {os.path.join(f, 'results.json')} {e}") from None
        rec["folder"] = f
        rec["per_image"] = load_per_image(f, rec)
        if rec["per_image"] is None:
            raise UsageError(f"--mcnemar: {f} has no per-image record ({rec.get('per_image_file') or 'per_image.npz'}); "
                             f"re-evaluate it with --eval-only")
        recs.append(rec)
    a, b = recs
    cols = [c for c in a["per_image"]["columns"] if c in b["per_image"]["columns"]]
    if not cols:
        raise UsageError(f"--mcnemar: {folder_a} and {folder_b} share no evaluated attack")
    rows = []
    for c in cols:
        if a["per_image"]["test_set"][c] != b["per_image"]["test_set"][c]:
            raise UsageError(f"--mcnemar: {folder_a} and {folder_b} scored {c} on different test images; they "
                             f"cannot be paired")
        t = stats.mcnemar(a["per_image"]["columns"][c], b["per_image"]["columns"][c])
        rows.append({"column": c, "n": t.n, "acc_a": t.acc_a, "acc_b": t.acc_b, "only_a": t.only_a,
                     "only_b": t.only_b, "p": t.p})
    out = [f"A = {folder_a}", f"B = {folder_b}", "", "| Attack | Images | A | B | Right for A only | Right for B only | "
           "Exact McNemar p |", "|---|---|---|---|---|---|---|"]
    out += [f"| {column_title(r['column'])} | {r['n']} | {r['acc_a']:.2f} | {r['acc_b']:.2f} | {r['only_a']} | "
            f"{r['only_b']} | {r['p']:.4g} |" for r in rows]
    return "\n".join(out) + "\n", rows


def _mark(text: str) -> tuple[str, float]:
    col, _, v = text.partition("=")
    try:
        value = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE (e.g. natural=1.23), got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a finite number")
    return col, value


def diff_panels(tables, diffs, analysis, marks=()) -> list[dict]:
    """The panels of `save_paired_differences` for each --diff A B and column with paired seeds."""
    marks = dict(marks)
    panels = []
    for key, groups in sorted(tables.items(), key=lambda t: str(t[0])):
        for a_name, b_name in diffs:
            a, b = find_group(groups, a_name), find_group(groups, b_name)
            if a is None or b is None:
                continue
            for c, d in zip(analysis[key]["columns"], next(cells for x, y, cells in analysis[key]["pairs"]
                                                            if (x, y) == (a.label, b.label))):
                va, vb = seed_values(a, c), seed_values(b, c)
                seeds = sorted(va.keys() & vb.keys())
                if d is None or not seeds:
                    continue
                panels.append({"title": column_title(c), "pair": f"{a.label} − {b.label}", "seeds": seeds,
                               "values": [va[s] - vb[s] for s in seeds], "mean": d["mean"], "ci95": d["ci95"],
                               "mark": marks.get(c), "mark_label": "reference (--mark)"})
    return panels


def write_json(path, doc) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def check_plot_path(path: str, flag: str = "--plot") -> None:
    """A figure's path must be writable and name an image format matplotlib writes (no extension: PNG)."""
    check_writable(path, flag, folder=False)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext:
        from matplotlib.figure import Figure
        formats = Figure().canvas.get_supported_filetypes()
        if ext not in formats:
            raise UsageError(f"{flag} {path}: matplotlib cannot write .{ext} files (use one of {', '.join(sorted(formats))})")


def report(argv=None) -> None:
    """The tool: parse, check the output paths, read the runs, print the tables, write --csv and --plot."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=nonempty, help="run folders, or folders holding them (searched below)")
    p.add_argument("--csv", metavar="PATH", type=nonempty, help="also write the tables as CSV to this file")
    p.add_argument("--seeds", type=SEED, nargs="*",
                   help="seeds every row should have; the missing ones are flagged (default: no check)")
    p.add_argument("--diff", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="also show row A minus row B with its 95%% interval (labels, or a part of one that names a "
                        "single row); may be given several times")
    p.add_argument("--per-seed", action="store_true",
                   help="also list every run's values, and each difference as the mean ± std of its per-seed "
                        "differences over the seeds both rows have")
    p.add_argument("--times", action="store_true",
                   help="also list every run's compute time: epochs, training seconds, seconds per epoch, "
                        "per-epoch checks and final evaluation (from metrics.csv and results.json)")
    p.add_argument("--plot", metavar="PNG", type=nonempty,
                   help="write training curves (natural, PGD-20, budget per epoch; mean over seeds with a +-1 std "
                        "band) here")
    p.add_argument("--plan", nargs="+", type=number(float, lo=0, lo_open=True), metavar="DELTA",
                   help="seed plan: seeds the paired t-test needs to detect each DELTA (accuracy points), and the "
                        "smallest difference the current seeds resolve")
    p.add_argument("--power", type=number(float, lo=0, hi=1, lo_open=True, hi_open=True), default=0.8,
                   help="power of the seed plan: the chance to detect a true difference of DELTA (default: 0.8)")
    p.add_argument("--alpha", type=number(float, lo=0, hi=1, lo_open=True, hi_open=True), default=0.05,
                   help="two-sided significance level of the seed plan (default: 0.05)")
    p.add_argument("--bootstrap", type=number(int, lo=1), metavar="N", default=0,
                   help="add a percentile bootstrap interval from N replicates resampling test images and seeds "
                        "(needs the runs' per_image.npz; default: no bootstrap)")
    p.add_argument("--bootstrap-seed", type=number(int, lo=0, hi=2**32 - 1), default=0,
                   help="seed of the bootstrap's resampling (default: 0)")
    p.add_argument("--bootstrap-over", choices=stats.BOOTSTRAP_OVER, default="both",
                   help="what the bootstrap resamples: test images and seeds (both, the default), or only one of "
                        "them, to see which the interval's width comes from")
    p.add_argument("--json", metavar="PATH", type=nonempty, help="also write the whole report as JSON to this file")
    p.add_argument("--plot-diff", metavar="PNG", type=nonempty,
                   help="plot each --diff A B: the per-seed differences of every column with their mean and 95%% "
                        "interval")
    p.add_argument("--mark", nargs="+", default=[], metavar="COLUMN=VALUE", type=_mark,
                   help="with --diff: a reference value per column, e.g. natural=1.23 pgd20=0.94 (a published effect), "
                        "shown beside each --diff difference with whether its 95%% interval holds it, and drawn on "
                        "--plot-diff")
    p.add_argument("--mcnemar", nargs=2, metavar=("RUN_A", "RUN_B"), type=nonempty,
                   help="instead of the tables: the exact McNemar test per attack between two run folders")
    args = p.parse_args(argv)
    outputs = [(flag, os.path.abspath(path)) for flag, path in (("--csv", args.csv), ("--json", args.json),
                                                                 ("--plot", args.plot), ("--plot-diff", args.plot_diff)) if path]
    for i, (flag, path) in enumerate(outputs):
        other = next((f for f, q in outputs[:i] if q == path), None)
        if other:
            raise UsageError(f"{other} and {flag} name one file, {path}: the second would overwrite the first")
    if args.csv:
        check_writable(args.csv, "--csv", folder=False)
    if args.json:
        check_writable(args.json, "--json", folder=False)
    for flag, path in (("--plot", args.plot), ("--plot-diff", args.plot_diff)):
        if path:
            check_plot_path(path, flag)
    if args.plot_diff and not args.diff:
        raise UsageError("--plot-diff draws the --diff A B differences; give at least one --diff")
    twice = sorted({c for c, _ in args.mark if [m for m, _ in args.mark].count(c) > 1})
    if twice:
        raise UsageError(f"--mark names {', '.join(twice)} more than once; give one reference value per column")
    if args.mark and not args.diff:
        raise UsageError("--mark sets reference values beside the --diff A B differences; give at least one --diff")
    if args.bootstrap_over != "both" and not args.bootstrap:
        raise UsageError(f"--bootstrap-over {args.bootstrap_over} chooses what --bootstrap N resamples; give --bootstrap")
    if args.mcnemar and (args.paths or args.diff or args.plan or args.bootstrap or args.plot or args.plot_diff
                         or args.csv or args.per_seed or args.times):
        raise UsageError("--mcnemar compares two run folders on its own; give it without run folders or table options "
                         "(only --json)")
    if args.mcnemar and os.path.realpath(args.mcnemar[0]) == os.path.realpath(args.mcnemar[1]):
        raise UsageError(f"--mcnemar {args.mcnemar[0]} {args.mcnemar[1]}: one run folder twice; give two runs")
    if args.mcnemar:
        text, rows = mcnemar_table(*args.mcnemar)
        print(text, end="")
        if args.json:
            write_json(args.json, {"mcnemar": rows})
        return
    if not args.paths:
        raise UsageError("give run folders (or folders holding them), or --mcnemar RUN_A RUN_B")
    missing = [path for path in args.paths if not os.path.exists(path)]
    if missing:
        raise UsageError(f"{', '.join(missing)}: no such file or folder")
    folders = find_runs(args.paths)
    if not folders:
        raise UsageError(f"no run folders (with config.json or results.json) under {' '.join(args.paths)}")
    skipped = []
    runs, unfinished = load_runs(folders, skipped, per_image=bool(args.bootstrap))
    tables = group_runs(runs, lambda msg: print(f"warning: {msg}", file=sys.stderr))
    check_diffs(tables, args.diff)
    known = set(columns(runs))
    unknown = [c for c, _ in args.mark if c not in known]
    if unknown:
        raise UsageError(f"--mark {', '.join(unknown)}: no such column in these runs (they have "
                         f"{', '.join(sorted(known))})")
    analysis = analyse(tables, args.diff, args.plan or (), args.power, args.alpha, args.bootstrap, args.bootstrap_seed,
                       args.bootstrap_over)
    panels = diff_panels(tables, args.diff, analysis, args.mark) if args.plot_diff else None
    if args.plot_diff and not panels:
        raise UsageError("--plot-diff: no --diff A B with paired seeds to plot")
    print(markdown(tables, unfinished, args.seeds, args.per_seed, analysis, args.bootstrap, args.diff, args.mark,
                   args.times, args.bootstrap_over), end="")
    if skipped:
        print("\nFiles left out (unreadable or malformed):")
        print("\n".join(f"- {path}: {why}" for path, why in skipped))
        print(f"warning: {len(skipped)} file(s) left out, listed at the end of the report", file=sys.stderr)
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        write_csv(args.csv, tables)
    if args.json:
        write_json(args.json, report_json(tables, analysis, unfinished, args.bootstrap, args.mark, args.bootstrap_over))
    if args.plot_diff:
        from utils.figures import save_paired_differences
        os.makedirs(os.path.dirname(os.path.abspath(args.plot_diff)), exist_ok=True)
        save_paired_differences(args.plot_diff, panels)
        print(f"wrote {args.plot_diff}")
    if args.plot:
        drawn = curves(tables)
        if any(k != "epoch" for g in drawn.values() for k in g):
            from utils.figures import save_curves
            os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
            save_curves(args.plot, drawn)
            print(f"wrote {args.plot}")
        else:
            print(f"warning: no run has readable training curves (metrics.csv); {args.plot} not written",
                  file=sys.stderr)


def main(argv=None) -> int:
    """The entry point: the exit code of `report` (0; 2 with one line for bad input; 130 / 143 when interrupted)."""
    return entry_point(lambda: report(argv))


if __name__ == "__main__":
    sys.exit(main())
