"""Comparisons of rows: which pairs a report compares (each masked row against its baseline, each --diff A B),
their differences with the paired t- or Welch interval and the per-image bootstrap, the seed plan, and the exact
McNemar test of two runs. The statistics themselves are utils/stats.py's."""
import os

import numpy as np

from utils import stats
from utils.errors import UsageError
from utils.evaluate import column_value, per_image_name
from utils.identity import same_training
from utils.records import RecordError, read_record
from utils.units import fraction_text

from .groups import ATTACK_KEYS, Group, baseline_of, find_group, masked_name
from .records import columns, load_per_image


def seed_values(group, col) -> dict:
    """{seed: value of `col`} over the group's runs that have the column."""
    return {r.get("seed"): column_value(r, col) for r in group.runs if column_value(r, col) is not None}


def per_image_values(group, col) -> dict | None:
    """{seed: bool vector} of `col` over the group's runs that have the column, or None when one of them has no
    per-image record of it."""
    runs = [r for r in group.runs if column_value(r, col) is not None]
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


def difference(a, b, col, bootstrap=0, boot_seed=0, boot_over="both") -> dict | None:
    """A - B on `col`: the mean (paired over shared seeds, else of the rows' means), its 95% interval, and with
    `bootstrap` > 0 the per-image bootstrap interval over `boot_over` (see stats.bootstrap_interval). None when
    a row has no value. Where there is no interval (too few runs, or no spread: a zero-width interval is none),
    ci95 is None and `ci95_why` says why; likewise bootstrap_ci95 and `bootstrap_why` (no per-image record, or
    every replicate equal). The *_why keys are there only where their interval is not."""
    iv = stats.difference_interval(seed_values(a, col), seed_values(b, col))
    if iv is None:
        return None
    out = {"a": a.label, "b": b.label, "column": col, "mean": iv.mean,
           "ci95": None if iv.lo is None else [iv.lo, iv.hi], "n": iv.n, "paired": iv.paired,
           "n_a": iv.n_a if not iv.paired else None, "n_b": iv.n_b if not iv.paired else None, "test": iv.test,
           "bootstrap_ci95": None}
    if iv.lo is None:
        out["ci95_why"] = iv.why
    if bootstrap:
        va, vb = per_image_values(a, col), per_image_values(b, col)
        if va and vb:
            check_same_images([a, b], col)
            reps = stats.bootstrap_replicates(va, vb, bootstrap, boot_seed, over=boot_over)
            if stats.no_spread(reps):
                out["bootstrap_why"] = f"no spread (all {bootstrap} replicates equal)"
            else:
                out["bootstrap_ci95"] = list(stats.percentile_interval(reps))
        else:
            out["bootstrap_why"] = "no per-image record"
    return out


def plan(a, b, col, deltas, power=0.8, alpha=0.05) -> list[dict]:
    """Per delta: the paired sd of A - B over the shared seeds, the seeds the paired t-test needs to detect delta
    with `power` at two-sided `alpha`, and the smallest difference the current pairs resolve. With fewer than 2
    pairs (sd None) or no spread (every difference equal, sd 0), seeds and resolvable are None; a delta that
    needs more than stats.SEED_CAP seeds has seeds None. Each None beside a plan carries `why`."""
    va, vb = seed_values(a, col), seed_values(b, col)
    d = [va[k] - vb[k] for k in sorted(va.keys() & vb.keys())]
    why = "fewer than 2 pairs" if len(d) < 2 else \
        f"no spread (all {len(d)} differences equal)" if stats.no_spread(d) else None
    sd = None if len(d) < 2 else 0.0 if why else float(np.std(d, ddof=1))
    resolvable = None if why else stats.resolvable_delta(sd, len(d), power, alpha)
    rows = []
    for delta in deltas:
        seeds = None if why else stats.seeds_needed(delta, sd, power, alpha)
        row = {"a": a.label, "b": b.label, "column": col, "n": len(d), "sd": sd, "delta": delta, "seeds": seeds,
               "resolvable": resolvable, "power": power, "alpha": alpha}
        if why or seeds is None:
            row["why"] = why or f"more than {stats.SEED_CAP:,} seeds"
        rows.append(row)
    return rows


def comparisons(groups, diffs):
    """[(A, B)]: each masked group against its baseline, each baseline that has no masked group, and each
    --diff A B, last. A side given as a str (or None) names a row that has no finished run. A masked row against
    its baseline that a --diff asks for too is listed once, as the --diff."""
    asked = []
    for a_name, b_name in diffs:
        a, b = find_group(groups, a_name), find_group(groups, b_name)
        asked.append((a, b) if a is not None and b is not None else (a or a_name, b or b_name))
    repeated = {(id(a), id(b)) for a, b in asked if isinstance(a, Group) and isinstance(b, Group)}
    pairs = [(g, baseline_of(g, groups)) for g in groups if g.masked]
    paired = {id(b) for _, b in pairs if b is not None}
    pairs = [(a, b) for a, b in pairs if (id(a), id(b)) not in repeated]
    pairs += [(None, g) for g in groups if not g.masked and id(g) not in paired]
    return pairs + asked


def pair_names(a, b, labels=()) -> tuple[str, str]:
    """The labels of a pair from `comparisons`; a missing side reads as its name, or for a baseline without a
    masked row as the masked method's name (marked as missing where a row of `labels` has that label, so that
    it never reads as that row), and a masked row without a baseline as 'its baseline'."""
    def missing(name):
        return f"{name} (no run of these settings)" if name in labels else name
    return (a.label if isinstance(a, Group) else (a or missing(masked_name(b))),
            b.label if isinstance(b, Group) else (b or "its baseline"))


def seed_differences(a, b, col) -> dict:
    """{seed: a - b} of `col` over the seeds both groups have a value for."""
    va, vb = seed_values(a, col), seed_values(b, col)
    return {s: va[s] - vb[s] for s in va.keys() & vb.keys()}


def paired_diff(a, b, col):
    """(mean, sample std, n) of the per-seed differences a - b over the seeds both groups have a value for: the
    comparison to read when rows share their seeds (and so their warm-up and data order)."""
    return stats.mean_std(list(seed_differences(a, b, col).values()))


def analyse(tables, diffs=(), deltas=(), power=0.8, alpha=0.05, bootstrap=0, boot_seed=0, boot_over="both") -> dict:
    """{(data, model): {'columns', 'pairs': [(A, B, [difference or None per column])], 'plan': [...], 'first_diff'}}
    for the comparisons of each table (see `comparisons`); a difference is None where a row or a value is missing,
    and pairs[first_diff:] are the --diff ones."""
    out = {}
    for key, groups in tables.items():
        cols = columns([r for g in groups for r in g.runs])
        pairs, plans = [], []
        labels = {g.label for g in groups}
        for a, b in comparisons(groups, diffs):
            complete = isinstance(a, Group) and isinstance(b, Group)
            pairs.append((*pair_names(a, b, labels), [difference(a, b, c, bootstrap, boot_seed, boot_over)
                                                      if complete else None for c in cols]))
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


def _training_differences(rec: dict, ev: dict) -> list[str]:
    """How the checkpoint an --eval-only record `ev` evaluated was trained otherwise than the run of `rec`
    (utils.config.same_training; records of any version), and whether it holds another epoch."""
    a, b = rec.get("config"), ev.get("config")
    if not isinstance(a, dict) or not isinstance(b, dict) or not isinstance(a.get("epochs"), int) \
            or not isinstance(b.get("epochs"), int):
        return [] if a == b else ["its config"]
    differ = same_training(a, b)
    def epoch(r, cfg):  # older records name none: a run's record is of its last epoch
        return r["epoch"] if isinstance(r.get("epoch"), int) else cfg["epochs"]
    epoch_a, epoch_b = epoch(rec, a), epoch(ev, b)
    return differ + ([] if epoch_a == epoch_b else [f"epoch {epoch_b}, the run's {epoch_a}"])


def mcnemar_record(folder: str) -> tuple[dict, str]:
    """(record with its 'per_image', the record's path) of a finished run for McNemar's test: results.json with
    its per-image file, or where that has none the record that --eval-only wrote into the run folder for the same
    checkpoint (eval_<checkpoint>.json and its eval_<checkpoint>_per_image.npz). Raises UsageError when neither
    is there or one cannot be used."""
    try:
        rec = read_record(folder)
    except RecordError as e:
        raise UsageError(f"--mcnemar: {e.path} {e.why}") from None
    rec["folder"] = folder
    rec["per_image"] = load_per_image(folder, rec)
    if rec["per_image"] is not None:
        return rec, os.path.join(folder, "results.json")
    ckpt = rec.get("checkpoint") if isinstance(rec.get("checkpoint"), str) else ""
    name = f"eval_{os.path.splitext(os.path.basename(ckpt))[0]}" if ckpt else None
    if name and os.path.isfile(os.path.join(folder, f"{name}.json")):
        try:
            ev = read_record(folder, name)
        except RecordError as e:
            raise UsageError(f"--mcnemar: {e.path} {e.why}") from None
        differ = _training_differences(rec, ev)
        if os.path.basename(str(ev.get("checkpoint"))) != os.path.basename(ckpt) or ev["seed"] != rec["seed"] \
                or differ:
            raise UsageError(f"--mcnemar: {os.path.join(folder, name + '.json')} evaluates {ev.get('checkpoint')}, "
                             f"not this run's {ckpt}" + (f" ({'; '.join(differ)})" if differ else
                                                         f" (seed {ev['seed']})"))
        ev["folder"] = folder
        ev["per_image"] = load_per_image(folder, ev, name)
        if ev["per_image"] is not None:
            return ev, os.path.join(folder, f"{name}.json")
    own = rec.get("per_image_file") or per_image_name("results")
    if not name:
        raise UsageError(f"--mcnemar: {folder} has no per-image record ({own}), and its record names no checkpoint "
                         f"to evaluate")
    raise UsageError(f"--mcnemar: {folder} has no per-image record ({own}, nor {per_image_name(name)} of an "
                     f"--eval-only evaluation); evaluate {os.path.join(folder, os.path.basename(ckpt))} with the "
                     f"training script's --eval-only, which writes {name}.json and {per_image_name(name)} there")


def attack_differences(a: dict, b: dict) -> list[str]:
    """How the evaluation attacks of two records differ ('eval_epsilon 8/255 and 4/255'): the radius and the PGD
    step each took from its config. Empty when they agree or a record has no config to say."""
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    return [f"{k} {fraction_text(sa[k])} and {fraction_text(sb[k])}" for k in ATTACK_KEYS
            if k in sa and k in sb and sa[k] != sb[k]]


def mcnemar_rows(folder_a: str, folder_b: str) -> dict:
    """The exact McNemar test per attack between two finished runs evaluated on the same test images (each run's
    record from `mcnemar_record`): {'records': [path of A's record, B's], 'rows': one row {'column', 'n', 'acc_a',
    'acc_b', 'only_a', 'only_b', 'p'} per attack both have a per-image record of, 'attack_differences':
    `attack_differences` (the attacks of one name were not the same attack: the table says so)}. Raises UsageError when a run
    has no usable record or per-image file, or the runs share no attack or scored one on different test images."""
    (a, path_a), (b, path_b) = mcnemar_record(folder_a), mcnemar_record(folder_b)
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
    return {"records": [path_a, path_b], "rows": rows, "attack_differences": attack_differences(a, b)}
