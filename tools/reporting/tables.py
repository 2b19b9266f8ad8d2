"""The report's documents: the markdown report (rows, differences, noise scale, seed plan, per-seed and
compute-time listings), McNemar's table, the JSON document and the CSV table."""
import csv
import math
import os

from utils.config import RECORDED_KEYS, upgrade
from utils.evaluate import column_title, column_value
from utils.runs import atomic_write

from .comparisons import analyse, comparisons, paired_diff, reference, seed_differences
from .groups import Group, value_text
from .records import budget_stats, columns, run_times

BOOTSTRAP_NOTE = {
    "both": "Bootstrap: {n} percentile replicates resampling test images and seeds together (one draw of images "
            "shared by all runs; seeds paired where the rows share them); unlike the t-interval, which holds the "
            "test set fixed, it also counts which test images were drawn.",
    "images": "Bootstrap: {n} percentile replicates resampling test images only (one draw shared by all runs; "
              "every seed kept once): the spread that the draw of the test set alone gives.",
    "seeds": "Bootstrap: {n} percentile replicates resampling seeds only (paired where the rows share them; "
             "every test image kept once): like the t-interval, it holds the test set fixed.",
}


def fmt(ms, digits=2, sign=""):
    """A (mean, std, n) cell: 'mean ± std [n]' ('mean [n]' without a std), or 'missing' when n is 0."""
    m, s, n = ms
    if n == 0:
        return "missing"
    m = round(m, digits) + 0.0  # a float sum's -1e-16 reads as 0.00, not -0.00
    return (f"{m:{sign}.{digits}f}" if s is None else f"{m:{sign}.{digits}f} ± {s:.{digits}f}") + f" [{n}]"


def _signed(v, digits=2):
    return "-" if v is None else f"{round(v, digits) + 0.0:+.{digits}f}"  # never -0.00


def _bound(v):
    """An interval end to two decimals, or to two significant digits where two decimals would read as zero, so
    that which side of zero it lies on shows."""
    return f"{v:+.2g}" if 0 < abs(v) < 0.005 else f"{v:+.2f}"


def _interval(ci, why=None):
    """An interval's cell; without one, why not: 'no spread (...)' as it is, too few runs as 'n/a (...)'."""
    if ci is not None:
        return f"[{_bound(ci[0])}, {_bound(ci[1])}]"
    return "n/a" if why is None else why if why.startswith("no ") else f"n/a ({why})"


def pooled_std(groups, col) -> str:
    """The pooled within-group sample standard deviation of `col`, sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over
    the groups with two or more runs: the seed-to-seed noise a difference of means is to be read against."""
    stats = [(n, s) for _, s, n in map(lambda g: g.stat(col), groups) if s is not None]
    dof = sum(n - 1 for n, _ in stats)
    return "missing" if dof == 0 else f"{math.sqrt(sum((n - 1) * s * s for n, s in stats) / dof):.2f}"


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
            text = value_text(v) if v is not None or key in cfg else "not recorded"  # e.g. world_size before it was kept
            seen[text] = seen.get(text, 0) + 1
        parts.append(f"{key} " + ", ".join(f"{v} [{n}]" for v, n in sorted(seen.items())))
    return "Recorded, not grouped by: " + "; ".join(parts) + "."


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
                           [label, column_title(c), _signed(d["mean"]), _interval(d["ci95"], d.get("ci95_why")),
                            d["test"]])
                    if bootstrap:
                        row.append("" if d is None else _interval(d["bootstrap_ci95"], d.get("bootstrap_why")))
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
                if rs[0]["resolvable"] is None:  # fewer than 2 pairs, or no spread
                    cells = [str(rs[0]["n"]), f"no plan: {rs[0]['why']}"] + [""] * (len(deltas) + 1)
                else:
                    by_delta = {r["delta"]: r for r in rs}
                    seeds = [str(r["seeds"]) if r["seeds"] is not None else r["why"] for r in map(by_delta.get, deltas)]
                    cells = [str(rs[0]["n"]), f"{rs[0]['sd']:.2f}"] + seeds + [f"{rs[0]['resolvable']:.2f}"]
                out.append(f"| {a} − {b} | {column_title(c)} | " + " | ".join(cells) + " |")
        if per_seed:
            complete = [(a, b) for a, b in comparisons(groups, diffs) if isinstance(a, Group) and isinstance(b, Group)]
            out += ["", "| Run | Seed | " + " | ".join(column_title(c) for c in cols) + " |",
                    "|" + "---|" * (len(cols) + 2)]
            for g in groups:
                for r in sorted(g.runs, key=lambda r: r.get("seed")):
                    cells = ["-" if column_value(r, c) is None else f"{column_value(r, c):.2f}" for c in cols]
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


def mcnemar_markdown(folder_a: str, folder_b: str, result: dict) -> str:
    """McNemar's table of two runs (`result` from comparisons.mcnemar_rows), with the runs named A and B above it
    (and the record each comes from where it is not the run's results.json)."""
    names = [f + ("" if os.path.basename(r) == "results.json" else f" ({os.path.basename(r)}: its --eval-only record)")
             for f, r in zip((folder_a, folder_b), result["records"])]
    out = [f"A = {names[0]}", f"B = {names[1]}", "", "| Attack | Images | A | B | Right for A only | "
           "Right for B only | Exact McNemar p |", "|---|---|---|---|---|---|---|"]
    out += [f"| {column_title(r['column'])} | {r['n']} | {r['acc_a']:.2f} | {r['acc_b']:.2f} | {r['only_a']} | "
            f"{r['only_b']} | {r['p']:.4g} |" for r in result["rows"]]
    if result.get("attack_differences"):
        out += ["", f"Note: A and B were attacked with different settings ({'; '.join(result['attack_differences'])}): "
                    f"each attack's row compares each model under its own attack, not one attack"]
    return "\n".join(out) + "\n"


def mcnemar_json(result: dict) -> dict:
    """McNemar's test as JSON: {'mcnemar': its rows, 'records': the two records' paths, 'attack_differences': how
    their attacks differed ([] when they were the same)}."""
    return {"mcnemar": result["rows"], "records": result["records"],
            "attack_differences": result.get("attack_differences", [])}


def report_json(tables, analysis, unfinished=(), bootstrap=0, marks=(), boot_over="both") -> dict:
    """The whole report as plain data: groups (label, method, settings, seeds, per-column mean/std/n, and the
    mean budget and share at eps over the runs whose metrics.csv has them, as the table's Budget columns),
    differences and plan (lists of flat rows; see comparisons.difference and comparisons.plan; the rows of a
    --diff pair on a `marks` column carry `reference` and `reference_inside`), unfinished folders."""
    marks = dict(marks)
    groups, differences, plans = [], [], []
    for (data, model), gs in sorted(tables.items(), key=lambda t: str(t[0])):
        cols = analysis[(data, model)]["columns"]
        for g in gs:
            groups.append({"data": data, "model": model, "label": g.label, "method": g.method,
                           "seeds": sorted(r.get("seed") for r in g.runs), "folders": [r["folder"] for r in g.runs],
                           "settings": g.settings,
                           "columns": {c: dict(zip(("mean", "std", "n"), g.stat(c))) for c in cols},
                           "budget": {k: dict(zip(("mean", "std", "n"), g.budget(k)))
                                      for k in ("budget_mean", "eps_share")}})
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
    """Write the rows of every table as CSV (atomically): data, model, method (the row's label), seeds, and per
    column its mean, std and number of runs (mean to 4 decimals), then the mean budget and share at eps."""
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

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)
