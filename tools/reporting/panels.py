"""The data of the report's figures, which utils/figures.py draws: the training curves of each row, and the
per-seed differences of each --diff A B."""
from utils.evaluate import column_title
from utils.stats import mean_std

from .comparisons import seed_values
from .groups import find_group


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


def diff_panels(tables, diffs, analysis, marks=()) -> list[dict]:
    """The panels of `save_paired_differences` for each --diff A B and column with paired seeds; a panel without
    an interval says why in its 'note', and when the report spans several (data set, model) tables each panel
    names its own in 'where'."""
    marks = dict(marks)
    panels = []
    for key, groups in sorted(tables.items(), key=lambda t: str(t[0])):
        where = f"{key[0]}, {key[1]}" if len(tables) > 1 else None
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
                               "note": d.get("ci95_why"), "where": where,
                               "mark": marks.get(c), "mark_label": "reference (--mark)"})
    return panels
