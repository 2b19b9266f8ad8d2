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
import math
import os
import sys

if __name__ == "__main__":  # run as a file (python tools/report.py): put the repository root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.reporting.comparisons import analyse, mcnemar_rows
from tools.reporting.groups import check_diffs, group_runs
from tools.reporting.panels import curves, diff_panels
from tools.reporting.records import columns, find_runs, load_runs
from tools.reporting.tables import markdown, mcnemar_markdown, report_json, write_csv
from utils import stats
from utils.config import SEED, Parser, nonempty, number
from utils.errors import UsageError, entry_point
from utils.runs import check_writable, save_json


def _mark(text: str) -> tuple[str, float]:
    """A --mark COLUMN=VALUE as (column, value); the value a finite number (argparse reports anything else)."""
    col, _, v = text.partition("=")
    try:
        value = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE (e.g. natural=1.23), got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a finite number")
    return col, value


def check_plot_path(path: str, flag: str = "--plot") -> None:
    """A figure's path must be writable and name an image format matplotlib writes (no extension: PNG)."""
    check_writable(path, flag, folder=False)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext:
        from matplotlib.figure import Figure
        formats = Figure().canvas.get_supported_filetypes()
        if ext not in formats:
            raise UsageError(f"{flag} {path}: matplotlib cannot write .{ext} files (use one of {', '.join(sorted(formats))})")


def _write_json(path: str, doc) -> None:
    """Write `doc` to `path` atomically (utils.runs.save_json), creating the missing folders on the way."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_json(path, doc)


def build_parser() -> Parser:
    """The report's command line (tools/flags.py documents it from here)."""
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
    return p


def report(argv=None) -> None:
    """The tool: parse, check the output paths, read the runs, print the tables, write --csv and --plot."""
    args = build_parser().parse_args(argv)
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
        rows = mcnemar_rows(*args.mcnemar)
        print(mcnemar_markdown(*args.mcnemar, rows), end="")
        if args.json:
            _write_json(args.json, {"mcnemar": rows})
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
        _write_json(args.json, report_json(tables, analysis, unfinished, args.bootstrap, args.mark, args.bootstrap_over))
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
