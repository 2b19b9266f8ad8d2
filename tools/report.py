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
(utils/stats.py holds the statistics); where there is none (one pair, or no spread: every difference equal),
the cell says why. Unfinished runs are listed as missing, never counted as zero. A results.json or metrics.csv
that cannot be used (truncated, not a record, not UTF-8, without a seed, of an unknown method, malformed rows) is
left out, and the report names the file and why at its end; a per_image.npz that does not match its run stops
the report (exit 2). No output (--csv, --json, --plot, --plot-diff) may lie in a run folder the report reads.

    python -m tools.report docs/studies/figure1 --diff ul6, br6, --mark natural=1.23 pgd20=0.94 --plan 0.5 1.0 \
        --bootstrap 10000 --json r.json                # with the published effect beside the interval
    python -m tools.report --mcnemar RUN_A RUN_B     # exact McNemar test of two runs on the same test images

--plan DELTA gives, per difference and column, the seeds the paired t-test needs to detect DELTA points with
--power at two-sided --alpha, and the smallest difference the current seeds resolve. --bootstrap N (at least
100) adds a percentile bootstrap interval that resamples test images and seeds together, from the runs'
per_image.npz; --bootstrap-over images (or seeds) resamples only that one, which shows where the interval's
width comes from.
"""
import argparse
import math
import os
import sys

if __name__ == "__main__":  # the repository root on the path (run as a file: python tools/report.py), and
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.signals import hold_signals
    hold_signals()  # Ctrl-C / SIGTERM held until the libraries have loaded (entry_point ends with one line)

from tools.reporting.comparisons import analyse, mcnemar_rows
from tools.reporting.groups import check_diffs, diff_warnings, group_runs
from tools.reporting.panels import curves, diff_panels
from tools.reporting.records import check_no_new_runs, columns, find_runs, load_runs
from tools.reporting.tables import markdown, mcnemar_json, mcnemar_markdown, report_json, write_csv
from utils import stats
from utils.cli import SEED, Parser, nonempty, number
from utils.config import explicit_flags
from utils.errors import UsageError, entry_point
from utils.runs import check_outputs_apart, check_writable, save_json


def _mark(text: str) -> tuple[str, float]:
    """A --mark COLUMN=VALUE as (column, value); the value a finite number (argparse reports anything else)."""
    col, _, v = text.partition("=")
    try:
        value = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE (e.g. natural=1.23), got {text!r}") from None
    if not math.isfinite(value) or abs(value) > 100:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a difference of accuracies in percent, "
                                         f"-100 to 100")
    return col, value


def _replicates(text: str) -> int:
    """A --bootstrap N: a whole number of stats.MIN_BOOTSTRAP to stats.MAX_BOOTSTRAP replicates (argparse reports
    anything else)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < stats.MIN_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"too few replicates ({n}) for a 95% percentile interval (its 2.5% tails "
                                         f"need at least {stats.MIN_BOOTSTRAP}); give {stats.MIN_BOOTSTRAP} or more")
    if n > stats.MAX_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"{n} replicates: at most {stats.MAX_BOOTSTRAP:,} (more change no printed "
                                         f"digit of the interval)")
    return n


_replicates.describe = f"whole number {stats.MIN_BOOTSTRAP} to {stats.MAX_BOOTSTRAP}"  # as tools/flags.py shows it

# flags that only set up another, given or not at their default: {dest: (the dest it needs, what it does)}
NEEDS = {"power": ("plan", "--power sets the seed plan's power"),
         "alpha": ("plan", "--alpha sets the seed plan's significance level"),
         "bootstrap_seed": ("bootstrap", "--bootstrap-seed seeds the bootstrap's resampling"),
         "bootstrap_over": ("bootstrap", "--bootstrap-over chooses what the bootstrap resamples")}
NEEDED = {"plan": "--plan DELTA", "bootstrap": "--bootstrap N"}


def check_plot_path(path: str, flag: str = "--plot") -> None:
    """A figure's path must be writable and name an image format matplotlib writes (no extension: PNG)."""
    check_writable(path, flag, folder=False)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext:
        from matplotlib.figure import Figure
        formats = Figure().canvas.get_supported_filetypes()
        if ext not in formats:
            raise UsageError(f"{flag} {path}: matplotlib cannot write .{ext} files (use one of {', '.join(sorted(formats))})")


def _write(flag: str, path: str, write) -> None:
    """Call write(path) after creating the missing folders on the way; a failure (a full disk) names the flag and
    the path (the writers are atomic: the file is left as it was)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(path)
    except OSError as e:
        raise UsageError(f"{flag} {path}: writing failed ({e.strerror or e}); the file is left as it was") from None


def build_parser() -> Parser:
    """The report's command line (tools/flags.py documents it from here)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.flags = []  # every action, so that utils.config.explicit_flags can tell the flags given from defaults

    def add(*names, **kwargs):
        p.flags.append(p.add_argument(*names, **kwargs))

    add("paths", nargs="*", type=nonempty, help="run folders, or folders holding them (searched below)")
    add("--csv", metavar="PATH", type=nonempty, help="also write the tables as CSV to this file")
    add("--seeds", type=SEED, nargs="*",
        help="seeds every row should have; the missing ones are flagged (default: no check)")
    add("--diff", nargs=2, action="append", default=[], metavar=("A", "B"),
        help="also show row A minus row B with its 95%% interval (labels, or a part of one that names a "
             "single row; a name that no row of any table has exits 2 and lists the rows); may be given several "
             "times")
    add("--per-seed", action="store_true",
        help="also list every run's values, and each difference as the mean ± std of its per-seed "
             "differences over the seeds both rows have")
    add("--times", action="store_true",
        help="also list every run's compute time: epochs, training seconds, seconds per epoch, "
             "per-epoch checks and final evaluation (from metrics.csv and results.json)")
    add("--plot", metavar="PNG", type=nonempty,
        help="write training curves (natural, PGD-20, budget per epoch; mean over seeds with a +-1 std "
             "band) here")
    add("--plan", nargs="+", type=number(float, lo=0, hi=100, lo_open=True), metavar="DELTA",
        help="seed plan: seeds the paired t-test needs to detect each DELTA (accuracy points, at most 100), and "
             "the smallest difference the current seeds resolve")
    add("--power", type=number(float, lo=0, hi=1, lo_open=True, hi_open=True), default=0.8,
        help=f"with --plan: power of the seed plan, the chance to detect a true difference of DELTA; above "
             f"--alpha, at most {stats.MAX_POWER:g} (default: 0.8)")
    add("--alpha", type=number(float, lo=stats.MIN_ALPHA, hi=1, hi_open=True), default=0.05,
        help="with --plan: two-sided significance level of the seed plan (default: 0.05)")
    add("--bootstrap", type=_replicates, metavar="N", default=0,
        help=f"add a percentile bootstrap interval from N replicates ({stats.MIN_BOOTSTRAP} to "
             f"{stats.MAX_BOOTSTRAP:,}) resampling test images and seeds (needs the runs' per_image.npz; default: "
             f"no bootstrap)")
    add("--bootstrap-seed", type=number(int, lo=0, hi=2**32 - 1), default=0,
        help="with --bootstrap: seed of the bootstrap's resampling (default: 0)")
    add("--bootstrap-over", choices=stats.BOOTSTRAP_OVER, default="both",
        help="with --bootstrap: what it resamples: test images and seeds (both, the default), or only one of "
             "them, to see which the interval's width comes from")
    add("--json", metavar="PATH", type=nonempty, help="also write the whole report as JSON to this file")
    add("--plot-diff", metavar="PNG", type=nonempty,
        help="plot each --diff A B: the per-seed differences of every column with their mean and 95%% "
             "interval")
    add("--mark", nargs="+", default=[], metavar="COLUMN=VALUE", type=_mark,
        help="with --diff: a reference value per column, e.g. natural=1.23 pgd20=0.94 (a published effect), "
             "shown beside each --diff difference with whether its 95%% interval holds it, and drawn on "
             "--plot-diff")
    add("--mcnemar", nargs=2, metavar=("RUN_A", "RUN_B"), type=nonempty,
        help="instead of the tables: the exact McNemar test per attack between two run folders (from their "
             "per_image.npz, else from the --eval-only record of the same checkpoint in the run folder)")
    return p


def report(argv=None) -> None:
    """The tool: parse, check the output paths, read the runs, print the tables, write --csv and --plot."""
    args = build_parser().parse_args(argv)
    given = explicit_flags(build_parser(), argv)
    for dest, (needs, what) in NEEDS.items():
        if dest in given and needs not in given:
            raise UsageError(f"{what}; it needs {NEEDED[needs]}")
    if args.plan:
        try:
            stats.check_plan(args.power, args.alpha)
        except ValueError as e:
            raise UsageError(f"--power {args.power:.10g}, --alpha {args.alpha:.10g}: {e}") from None
    outputs = [(flag, path) for flag, path in (("--csv", args.csv), ("--json", args.json), ("--plot", args.plot),
                                               ("--plot-diff", args.plot_diff)) if path]
    check_outputs_apart(outputs, [])  # two of them naming one file
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
    twice = sorted({s for s in args.seeds or [] if args.seeds.count(s) > 1})
    if twice:
        raise UsageError(f"--seeds names {', '.join(map(str, twice))} more than once; give each seed once")
    if args.mark and not args.diff:
        raise UsageError("--mark sets reference values beside the --diff A B differences; give at least one --diff")
    if args.mcnemar and (args.paths or args.diff or args.plan or args.bootstrap or args.plot or args.plot_diff
                         or args.csv or args.per_seed or args.times or args.seeds is not None):
        raise UsageError("--mcnemar compares two run folders on its own; give it without run folders or table options "
                         "(only --json)")
    if args.mcnemar and os.path.realpath(args.mcnemar[0]) == os.path.realpath(args.mcnemar[1]):
        raise UsageError(f"--mcnemar {args.mcnemar[0]} {args.mcnemar[1]}: one run folder twice; give two runs")
    if args.mcnemar:
        check_outputs_apart(outputs, args.mcnemar)
        result = mcnemar_rows(*args.mcnemar)
        print(mcnemar_markdown(*args.mcnemar, result), end="")
        if args.json:
            _write("--json", args.json, lambda path: save_json(path, mcnemar_json(result)))
        return
    if not args.paths:
        raise UsageError("give run folders (or folders holding them), or --mcnemar RUN_A RUN_B")
    missing = [path for path in args.paths if not os.path.exists(path)]
    if missing:
        raise UsageError(f"{', '.join(missing)}: no such file or folder")
    folders = find_runs(args.paths)
    if not folders:
        raise UsageError(f"no run folders (with config.json or results.json) under {' '.join(args.paths)}")
    check_outputs_apart(outputs, folders)  # never overwrite a run's files, nor add to a run folder
    check_no_new_runs(outputs, args.paths)
    skipped = []
    runs, unfinished = load_runs(folders, skipped, per_image=bool(args.bootstrap))
    if skipped and not runs:
        more = f" (and {len(skipped) - 1} more file(s) alike)" if len(skipped) > 1 else ""
        raise UsageError(f"no run could be read: {skipped[0][0]}: {skipped[0][1]}{more}")
    tables = group_runs(runs, lambda msg: print(f"warning: {msg}", file=sys.stderr))
    check_diffs(tables, args.diff)
    for line in diff_warnings(tables, args.diff):
        print(f"warning: {line}", file=sys.stderr)
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
        _write("--csv", args.csv, lambda path: write_csv(path, tables))
    if args.json:
        doc = report_json(tables, analysis, unfinished, args.bootstrap, args.mark, args.bootstrap_over)
        _write("--json", args.json, lambda path: save_json(path, doc))
    if args.plot_diff:
        from utils.figures import save_paired_differences
        _write("--plot-diff", args.plot_diff, lambda path: save_paired_differences(path, panels))
        print(f"wrote {args.plot_diff}")
    if args.plot:
        drawn = curves(tables)
        if any(k != "epoch" for g in drawn.values() for k in g):
            from utils.figures import save_curves
            _write("--plot", args.plot, lambda path: save_curves(path, drawn))
            print(f"wrote {args.plot}")
        else:
            print(f"warning: no run has readable training curves (metrics.csv); {args.plot} not written",
                  file=sys.stderr)


def main(argv=None) -> int:
    """The entry point: the exit code of `report` (0; 2 with one line for bad input; 130 / 143 when interrupted)."""
    return entry_point(lambda: report(argv))


if __name__ == "__main__":
    sys.exit(main())
