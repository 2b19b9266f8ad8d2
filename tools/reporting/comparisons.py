"""Comparisons of rows: which pairs a report compares (each masked row against its baseline, each --diff A B),
their differences with the paired t- or Welch interval and the per-image bootstrap, the seed plan, and the exact
McNemar test of two runs. The statistics themselves are utils/stats.py's."""
import numpy as np

from utils import stats
from utils.errors import UsageError
from utils.evaluate import column_value
from utils.records import RecordError, read_record

from .groups import Group, baseline_of, find_group, masked_name
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
    """The labels of a pair from `comparisons`; a missing side reads as its name, or for a baseline without a
    masked row as the masked method's name, and a masked row without a baseline as 'its baseline'."""
    return (a.label if isinstance(a, Group) else (a or masked_name(b)),
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


def mcnemar_rows(folder_a: str, folder_b: str) -> list[dict]:
    """The exact McNemar test per attack between two finished runs evaluated on the same test images: one row
    {'column', 'n', 'acc_a', 'acc_b', 'only_a', 'only_b', 'p'} per attack both have a per-image record of.
    Raises UsageError when a run's record or per-image file is missing or unusable, or the runs share no attack
    or scored one on different test images."""
    recs = []
    for f in (folder_a, folder_b):
        try:
            rec = read_record(f)
        except RecordError as e:
            raise UsageError(f"--mcnemar: {e.path} {e.why}") from None
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
    return rows
