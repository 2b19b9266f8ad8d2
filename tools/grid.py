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
until it is complete; --jobs N runs N at a time (each with OMP_NUM_THREADS set to share the cores, and its own
GPU: --gpus, default every visible one). --executor local / slurm run the same grid through submitit (on this
machine / as one Slurm job array; tools/executors.py); --status lists every run of the grid and its state.
"""
import os
import signal
import sys

if __name__ == "__main__":  # run as a file (python tools/grid.py): the repository root is not on the path yet
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for _sig in (signal.SIGINT, signal.SIGTERM):  # during start-up there is nothing to stop: one line, and out
        signal.signal(_sig, lambda signum, frame: (os.write(2, b"\nstopped during start-up\n"), os._exit(128 + signum)))
import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402

from models import MODELS  # noqa: E402
from tools.executors import (EXECUTORS, LIVE_STATES, Options, Signalled, lock_holder, owner, read_job,  # noqa: E402
                             script_variant, slurm_script, visible_gpus)
from utils import ROOT  # noqa: E402
from utils.data import DATASETS  # noqa: E402
from utils.methods import METHODS, labels  # noqa: E402

SCRIPT = {v: m.script for v, m in METHODS.items()}


def _main_rows():
    rows = {}
    for label, (variant, attack, masked, _) in labels().items():
        flags = (["--attack", attack] if attack != METHODS[variant].attacks[0] else []) + ([] if masked else ["--no-mask"])
        rows[label] = (SCRIPT[variant], flags)
    return rows


def _figure1_rows():
    # every row without warm-up, as the figure trains: --warm-up 0 also lets --epochs go below the default warm-up
    rows = {"AT-uniform": (SCRIPT["part"], ["--no-mask", "--warm-up", "0", "--eval-attacks", "natural", "pgd20"])}
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


def shown_path(path: str) -> str:
    """`path` relative to the current folder when it lies below it, else absolute: a printed command runs as pasted."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else os.path.abspath(path)


def interpreter() -> str:
    """The Python running this tool, as the printed commands give it."""
    return shown_path(sys.executable)


TAG_CHARS = "A-Za-z0-9.=_-"  # what a folder-name tag holds, made from flags or given with --tag


def override_tag(extra) -> str:
    """A folder-name tag for the flags passed to every command: '--width 16 --epochs=12' -> 'width16-epochs12'."""
    def clean(value):
        return re.sub(f"[^{TAG_CHARS}]", "_", value)
    parts, skip = [], False
    for a in extra:
        if a.startswith("--"):
            name, _, value = a.partition("=")
            skip = name in NOT_IN_TAG
            if not skip:
                parts.append(name[2:] + clean(value))
        elif not skip:
            parts[-1] += clean(a)
    return "-".join(parts)


def folder_tag(value: str) -> str:
    """--tag: one folder-name part (letters, digits and . = _ -, as the tags made from flags), or "" for none."""
    if value and not re.fullmatch(f"[{TAG_CHARS}]+", value) or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"{value!r} is not one folder-name part (letters, digits, . = _ - only)")
    return value


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
                    out.append((folder, [interpreter(), shown_path(os.path.join(ROOT, script)), "--data", d,
                                         "--model", m, *flags, "--seed", str(s), "--out", folder, *extra]))
    return out


def finished_as_asked(folder: str, argv) -> bool:
    """Whether `folder` holds a finished run of exactly this command's settings (and data file)."""
    from utils.config import check_saved, effective, parse, script_constants
    from utils.errors import UsageError
    from utils.records import read_record
    try:
        done = check_saved(read_record(folder).get("config"), folder)
        variant = script_variant(argv[1])
        asked, _ = parse(variant, script_constants(argv[1]), argv[2:])
    except (OSError, ValueError, KeyError, UsageError):
        return False  # run it: the run itself says what is wrong
    same = {k: v for k, v in effective(asked).items() if k != "data_fingerprint"} == \
        {k: v for k, v in effective(done).items() if k != "data_fingerprint"}
    return same and isinstance(done.get("data_dir"), str) and \
        os.path.abspath(asked["data_dir"]) == os.path.abspath(done["data_dir"])


def run_all(cmds, jobs=1, executor="subprocess", opts=None) -> int:
    """Run the grid's commands with `executor` (tools/executors.py): skip runs finished with the same settings and
    runs another live job or process owns; the executor resumes interrupted ones. Returns the exit code: 0, 1 when
    a run failed (a folder that holds a run of other settings fails: the run refuses it), 2 when a submission
    failed, 130 / 143 after Ctrl-C / SIGTERM."""
    opts = opts or Options(jobs=jobs)
    todo, n = [], len(cmds)
    for i, (folder, argv) in enumerate(cmds, 1):
        label = f"[{i}/{n}]"
        if finished_as_asked(folder, argv):
            print(f"{label} finished already: {folder}", flush=True)
            continue
        why = owner(folder)
        if why:
            print(f"{label} not started: {folder}: {why}", flush=True)
            continue
        todo.append((folder, argv, label))
    return EXECUTORS[executor].run(todo, opts)


# ----------------------------------------------------------------------------------------------------
# what the flags after -- may set
# ----------------------------------------------------------------------------------------------------
OWNED = {"data": "the grid's --data says which", "model": "the grid's --models says which",
         "seed": "the grid's --seeds says which", "out": "the grid's --root and --tag say where",
         "resume": "--run resumes interrupted runs by itself", "eval_only": "the grid trains",
         "overwrite": "--run resumes interrupted runs and skips finished ones; to start a run over, delete its folder"}


def check_extra(study: str, rows, extra) -> str | None:
    """Why the flags after -- cannot go to every command of these rows, or None. They must parse for each row's
    script (no prefixes: the scripts' parser takes whole flag names only), must not set what the grid sets per
    command, and must not set what any row of the study sets (that would train every row alike)."""
    from utils.config import build_parser, explicit_flags, parse, script_constants
    from utils.errors import UsageError
    given, varies, names = set(), {}, {}
    for row, (script, flags) in STUDIES[study].items():
        variant = script_variant(script)
        constants = script_constants(os.path.join(ROOT, script))
        parser = build_parser(variant, constants)
        names.update({a.dest: "/".join(a.option_strings) for a in parser.flags})
        for dest in explicit_flags(parser, flags):
            varies.setdefault(dest, []).append(row)
        if row in rows:
            try:
                given |= explicit_flags(build_parser(variant, constants), extra)
            except UsageError as e:
                return f"the flags after -- do not fit {script}: {str(e).removesuffix(' (see --help)')}"
            try:  # the row's own flags with them: a contradiction (e.g. --as-published --mask-source cam) stops here
                parse(variant, constants, [*flags, *extra])
            except UsageError as e:
                return f"row {row} with the flags after --: {str(e).removesuffix(' (see --help)')}"
    for dest in sorted(given):
        if dest in OWNED:
            return f"{names[dest]} is set by the grid for each command: {OWNED[dest]}"
        if dest in varies:
            return (f"{names[dest]} is what the rows of study {study} set ({', '.join(varies[dest])}): passed "
                    f"after --, every row would train alike under different names; drop it (or run one command "
                    f"yourself)")
    return None


# ----------------------------------------------------------------------------------------------------
# --status
# ----------------------------------------------------------------------------------------------------
def _progress(folder: str) -> str:
    from utils.runs import read_metrics
    rows = read_metrics(os.path.join(folder, "metrics.csv"))
    try:
        with open(os.path.join(folder, "config.json")) as f:
            epochs = json.load(f).get("epochs", "?")
    except (OSError, ValueError, AttributeError):
        return "starting"
    return f"epoch {rows[-1]['epoch'] if rows else 0}/{epochs} done"


def _last_log_line(folder: str) -> str:
    try:
        with open(os.path.join(folder, "log.txt"), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 4000))
            lines = [l.strip() for l in f.read().decode("utf8", "replace").splitlines() if l.strip()]
        return lines[-1] if lines else "(log.txt is empty)"
    except OSError:
        return "(no log.txt)"


def run_status(folder: str, argv) -> tuple[str, str]:
    """(state, detail) of one run of the grid: finished, running, queued, requeued (Nx), failed (with the cause),
    interrupted (resumable) or not started; from the run folder, its job.json and whether its job still lives."""
    if finished_as_asked(folder, argv):
        return "finished", ""
    rec = read_job(folder)
    where = f"{rec.get('executor', '?')} job {rec.get('job_id', '?')}" + \
        (f" on {rec['node']}" if rec.get("node") else "")
    requeues = rec.get("requeues", 0)
    holder = lock_holder(folder)
    if rec.get("state") in LIVE_STATES:
        alive = EXECUTORS[rec["executor"]].alive(rec) if rec.get("executor") in EXECUTORS else None
        if alive or holder:
            if rec["state"] == "queued":
                return "queued", where
            state = f"requeued ({requeues}x)" if rec["state"] == "requeued" else "running"
            again = f", requeued {requeues}x" if requeues and state == "running" else ""
            return state, f"{where}, {_progress(folder)}{again}"
        if alive is None:
            return f"{rec['state']}?", f"{where}: its state cannot be checked from here"
        return "failed", f"{where} ended without a record ({_progress(folder)}); last line of log.txt: " \
                         f"{_last_log_line(folder)}"
    if holder:
        return "running", f"process {holder}, {_progress(folder)}"
    if rec.get("state") == "failed":
        return "failed", f"exit {rec.get('exit_code', '?')}: {rec.get('error') or _last_log_line(folder)} ({where})"
    if os.path.isfile(os.path.join(folder, "results.json")):
        return "failed", "holds a finished run of other settings (--run stops on it with a message)"
    if os.path.isfile(os.path.join(folder, "last.pt")):
        return "interrupted", f"{_progress(folder)}; --run resumes it"
    if os.path.isfile(os.path.join(folder, "config.json")):
        return "interrupted", "no epoch finished; --run starts it again"
    return "not started", ""


def show_status(cmds) -> int:
    counts = {}
    for folder, argv in cmds:
        state, detail = run_status(folder, argv)
        kind = re.sub(r" \(\d+x\)$|\?$", "", state)
        counts[kind] = counts.get(kind, 0) + 1
        print(f"{state:<14} {folder}" + (f"  {detail}" if detail else ""))
    order = ("finished", "running", "queued", "requeued", "failed", "interrupted", "not started")
    print(f"{len(cmds)} runs: " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts))
    return 0


# ----------------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """Whole flag names only; an error is one line (exit 2)."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _slurm_extra(text: str):
    key, _, value = text.partition("=")
    key = key.lstrip("-")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option), got {text!r}")
    return key, value if value else True


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


# --slurm-X flag -> (submitit SlurmExecutor parameter, type, help)
SLURM_FLAGS = {
    "partition": ("partition", str, "partition (queue); unset: the cluster's default"),
    "time": ("time", "positive", "time limit of each run's job in minutes (default 1440); a run that reaches it is "
                                 "requeued and resumes"),
    "gpus_per_node": ("gpus_per_node", "count", "GPUs per node; one task (DDP process) per GPU (unset: none asked "
                                                "for, one task)"),
    "nodes": ("nodes", "positive", "nodes per run, for multi-node DDP (unset: Slurm's default, one)"),
    "cpus_per_task": ("cpus_per_task", "positive", "CPUs per task (unset: the cluster's default)"),
    "mem_gb": ("mem", "mem", "memory per node in GB, fractions allowed (unset: the cluster's default)"),
    "account": ("account", str, "account to charge (unset: your default account)"),
    "qos": ("qos", str, "quality of service (unset: the cluster's default)"),
    "constraint": ("constraint", str, "node features, e.g. a100 (unset: any node)"),
    "array_parallelism": ("array_parallelism", "positive", "runs of the array at a time (default: all)"),
}


def _gpu_id(text: str) -> str:
    """A CUDA_VISIBLE_DEVICES value (an index, a GPU-/MIG- UUID, or a comma list of them): no blanks, no empty part."""
    if not re.fullmatch(r"[A-Za-z0-9_./:-]+(,[A-Za-z0-9_./:-]+)*", text):
        raise argparse.ArgumentTypeError(f"expected a GPU index or UUID as CUDA_VISIBLE_DEVICES takes it, got {text!r}")
    return text


def build_parser():
    from utils.config import SPEC
    from utils.cli import COUNT, POSITIVE, nonempty, number
    types = {"positive": POSITIVE, "count": COUNT, "mem": number(float, 0, lo_open=True)}
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=list(STUDIES), default="main", help="which study (default: main)")
    p.add_argument("--data", nargs="+", choices=list(DATASETS), default=["cifar10", "svhn", "tinyimagenet"],
                   help="data sets, each with every model, row and seed (default: cifar10 svhn tinyimagenet)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="models (default: all)")
    p.add_argument("--methods", nargs="+", metavar="ROW",
                   help="rows of the study to include (default: all of it; for main: AT PART TRADES PART-T MART PART-M)")
    p.add_argument("--seeds", nargs="+", type=SPEC["SEED"].kwargs["type"], default=[1, 2, 3],
                   help="training seeds, one run each (default: 1 2 3)")
    p.add_argument("--root", type=nonempty, help="folder of the run folders (default: runs/<study>)")
    p.add_argument("--tag", type=folder_tag,
                   help="the <tag> of the runs' folder <root>/<data>-<model>-<tag> (default: made from the flags "
                        "after --; \"\" drops it)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--run", action="store_true", help="run the commands (skipping finished runs and runs another "
                                                         "live job owns, resuming interrupted ones)")
    what.add_argument("--status", action="store_true", help="list every run of the grid and its state (finished, "
                      "running, queued, requeued, failed with its cause, interrupted, not started)")
    e = p.add_argument_group("where the runs execute (tools/executors.py)")
    e.add_argument("--executor", choices=list(EXECUTORS), default="subprocess",
                   help="subprocess: child processes here (default); local: submitit on this machine; slurm: one "
                        "Slurm job array through submitit (without --run: print its sbatch script)")
    e.add_argument("--jobs", type=int, default=1, metavar="N", help="subprocess: runs at a time, at least 1 (default: 1)")
    e.add_argument("--gpus", nargs="+", metavar="ID", type=_gpu_id, help="subprocess: the GPUs the jobs share, one per job at a time "
                   "(CUDA_VISIBLE_DEVICES values; default with --jobs > 1: every visible GPU)")
    e.add_argument("--tasks-per-node", type=POSITIVE, metavar="T", help="local, slurm: DDP processes per node of "
                   "each run (default: --slurm-gpus-per-node, else 1)")
    e.add_argument("--wait", action="store_true", help="local, slurm: wait for the submitted runs to end")
    s = p.add_argument_group("Slurm (with --executor slurm)")
    for name, (_, kind, text) in SLURM_FLAGS.items():
        s.add_argument("--slurm-" + name.replace("_", "-"), dest="slurm_" + name, type=types.get(kind, kind), help=text,
                       metavar={"positive": "N", "count": "N", "mem": "GB"}.get(kind, "NAME"))
    s.add_argument("--slurm-extra", nargs="+", type=_slurm_extra, metavar="KEY=VALUE",
                   help="other sbatch options, e.g. mail-type=END requeue")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = build_parser()
    args = p.parse_args(argv)
    rows = args.methods or DEFAULT_ROWS.get(args.study) or list(STUDIES[args.study])
    unknown = [r for r in rows if r not in STUDIES[args.study]]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)} for study {args.study}; choose from "
                f"{', '.join(STUDIES[args.study])}")
    for flag, values in (("--data", args.data), ("--models", args.models), ("--methods", rows),
                         ("--seeds", args.seeds), ("--gpus", args.gpus or [])):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            p.error(f"{flag} names {', '.join(twice)} more than once")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    why = check_extra(args.study, rows, extra)
    if why:
        p.error(why)
    slurm_given = [f"--slurm-{k.replace('_', '-')}" for k in (*SLURM_FLAGS, "extra") if getattr(args, f"slurm_{k}")]
    if slurm_given and args.executor != "slurm":
        p.error(f"{' '.join(slurm_given)} only apply with --executor slurm")
    if args.executor != "subprocess" and (args.jobs > 1 or args.gpus):
        instead = "--slurm-array-parallelism, --slurm-gpus-per-node" if args.executor == "slurm" else \
            "every run starts at once"
        p.error(f"--jobs and --gpus are for --executor subprocess ({args.executor}: {instead})")
    if args.executor == "subprocess" and (args.tasks_per_node or args.wait):
        p.error("--tasks-per-node and --wait are for --executor local or slurm (subprocess runs one process per run "
                "and waits; use torchrun for several)")
    if args.run and EXECUTORS[args.executor].missing():
        p.error(f"--executor {args.executor} {EXECUTORS[args.executor].missing()}")
    if args.run and args.gpus and all(g.isdigit() for g in args.gpus) and "CUDA_VISIBLE_DEVICES" not in os.environ:
        seen = visible_gpus()
        if any(int(g) >= len(seen) for g in args.gpus):
            p.error(f"--gpus {' '.join(args.gpus)}: this machine shows {len(seen)} GPU(s)"
                    + (f" (0 to {len(seen) - 1})" if seen else ""))
    root = args.root or f"runs/{args.study}"
    if args.run:
        from utils.errors import UsageError
        from utils.runs import check_writable
        try:
            check_writable(root, "--root")  # else every run would start and fail alike
        except UsageError as e:
            p.error(str(e))
    cmds = commands(args.study, args.data, args.models, rows, args.seeds, root, extra, args.tag)
    if args.status:
        return show_status(cmds)
    slurm = {param: getattr(args, f"slurm_{name}") for name, (param, _, _) in SLURM_FLAGS.items()
             if getattr(args, f"slurm_{name}") is not None}
    if "mem" in slurm:
        slurm["mem"] = _mem(slurm["mem"])
    if args.slurm_extra:
        slurm["additional_parameters"] = dict(args.slurm_extra)
    opts = Options(jobs=args.jobs, gpus=args.gpus, tasks_per_node=args.tasks_per_node,
                   slurm={"job_name": f"part-{args.study}", **slurm}, wait=args.wait,
                   folder=os.path.join(root, "submitit", "%j"))
    for i, (_, c) in enumerate(cmds):
        print((f"CUDA_VISIBLE_DEVICES={args.gpus[i % len(args.gpus)]} " if args.gpus else "") + shlex.join(c))
    if args.run:
        return run_all(cmds, executor=args.executor, opts=opts)
    if args.executor == "slurm":
        why = EXECUTORS["local"].missing()
        print(f"# --run submits these {len(cmds)} runs as one Slurm job array; the sbatch script submitit writes for "
              f"it (a dry run):")
        print(f"# (cannot render it: --executor slurm {why})" if why else slurm_script(opts, len(cmds)))
    return 0


def _stop(signum, frame):
    raise Signalled(signum)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)
    try:
        code = main()
        sys.stdout.flush()
        sys.exit(code)
    except (KeyboardInterrupt, Signalled) as e:
        print("\n" + ("terminated (SIGTERM)" if isinstance(e, Signalled) else "interrupted (Ctrl-C)"), file=sys.stderr)
        sys.exit(128 + (e.signum if isinstance(e, Signalled) else signal.SIGINT))
    except BrokenPipeError:  # whoever read the commands stopped (| head): quiet, as a process killed by SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
