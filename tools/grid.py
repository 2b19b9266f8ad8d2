"""The paper's studies as commands: one per (data set, model, row, seed), printed or run.

    python -m tools.grid                                   # the main table: every command
    python -m tools.grid --study figure1 --data cifar10 --models resnet18 --seeds 1 2 3
    python -m tools.grid --study mask-source --run --jobs 2 -- --width 16 --epochs 12 --warm-up 4
    python -m tools.report runs/mask-source                # then the table

Studies (rows):
  main         AT, PART, TRADES, PART-T, MART, PART-M (--methods adds MMA, PART-MMA)
  figure1      plain AT with the 6/255 quadrant at ul, ur, br or bl (12/255 elsewhere, no warm-up), and
               uniform 8/255 AT; natural and PGD-20, as in the paper's Figure 1
  eps-low      PART with eps_low 5/255, 6/255, 7/255 and 8/255 (8/255 trains exactly like AT)
  cam          PART with GradCAM, XGradCAM and LayerCAM
  mask-source  AT, and PART with the cam, official and permuted mask sources
  as-published each row of main beside the same row with --as-published (the official code's behaviour:
               official masks, starts and TRADES forward, and aa-official in the evaluation)

Each run writes <root>/<data>-<model>[-<tag>]/<row>-seed<N>/, where <root> is runs/<study> unless given and
<tag> names the flags passed after `--` for every command (--tag overrides it; --tag "" drops it). The
commands start with the Python that runs this tool, so a printed command runs as pasted. With --run, a run
whose folder holds results.json is skipped and one that holds last.pt is resumed, so a grid can be run again
until it is complete; --jobs N runs N at a time (each with OMP_NUM_THREADS set to share the cores).
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from models import MODELS
from utils.data import DATASETS
from utils.methods import METHODS, labels

SCRIPT = {v: m.script for v, m in METHODS.items()}


def _main_rows():
    rows = {}
    for label, (variant, attack, masked, _) in labels().items():
        flags = (["--attack", attack] if attack != METHODS[variant].attacks[0] else []) + ([] if masked else ["--no-mask"])
        rows[label] = (SCRIPT[variant], flags)
    return rows


def _figure1_rows():
    rows = {"AT-uniform": (SCRIPT["part"], ["--no-mask", "--eval-attacks", "natural", "pgd20"])}
    for i, quadrant in enumerate(("ul", "ur", "br", "bl")):
        eps = ["12/255"] * 4
        eps[i] = "6/255"
        rows[f"AT-{quadrant}6"] = (SCRIPT["part"], ["--mask-source", "regions", "--warm-up", "0", "--region-eps", *eps,
                                                    "--eval-attacks", "natural", "pgd20"])
    return rows


def _as_published_rows():
    rows = {}
    for label, (script, flags) in _main_rows().items():  # ours, then the official code's behaviour beside it
        rows[label] = (script, flags)
        rows[f"{label}-as-published"] = (script, flags + ["--as-published"])
    return rows


STUDIES = {
    "main": _main_rows(),
    "figure1": _figure1_rows(),
    "eps-low": {f"PART-eps_low{k}": (SCRIPT["part"], ["--low-epsilon", f"{k}/255"]) for k in (5, 6, 7, 8)},
    "cam": {f"PART-{cam}": (SCRIPT["part"], ["--cam", cam]) for cam in ("gradcam", "xgradcam", "layercam")},
    "mask-source": {"AT": (SCRIPT["part"], ["--no-mask"]),
                    **{f"PART-{s}": (SCRIPT["part"], ["--mask-source", s]) for s in ("cam", "official", "permuted")}},
    "as-published": _as_published_rows(),
}
DEFAULT_ROWS = {"main": [m.label(m.attacks[0], masked) for m in METHODS.values() for masked in (False, True)]}
DEFAULT_ROWS["as-published"] = [r for label in DEFAULT_ROWS["main"] for r in (label, f"{label}-as-published")]
NOT_IN_TAG = {"--data-dir", "--device", "--download", "--log-interval", "--save-freq"}


def interpreter() -> str:
    """The Python running this tool, relative to the current folder when it lies below it."""
    rel = os.path.relpath(sys.executable)
    return rel if not rel.startswith("..") else sys.executable


def override_tag(extra) -> str:
    """A folder-name tag for the flags passed to every command: '--width 16 --epochs 12' -> 'width16-epochs12'."""
    parts, skip = [], False
    for i, a in enumerate(extra):
        if a.startswith("--"):
            skip = a in NOT_IN_TAG
            if not skip:
                parts.append(a[2:])
        elif not skip:
            parts[-1] += re.sub(r"[^A-Za-z0-9.=_-]", "_", a.replace("/", "_"))
    return "-".join(parts)


def commands(study, data, models, rows, seeds, root, extra=(), tag=None):
    """[(folder, argv)] for every run of the grid."""
    tag = override_tag(extra) if tag is None else tag
    out = []
    for d in data:
        for m in models:
            for s in seeds:  # seed by seed, so that an unfinished grid has whole seeds of every row
                for row in rows:
                    script, flags = STUDIES[study][row]
                    folder = os.path.join(root, f"{d}-{m}" + (f"-{tag}" if tag else ""), f"{row}-seed{s}")
                    out.append((folder, [interpreter(), script, "--data", d, "--model", m, *flags, "--seed", str(s),
                                         "--out", folder, *extra]))
    return out


def finished_as_asked(folder: str, argv) -> bool:
    """Whether `folder` holds a finished run of exactly this command's settings (and data file)."""
    import json
    from utils.config import effective, parse, script_constants, upgrade
    from utils.errors import UsageError
    try:
        with open(os.path.join(folder, "results.json")) as f:
            done = upgrade(json.load(f)["config"])
        script = argv[1]
        variant = next(v for v, m in METHODS.items() if m.script == script)
        asked, _ = parse(variant, script_constants(script), argv[2:])
    except (OSError, ValueError, KeyError, UsageError):
        return False  # run it: the run itself says what is wrong
    same = {k: v for k, v in effective(asked).items() if k != "data_fingerprint"} == \
        {k: v for k, v in effective(done).items() if k != "data_fingerprint"}
    return same and os.path.abspath(asked["data_dir"]) == os.path.abspath(done["data_dir"])


def run_all(cmds, jobs):
    """Run the commands, `jobs` at a time; skip runs finished with the same settings, resume interrupted ones.
    Returns the number of failed runs (a folder that holds a run of other settings fails: the run refuses it)."""
    pending, running, failed, n = list(cmds), [], 0, len(cmds)
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    done = 0
    while pending or running:
        while pending and len(running) < jobs:
            folder, argv = pending.pop(0)
            done += 1
            if finished_as_asked(folder, argv):
                print(f"[{done}/{n}] finished already: {folder}", flush=True)
                continue
            if os.path.isfile(os.path.join(folder, "last.pt")) and not os.path.isfile(os.path.join(folder, "results.json")):
                argv = argv + ["--resume"]
            print(f"[{done}/{n}] start: {shlex.join(argv)}", flush=True)
            err = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty child never blocks on it
            proc = subprocess.Popen([sys.executable, *argv[1:]], env=env, stderr=err,
                                    stdout=subprocess.DEVNULL if jobs > 1 else None)
            running.append((folder, proc, err, time.time()))
        for item in list(running):
            folder, proc, err, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            err.seek(0)
            tail = err.read()[-2000:]
            err.close()
            if proc.returncode:
                failed += 1
                print(f"failed (exit {proc.returncode}) after {time.time() - t0:.0f} s: {folder}\n{tail}",
                      file=sys.stderr, flush=True)
            else:
                print(f"finished in {time.time() - t0:.0f} s: {folder}", flush=True)
        time.sleep(0.5)
    return failed


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=list(STUDIES), default="main", help="which study (default: main)")
    p.add_argument("--data", nargs="+", choices=list(DATASETS), default=["cifar10", "svhn", "tinyimagenet"],
                   help="data sets (default: cifar10 svhn tinyimagenet)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models (default: all)")
    p.add_argument("--methods", nargs="+", metavar="ROW",
                   help="rows of the study to include (default: all of it; for main: AT PART TRADES PART-T MART PART-M)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds (default: 1 2 3)")
    p.add_argument("--root", help="folder of the run folders (default: runs/<study>)")
    p.add_argument("--tag", help="names the folder of runs with the flags after --; default: made from those flags")
    p.add_argument("--run", action="store_true", help="run the commands (skipping finished runs, resuming "
                                                        "interrupted ones)")
    p.add_argument("--jobs", type=int, default=1, help="with --run: runs at a time (default: 1)")
    args = p.parse_args(argv)
    rows = args.methods or DEFAULT_ROWS.get(args.study) or list(STUDIES[args.study])
    unknown = [r for r in rows if r not in STUDIES[args.study]]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)} for study {args.study}; choose from "
                f"{', '.join(STUDIES[args.study])}")
    if "--out" in extra or "--seed" in extra:
        p.error("--out and --seed are set by the grid; pass --root and --seeds instead")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    cmds = commands(args.study, args.data, args.models, rows, args.seeds, args.root or f"runs/{args.study}", extra,
                    args.tag)
    for _, c in cmds:
        print(shlex.join(c))
    if args.run:
        return 1 if run_all(cmds, args.jobs) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
