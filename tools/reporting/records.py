"""The runs a report reads: finding run folders, and loading each run's checked record (utils/records.py), its
metrics.csv and its per-image file; the numbers read from them (accuracy columns, budget, compute time)."""
import csv
import math
import os

import numpy as np

from utils.errors import UsageError
from utils.evaluate import AA_NAMES, column_value, per_image_name, record_columns
from utils.records import RecordError, read_record
from utils.metrics_csv import read_metrics
from utils.runs import open_regular


RUN_MARKERS = ("config.json", "results.json")  # a folder holding either is a run folder


def find_runs(paths):
    """Run folders among `paths` and below them: any folder holding config.json or results.json (a run folder's
    subfolders are searched too, so a stray config.json in a root hides nothing)."""
    found = []
    for p in paths:
        for root, dirs, files in os.walk(p):
            if any(m in files for m in RUN_MARKERS):
                found.append(root)
    return sorted(set(found))


def check_no_new_runs(outputs, paths) -> None:
    """Refuse (UsageError) an output named like a run's record (config.json, results.json) anywhere below the
    searched `paths`: its folder would be read as a run folder by the next report. `outputs`: [(flag, path)]."""
    for flag, path in outputs:
        out = os.path.realpath(path)
        if os.path.basename(out) not in RUN_MARKERS:
            continue
        for p in paths:
            if out.startswith(os.path.realpath(p).rstrip(os.sep) + os.sep):
                raise UsageError(f"{flag} {path}: a {os.path.basename(out)} below {p} would make its folder a run "
                                 f"folder to the next report of {p}; choose another name")


METRIC_NUMBERS = ("lr", "loss", "natural", "pgd20", "budget_mean", "eps_share", "epoch_time_s", "eval_time_s")
_AT_MOST = {"natural": 100.0, "pgd20": 100.0, "eps_share": 1.0}  # every other column: at least 0, no upper bound


def _number_or_blank(v) -> bool:
    if v in (None, ""):
        return True
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def budget_bound(cfg: dict) -> float:
    """The largest mean budget (in 1/255) a run of settings `cfg` can record: 255 times the largest radius they
    hold (--epsilon, and --low-epsilon and --region-eps where its mask source reads them); 255 (the whole [0, 1]
    range) without one."""
    radii = [cfg.get("epsilon"), cfg.get("low_epsilon"), *(cfg.get("region_eps") or [])]
    radii = [r for r in radii if isinstance(r, (int, float)) and not isinstance(r, bool)]
    return 255.0 * max(radii) if radii else 255.0


def _out_of_range(row: dict, most_budget: float) -> str | None:
    """'eps_share 5.0' when a number of the row lies outside what its column can hold (accuracies in [0, 100], the
    share at eps in [0, 1], the mean budget in [0, most_budget], losses, rates and times at least 0); else None."""
    for k in METRIC_NUMBERS:
        if row.get(k) in (None, ""):
            continue
        v = float(row[k])
        most = most_budget + 1e-3 if k == "budget_mean" else _AT_MOST.get(k, math.inf)  # budgets are rounded
        if not 0 <= v <= most:
            return f"{k} {row[k]}"
    return None


def read_run_metrics(folder, cfg=None):
    """(rows of metrics.csv whose epoch is a whole number and whose numbers are numbers within their column's
    range, one per epoch (the last row of a repeated epoch) in epoch order, a note on what was left out or None).
    `cfg`: the run's settings (utils.records.record_settings: the radii its mask source used, its epochs). When
    it gives the epochs and those rows are not one for each epoch 1..epochs, no row is used:
    budget and time columns from part of a run, or from rows of another run, would be a wrong number."""
    cfg = cfg or {}
    epochs = cfg.get("epochs")
    path = os.path.join(folder, "metrics.csv")
    if not os.path.exists(path):
        return [], None
    try:
        rows = read_metrics(path)
        with open_regular(path, newline="", errors="replace") as f:  # every row, to count those read_metrics skips
            header, total = f.readline(), sum(1 for line in f if line.strip())
        fields = next(csv.reader([header.strip()]), [])
    except (csv.Error, OSError, UnicodeError) as e:
        return [], f"cannot be read ({type(e).__name__}: {e}); left out of the budget columns and curves"
    if fields and "epoch" not in fields:
        return [], "has no epoch column (not a metrics.csv); left out of the budget columns and curves"
    good = [r for r in rows if all(_number_or_blank(r.get(k)) for k in METRIC_NUMBERS)]
    bad = total - len(good)
    most = budget_bound(cfg)
    outside = [(r, _out_of_range(r, most)) for r in good]
    outside = [(r, why) for r, why in outside if why]
    good = [r for r in good if not any(r is o for o, _ in outside)]
    last = {r["epoch"]: r for r in good}  # as a resume trims it: one row per epoch, the last one seen
    repeated = len(good) - len(last)
    notes = [f"{bad} malformed row(s) left out of the budget columns and curves"] if bad else []
    if outside:
        notes.append(f"{len(outside)} row(s) with a number its column cannot hold (epoch {outside[0][0]['epoch']}: "
                     f"{outside[0][1]}) left out of the budget columns and curves")
    if repeated:
        notes.append(f"{repeated} repeated epoch row(s); the last row of each epoch is used")
    rows = sorted(last.values(), key=lambda r: r["epoch"])
    if isinstance(epochs, int) and rows and [r["epoch"] for r in rows] != list(range(1, epochs + 1)):
        notes.append(f"its rows cover {_epoch_span([r['epoch'] for r in rows])}, not each of the {epochs} epochs its "
                     f"record trained; left out of the budget columns, times and curves")
        rows = []
    return rows, "; ".join(notes) or None


def _epoch_span(epochs) -> str:
    """'epochs 1-3, 5' for [1, 2, 3, 5]."""
    parts, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(f"{start}" if start == e else f"{start}-{e}")
            start = None
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(parts)


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
        except RecordError as e:
            skipped.append((e.path, e.why))
            continue
        rec["folder"], rec["mtime"] = f, os.path.getmtime(path)
        rec["metrics"], note = read_run_metrics(f, rec["settings"])
        if note:
            skipped.append((os.path.join(f, "metrics.csv"), note))
        rec["per_image"] = load_per_image(f, rec) if per_image else None
        runs.append(rec)
    return runs, unfinished


def load_per_image(folder: str, rec: dict, name: str = "results") -> dict | None:
    """The run's per-image record (see utils.evaluate.per_image_arrays) as {'columns': {col: bool array},
    'test_set': {col: identity of the images}}, or None when the run has none. Raises UsageError when the file
    is unreadable or does not match its own record `rec` (results.json, or the <name>.json of --eval-only): another
    data fingerprint than its config's, another test-set size (n_test), labels that are not one per scored image
    or not classes of its config, another length or accuracy of a column than the record says. (The record holds
    no labels: labels are checked against the record through the fingerprint, which hashes them, and against the
    other runs' when runs are paired.)"""
    path = os.path.join(folder, rec.get("per_image_file") or per_image_name(name))
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged zip member raises zlib.error, NotImplementedError, ...
        raise UsageError(f"{path} is not a readable per-image record ({type(e).__name__})") from None
    not_arrays = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if not_arrays:  # np.load returns the raw bytes of a member that is no .npy
        raise UsageError(f"{path} is not a per-image record ({', '.join(not_arrays[:3])}: members that are no .npy "
                         f"file)")
    out = {"columns": {}, "test_set": {}}
    fingerprint = str(arrays.get("data_fingerprint", ""))
    labels, n_test = arrays.get("labels"), arrays.get("n_test", np.int64(-1))
    if labels is not None and labels.ndim != 1 or np.ndim(n_test) != 0 or n_test.dtype.kind not in "iu":
        raise UsageError(f"{path} is not a per-image record (its labels are not a vector or its n_test not a count)")
    record = os.path.join(folder, f"{name}.json")
    cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
    if cfg.get("data_fingerprint") and fingerprint != cfg["data_fingerprint"]:
        raise UsageError(f"{path} does not match {record}: its test data's fingerprint is {fingerprint or 'missing'}, "
                         f"the record's config says {cfg['data_fingerprint']}")
    if isinstance(rec.get("n_test"), int) and int(n_test) != rec["n_test"]:
        raise UsageError(f"{path} does not match {record}: a test set of {int(n_test)} images, the record says "
                         f"{rec['n_test']}")
    scored = [len(arrays[k]) for k in arrays if f"{k}_index" in arrays and np.ndim(arrays[k]) == 1]
    if labels is not None and scored and len(labels) != max(scored):
        raise UsageError(f"{path}: {len(labels)} labels for {max(scored)} scored images; not one per image")
    classes = cfg.get("num_classes")
    if labels is not None and len(labels) and isinstance(classes, int) and (
            labels.dtype.kind not in "iu" or not 0 <= labels.min() <= labels.max() < classes):
        raise UsageError(f"{path} does not match {record}: its labels are not classes 0 to {classes - 1}")
    for col in record_columns(rec):
        if col not in arrays or col == "corruptions":
            continue
        bits, index = arrays[col], arrays.get(f"{col}_index")
        size = rec.get("n_eval_aa") if col in AA_NAMES else rec.get("n_eval")
        acc = column_value(rec, col)
        if (bits.dtype != bool or bits.ndim != 1 or index is None or index.shape != bits.shape or labels is None
                or index.dtype.kind not in "iu" or (len(index) and not 0 <= index.min() <= index.max() < len(labels))):
            raise UsageError(f"{path}: '{col}' is not a per-image record (bool vector with its test indices)")
        if (size is not None and len(bits) != size) or acc is None or abs(100.0 * bits.mean() - acc) > 1e-6:
            raise UsageError(f"{path} does not match {record}: {col} has "
                             f"{len(bits)} images at {100.0 * bits.mean():.2f}%, the record {size} at {acc}")
        out["columns"][col] = bits
        out["test_set"][col] = (fingerprint, int(n_test), index.tobytes(), labels[index].tobytes())
    return out


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
