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
minus its unmasked baseline (same settings otherwise), and any --diff A B. Unfinished runs are listed as
missing, never counted as zero.
"""
import argparse
import csv
import json
import math
import os
import sys

if __name__ == "__main__":  # run as a file (python tools/report.py): put the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.config import MASK_KEYS, effective, upgrade
from utils.evaluate import column_title
from utils.methods import labels
from utils.runs import read_metrics
from utils.units import fraction_text

ORDER = list(labels())  # AT, PART, MMA, PART-MMA, TRADES, ...
FIXED = ("variant", "mask", "attack", "data", "model")  # said by the table's title and the method name


# ----------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------
def find_runs(paths):
    """Run folders among `paths` and below them: any folder holding config.json or results.json."""
    found = []
    for p in paths:
        for root, dirs, files in os.walk(p):
            if "config.json" in files or "results.json" in files:
                found.append(root)
                dirs[:] = []
    return sorted(set(found))


def load_runs(folders):
    """(runs, unfinished folders). A run is its results.json content plus 'folder', 'metrics' (the rows of
    metrics.csv) and 'key' (its configuration, as `group_key` gives it)."""
    runs, unfinished = [], []
    for f in folders:
        path = os.path.join(f, "results.json")
        if not os.path.isfile(path):
            unfinished.append(f)
            continue
        with open(path) as fh:
            rec = json.load(fh)
        rec["folder"], rec["mtime"] = f, os.path.getmtime(path)
        rec["metrics"] = read_metrics(os.path.join(f, "metrics.csv"))
        rec["settings"] = settings(rec)
        runs.append(rec)
    return runs, unfinished


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


def _text(v) -> str:
    if isinstance(v, list):
        return " ".join(_text(x) for x in v)
    return fraction_text(v) if isinstance(v, float) else str(v)


def columns(runs) -> list[str]:
    """Accuracy columns present in any run, in evaluation order (natural, pgdN, mma, cw, part-pgd, aa, CIFAR-10-C)."""
    from utils.evaluate import record_columns
    seen = []
    for r in runs:
        for c in record_columns(r):
            if c not in seen and (r.get(c) is not None or c not in ("natural", "pgd20", "mma", "aa")):
                seen.append(c)
    rank = {"natural": 0, "mma": 2, "cw": 3, "part-pgd": 4, "aa": 5, "corruptions": 6}
    return sorted(seen, key=lambda c: (rank.get(c, 1), int(c[3:]) if c.startswith("pgd") and c[3:].isdigit() else 0))


def value(run, col):
    v = run.get(col)
    return v.get("mean") if isinstance(v, dict) else v


def budget_stats(run) -> dict:
    """Mean budget (1/255) and share at eps over the epochs after warm-up (all epochs if none), from metrics.csv."""
    rows = [r for r in run["metrics"] if r.get("budget_mean") not in (None, "")]
    after = [r for r in rows if r.get("phase") != "warm-up"] or rows
    out = {}
    for k in ("budget_mean", "eps_share"):
        vals = [float(r[k]) for r in after]
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
        key = json.dumps(r["settings"], sort_keys=True, default=str)
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


def label_groups(groups):
    """Label each group: its method, plus `key=value` for each setting whose values differ among the groups that
    have it, where the group's value is not the one most of those groups share (all values when none is)."""
    keys = sorted({k for g in groups for k in g.settings} - set(FIXED) - {"method"})
    shown = {g: [] for g in map(id, groups)}
    for k in keys:
        values = [_text(g.settings[k]) for g in groups if k in g.settings]
        if len(set(values)) < 2:
            continue
        counts = sorted(((values.count(v), v) for v in set(values)), reverse=True)
        modal = counts[0][1] if counts[0][0] > counts[1][0] else None
        for g in groups:
            if k in g.settings and _text(g.settings[k]) != modal:
                shown[id(g)].append(f"{k}={_text(g.settings[k])}")
    for g in groups:
        g.label = g.method + (f" ({', '.join(shown[id(g)])})" if shown[id(g)] else "")


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


def diff_cells(a, b, cols):
    """Differences of means; a cell whose two means cover different seeds is marked with `*`."""
    cells = []
    for c in cols:
        x, y = a.stat(c), b.stat(c)
        mark = "*" if seed_values(a, c).keys() != seed_values(b, c).keys() else ""
        cells.append("missing" if x[2] == 0 or y[2] == 0 else f"{x[0] - y[0]:+.2f}{mark}")
    return cells


def paired_diff(a, b, col):
    """(mean, sample std, n) of the per-seed differences a - b over the seeds both groups have a value for: the
    comparison to read when rows share their seeds (and so their warm-up and data order)."""
    va, vb = seed_values(a, col), seed_values(b, col)
    return mean_std([va[s] - vb[s] for s in va.keys() & vb.keys()])


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


def markdown(tables, unfinished=(), expected_seeds=None, diffs=(), per_seed=False):
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
        pairs = [(g, baseline_of(g, groups)) for g in groups if g.masked]
        paired = {id(b) for _, b in pairs if b is not None}
        pairs += [(None, g) for g in groups if not g.masked and id(g) not in paired]
        for a_name, b_name in diffs:
            a, b = find_group(groups, a_name), find_group(groups, b_name)
            pairs.append((a, b) if a is not None and b is not None else (a_name, b_name))
        complete = [(a, b) for a, b in pairs if isinstance(a, Group) and isinstance(b, Group)]
        if pairs:
            out += ["", "| Difference of means | " + " | ".join(column_title(c) for c in cols) + " |",
                    "|" + "---|" * (len(cols) + 1)]
            for a, b in pairs:
                if isinstance(a, Group) and isinstance(b, Group):
                    out.append(f"| {a.label} − {b.label} | " + " | ".join(diff_cells(a, b, cols)) + " |")
                else:  # a row without its counterpart: the difference is missing, never zero
                    name_a = a.label if isinstance(a, Group) else (a or _masked_name(b))
                    name_b = b.label if isinstance(b, Group) else (b or "its baseline")
                    out.append(f"| {name_a} − {name_b} | " + " | ".join(["missing"] * len(cols)) + " |")
            out.append("| Pooled std (noise scale) | " + " | ".join(pooled_std(groups, c) for c in cols) + " |")
        if per_seed:
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
        out.append("")
    out.append("Accuracy in percent: mean ± sample standard deviation over seeds [number of runs]; differences are "
               "of the means (* where the two means cover different seeds); the pooled std is over the groups with "
               "two or more runs.")
    if unfinished:
        out.append("\nRun folders without results.json (unfinished or crashed), counted as missing:")
        out.extend(f"- {f}" for f in unfinished)
    return "\n".join(out) + "\n"


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
    """{label: {'epoch': [...], column: (means, stds)}} per group, over the epochs every run of it has."""
    out = {}
    for (data, model), groups in sorted(tables.items(), key=lambda t: str(t[0])):
        for g in groups:
            per_run = [{int(r["epoch"]): r for r in run["metrics"]} for run in g.runs if run["metrics"]]
            if not per_run:
                continue
            epochs = sorted(set.intersection(*(set(m) for m in per_run)))
            label = g.label if len(tables) == 1 else f"{data}, {model}: {g.label}"
            entry = {"epoch": epochs}
            for col in ("natural", "pgd20", "budget_mean", "eps_share"):
                if all(m[e].get(col) not in (None, "") for m in per_run for e in epochs):
                    stats = [mean_std([float(m[e][col]) for m in per_run]) for e in epochs]
                    entry[col] = ([s[0] for s in stats], [s[1] if s[1] is not None else float("nan") for s in stats])
            out[label] = entry
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run folders, or folders holding them")
    p.add_argument("--csv", metavar="PATH", help="also write the table as CSV here")
    p.add_argument("--seeds", type=int, nargs="*", help="seeds every row should have (flags the missing ones)")
    p.add_argument("--diff", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="also show row A minus row B (labels, or a part of one that names a single row)")
    p.add_argument("--per-seed", action="store_true",
                   help="also list every run's values, and each difference as the mean ± std of its per-seed "
                        "differences over the seeds both rows have")
    p.add_argument("--plot", metavar="PNG", help="write training curves (natural, PGD-20, budget per epoch; mean over "
                                                  "seeds with a +-1 std band) here")
    args = p.parse_args(argv)
    folders = find_runs(args.paths)
    if not folders:
        print(f"error: no run folders (with config.json or results.json) under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    runs, unfinished = load_runs(folders)
    tables = group_runs(runs, lambda msg: print(f"warning: {msg}", file=sys.stderr))
    print(markdown(tables, unfinished, args.seeds, args.diff, args.per_seed), end="")
    if args.csv:
        write_csv(args.csv, tables)
    if args.plot:
        from utils.figures import save_curves
        save_curves(args.plot, curves(tables))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
