"""Read run folders and print the paper's table: mean +- std over seeds, images per figure, PART - baseline.

    python -m tools.report runs/                      # every run folder below runs/
    python -m tools.report runs/a runs/b --csv table.csv --seeds 1 2 3

One table per (data set, model); rows AT, PART, TRADES, PART-T, MART, PART-M (and MMA, PART-MMA), each
present pair followed by its difference row. A pair member with no finished run is shown as missing, never
as zero; a folder without results.json (unfinished or crashed) is listed as missing too.
"""
import argparse
import csv
import json
import math
import os
import sys

COLUMNS = (("natural", "Natural"), ("pgd20", "PGD-20"), ("mma", "MMA"), ("aa", "AA"))
PAIRS = (("AT", "PART"), ("TRADES", "PART-T"), ("MART", "PART-M"), ("MMA", "PART-MMA"))


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
    """(records, unfinished folders). A record is results.json's content plus its folder."""
    records, unfinished = [], []
    for f in folders:
        path = os.path.join(f, "results.json")
        if os.path.isfile(path):
            with open(path) as fh:
                rec = json.load(fh)
            rec["folder"] = f
            records.append(rec)
        else:
            unfinished.append(f)
    return records, unfinished


def mean_std(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return m, s, len(vals)


def summarise(records):
    """{(data, model): {method: {column: (mean, std, n_runs), 'seeds': [...], 'n_eval': ..., 'n_eval_aa': ...}}}"""
    groups = {}
    for r in records:
        groups.setdefault((r["data"], r["model"]), {}).setdefault(r["method"], []).append(r)
    out = {}
    for key, methods in groups.items():
        out[key] = {}
        for method, runs in methods.items():
            row = {c: mean_std([r.get(c) for r in runs]) for c, _ in COLUMNS}
            row["seeds"] = sorted(r.get("seed") for r in runs)
            row["n_eval"] = sorted({r.get("n_eval") for r in runs})
            row["n_eval_aa"] = sorted({r.get("n_eval_aa") for r in runs if r.get("n_eval_aa")})
            out[key][method] = row
    return out


def table_rows(summary_for_key, expected_seeds=None):
    """Rows (label, [cell strings], csv dict) in the paper's order, with difference rows after each pair."""
    rows = []

    def fmt(ms):
        m, s, n = ms
        if n == 0:
            return "missing"
        return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"

    for base, part in PAIRS:
        if base not in summary_for_key and part not in summary_for_key:
            continue
        for method in (base, part):
            row = summary_for_key.get(method)
            if row is None:
                rows.append((method, ["missing"] * len(COLUMNS), "missing", "", {"method": method}))
                continue
            seeds = row["seeds"]
            seed_note = ",".join(map(str, seeds))
            if expected_seeds:
                absent = [s for s in expected_seeds if s not in seeds]
                if absent:
                    seed_note += f" (missing {','.join(map(str, absent))})"
            images = "/".join(map(str, row["n_eval"]))
            if row["n_eval_aa"] and row["n_eval_aa"] != row["n_eval"]:
                images += f" (AA {'/'.join(map(str, row['n_eval_aa']))})"
            csv_row = {"method": method, "seeds": seed_note, "images": images}
            for c, _ in COLUMNS:
                m, s, n = row[c]
                csv_row[c + "_mean"] = None if n == 0 else round(m, 4)
                csv_row[c + "_std"] = None if s is None else round(s, 4)
            rows.append((method, [fmt(row[c]) for c, _ in COLUMNS], seed_note, images, csv_row))
        if base in summary_for_key and part in summary_for_key:
            cells, csv_row = [], {"method": f"{part} - {base}"}
            for c, _ in COLUMNS:
                a, b = summary_for_key[base][c], summary_for_key[part][c]
                if a[2] == 0 or b[2] == 0:
                    cells.append("missing")
                    csv_row[c + "_mean"] = None
                else:
                    cells.append(f"{b[0] - a[0]:+.2f}")
                    csv_row[c + "_mean"] = round(b[0] - a[0], 4)
            rows.append((f"{part} − {base}", cells, "", "", csv_row))
        else:
            rows.append((f"{part} − {base}", ["missing"] * len(COLUMNS), "", "", {"method": f"{part} - {base}"}))
    return rows


def markdown(summary, unfinished=(), expected_seeds=None):
    parts = []
    for (data, model) in sorted(summary):
        parts.append(f"### {data}, {model}\n")
        parts.append("| Method | " + " | ".join(t for _, t in COLUMNS) + " | Seeds | Test images |")
        parts.append("|---|" + "---|" * (len(COLUMNS) + 2))
        for label, cells, seeds, images, _ in table_rows(summary[(data, model)], expected_seeds):
            parts.append(f"| {label} | " + " | ".join(cells) + f" | {seeds} | {images} |")
        parts.append("")
    parts.append("Mean ± sample standard deviation over seeds, accuracy in percent; differences are of the means.")
    if unfinished:
        parts.append("\nRun folders without results.json (unfinished or crashed), counted as missing:")
        parts.extend(f"- {f}" for f in unfinished)
    return "\n".join(parts) + "\n"


def write_csv(path, summary, expected_seeds=None):
    fields = ["data", "model", "method", "seeds", "images"] + [f"{c}_{s}" for c, _ in COLUMNS for s in ("mean", "std")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for (data, model) in sorted(summary):
            for *_, row in table_rows(summary[(data, model)], expected_seeds):
                w.writerow({"data": data, "model": model, **row})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run folders, or folders holding them")
    p.add_argument("--csv", help="also write the table as CSV here")
    p.add_argument("--seeds", type=int, nargs="*", help="seeds every method should have (flags the missing)")
    args = p.parse_args(argv)
    folders = find_runs(args.paths)
    if not folders:
        print(f"error: no run folders (with config.json or results.json) under {' '.join(args.paths)}",
              file=sys.stderr)
        return 2
    records, unfinished = load_runs(folders)
    summary = summarise(records)
    print(markdown(summary, unfinished, args.seeds), end="")
    if args.csv:
        write_csv(args.csv, summary, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
