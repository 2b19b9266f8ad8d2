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
whose folder holds its results (of these settings) is skipped and one that holds last.pt is resumed, so a grid can
be run again until it is complete; a run that a live job or process owns is left to it, and one whose folder holds
what the run would refuse (a run of other settings, a damaged results.json, files of another run) is not started:
the grid says what to do. Before the first run, what every run needs (its packages, the batch split) is checked
once. Each run is decided again, under its folder's job lock, right before it starts, so two grids on one root
neither start a run twice nor restart a finished one. --jobs N runs N at a time (each with OMP_NUM_THREADS set to
share the cores, and its own GPU: --gpus, default every visible one). --executor local / slurm run the same grid
through submitit (on this machine / as one Slurm job array; tools/executors.py); --status lists every run of the
grid and its state, decided from what is true now (a job killed without a record is interrupted, not running).
"""
import os
import signal
import sys

if __name__ == "__main__":  # run as a file (python tools/grid.py): the repository root is not on the path yet
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for _sig in (signal.SIGINT, signal.SIGTERM):  # during start-up there is nothing to stop: one line, and out
        signal.signal(_sig, lambda signum, frame: (os.write(2, b"\nstopped during start-up\n"), os._exit(128 + signum)))
import argparse  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
from dataclasses import replace  # noqa: E402

from models import MODELS  # noqa: E402
from tools.executors import EXECUTORS, Options, world_size  # noqa: E402
from tools.gpus import check_gpus  # noqa: E402
from tools.run_state import blocker, preflight, show_status  # noqa: E402
from tools.slurm import slurm_script  # noqa: E402
from tools.studies import DEFAULT_ROWS, STUDIES, check_extra, commands, folder_tag  # noqa: E402
from utils.data import DATASETS  # noqa: E402


def run_all(cmds, jobs=1, executor="subprocess", opts=None) -> int:
    """Run the grid's commands with `executor` (tools/executors.py): skip runs finished with the same settings and
    runs another live job or process owns, refuse (with what to do) runs whose folder holds what the run would
    refuse; check what every remaining run needs (`preflight`), then start them; the executor checks each again
    under its lock right before it starts it, and resumes interrupted ones. Returns the exit code: 0, 1 when a run
    failed or was refused, 2 when a submission failed, 130 / 143 after Ctrl-C / SIGTERM. Raises UsageError when a
    run cannot start (a missing package)."""
    opts = opts or Options(jobs=jobs)
    counts = {}

    def check(folder, argv):
        why = blocker(folder, argv)
        if why:
            counts[why[0]] = counts.get(why[0], 0) + 1
        return why

    todo, n = [], len(cmds)
    for i, (folder, argv) in enumerate(cmds, 1):
        label = f"[{i}/{n}]"
        why = check(folder, argv)
        if why:
            print(f"{label} {why[1]}", file=sys.stderr if why[0] == "refused" else sys.stdout, flush=True)
            continue
        todo.append((folder, argv, label))
    preflight(todo, world_size(executor, opts))
    code = EXECUTORS[executor].run(todo, replace(opts, check=check))
    if counts.get("owned"):
        print(f"{counts['owned']} run(s) left to the jobs or processes that own them (above): --status follows them; "
              f"once they end, the same command completes the grid", flush=True)
    return code or (1 if counts.get("refused") else 0)


# ----------------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------------
# sbatch options that a --slurm-X flag (checked) or the grid itself sets: not through --slurm-extra
SLURM_SET = {"partition": "--slurm-partition", "time": "--slurm-time", "gpus-per-node": "--slurm-gpus-per-node",
             "nodes": "--slurm-nodes", "cpus-per-task": "--slurm-cpus-per-task", "mem": "--slurm-mem-gb",
             "account": "--slurm-account", "qos": "--slurm-qos", "constraint": "--slurm-constraint",
             "array": "--slurm-array-parallelism", "ntasks-per-node": "--tasks-per-node", "job-name": "the grid",
             "output": "the grid", "error": "the grid", "signal": "the grid", "open-mode": "the grid"}
# amounts of a resource that Slurm reads as "no limit" or "all of the node" when zero
SLURM_NONZERO = ("mem-per-cpu", "mem-per-gpu", "time-min", "gpus", "gpus-per-task", "cpus-per-gpu", "ntasks",
                 "ntasks-per-gpu", "gres")


def _slurm_word(text: str) -> str:
    """A text Slurm flag's value: not empty (sbatch would read '--partition=' as no value, or refuse it), one word
    (each value is one #SBATCH line: a blank or line break would cut it or add another)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise argparse.ArgumentTypeError(f"must be one word without blanks or line breaks, got {text!r}")
    return text


def _slurm_extra(text: str):
    key, eq, value = text.partition("=")
    key = key.lstrip("-")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (an sbatch option), got {text!r}")
    name = key.replace("_", "-")
    if name in SLURM_SET:
        flag = SLURM_SET[name]
        raise argparse.ArgumentTypeError(f"{name} is set by {flag}" + (" (checked there)" if flag.startswith("--")
                                                                      else "") + ", not through --slurm-extra")
    if eq and re.search(r"[\s\x00-\x1f\x7f]", value) or (eq and not value):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be one word without blanks or line breaks "
                                         f"(KEY alone for an option without one)")
    if name in SLURM_NONZERO and re.fullmatch(r"(\w+:)*0+(\.0*)?[KMGT]?B?", value, re.I):
        raise argparse.ArgumentTypeError(f"{name}={value}: Slurm reads a zero {name} as no limit or all of the node; "
                                         f"give the amount the runs need")
    return key, value if value else True


MAX16 = 2**16 - 3  # Slurm keeps CPUs and tasks per node in 16 bits, with 0xfffe / 0xffff meaning unset / unlimited
MAX32 = 2**31 - 1


def _mem_gb(text: str) -> float:
    """--slurm-mem-gb: more than 0 and at least 1 MB once written (--mem=0 is all of a node's memory to Slurm)."""
    from utils.cli import number
    gb = number(float, 0, 2**40, lo_open=True)(text)
    if int(gb * 1024) < 1:
        raise argparse.ArgumentTypeError(f"{text} GB is less than 1 MB, which would be written --mem=0MB: Slurm reads "
                                         f"that as all of a node's memory; give at least 1/1024")
    return gb


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


# --slurm-X flag -> (submitit SlurmExecutor parameter, type, help); every value is one Slurm reads as meant (no 0
# that means unlimited, no number past the field Slurm keeps it in, no empty or multi-word text)
SLURM_FLAGS = {
    "partition": ("partition", "word", "partition (queue); unset: the cluster's default"),
    "time": ("time", (1, MAX32), "time limit of each run's job in minutes (default 1440); a run that reaches it is "
                                 "requeued and resumes"),
    "gpus_per_node": ("gpus_per_node", (0, MAX16), "GPUs per node; one task (DDP process) per GPU (unset: none asked "
                                                   "for, one task)"),
    "nodes": ("nodes", (1, MAX32), "nodes per run, for multi-node DDP (unset: Slurm's default, one)"),
    "cpus_per_task": ("cpus_per_task", (1, MAX16), "CPUs per task (unset: the cluster's default)"),
    "mem_gb": ("mem", "mem", "memory per node in GB, fractions allowed, at least 1/1024 (1 MB) "
                               "(unset: the cluster's default)"),
    "account": ("account", "word", "account to charge (unset: your default account)"),
    "qos": ("qos", "word", "quality of service (unset: the cluster's default)"),
    "constraint": ("constraint", "word", "node features, e.g. a100 (unset: any node)"),
    "array_parallelism": ("array_parallelism", (1, MAX32), "runs of the array at a time (default: all)"),
}


def _gpu_id(text: str) -> str:
    """One GPU as CUDA_VISIBLE_DEVICES names it: an index or a GPU-/MIG- UUID (checked against the machine with
    --run: gpus.check_gpus). Not -1 (no GPU), and not a comma list: a job is one process on one GPU."""
    one = r"[0-9]+|(?:GPU|MIG)-[A-Za-z0-9_./:-]+"
    if re.fullmatch(f"(?:{one})(?:,(?:{one}))+", text):
        raise argparse.ArgumentTypeError(f"{text!r} names several GPUs for one job, which would use only the first; "
                                         f"a job runs one process on one GPU: give them apart (--gpus "
                                         f"{' '.join(text.split(','))})")
    if not re.fullmatch(one, text):
        raise argparse.ArgumentTypeError(f"expected a GPU index or UUID as CUDA_VISIBLE_DEVICES takes it (0, 1, ..., "
                                         f"GPU-..., MIG-...), got {text!r}")
    return text


def build_parser():
    from utils.flag_spec import SPEC
    from utils.cli import Parser, nonempty, number
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
                      "running, queued, requeued, failed with its cause, interrupted, damaged, not started)")
    e = p.add_argument_group("where the runs execute (tools/executors.py)")
    e.add_argument("--executor", choices=list(EXECUTORS), default="subprocess",
                   help="subprocess: child processes here (default); local: submitit on this machine; slurm: one "
                        "Slurm job array through submitit (without --run: print its sbatch script)")
    e.add_argument("--jobs", type=int, default=1, metavar="N", help="subprocess: runs at a time, at least 1 (default: 1)")
    e.add_argument("--gpus", nargs="+", metavar="ID", type=_gpu_id,
                   help="subprocess: the GPUs the jobs share, one per job at a time (an index or UUID each, as "
                        "CUDA_VISIBLE_DEVICES names one; with --run, one this machine has; default with --jobs > 1: "
                        "every visible GPU)")
    e.add_argument("--tasks-per-node", type=number(int, 1, MAX16), metavar="T",
                   help="local, slurm: DDP processes per node of each run (default: --slurm-gpus-per-node, else 1)")
    e.add_argument("--wait", action="store_true", help="local, slurm, with --run: wait for the submitted runs to end")
    s = p.add_argument_group("Slurm (with --executor slurm)")
    for name, (_, kind, text) in SLURM_FLAGS.items():
        kind_type = _slurm_word if kind == "word" else _mem_gb if kind == "mem" else number(int, *kind)
        s.add_argument("--slurm-" + name.replace("_", "-"), dest="slurm_" + name, type=kind_type, help=text,
                       metavar={"word": "NAME", "mem": "GB"}.get(kind, "N"))
    s.add_argument("--slurm-extra", nargs="+", type=_slurm_extra, metavar="KEY=VALUE",
                   help="other sbatch options, e.g. mail-type=END requeue")
    return p


def grid(argv) -> int:
    """The tool: check the flags, then print the commands, --status, or --run them. Raises UsageError (one line)
    for bad input."""
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
    if args.wait and not args.run:
        p.error("--wait applies only with --run (it waits for the runs --run submits)")
    slurm_given = [f"--slurm-{k.replace('_', '-')}" for k in (*SLURM_FLAGS, "extra")
                   if getattr(args, f"slurm_{k}") is not None]
    if slurm_given and args.executor != "slurm":
        p.error(f"{' '.join(slurm_given)} only apply with --executor slurm")
    if args.executor != "subprocess" and (args.jobs > 1 or args.gpus):
        instead = "--slurm-array-parallelism, --slurm-gpus-per-node" if args.executor == "slurm" else \
            "every run starts at once"
        p.error(f"--jobs and --gpus are for --executor subprocess ({args.executor}: {instead})")
    if args.executor == "subprocess" and (args.tasks_per_node or args.wait):
        p.error("--tasks-per-node and --wait are for --executor local or slurm (subprocess runs one process per run "
                "and waits; use torchrun for several)")
    idle = [flag for flag, given in (("--jobs", args.jobs > 1), ("--executor local", args.executor == "local"),
                                     ("--tasks-per-node", args.tasks_per_node and args.executor == "local")) if given]
    if idle and not (args.run or args.status):  # printed, the commands run as pasted; slurm prints its script
        p.error(f"{' and '.join(idle)} only apply with --run (or --status): without either, the commands are only "
                f"printed")
    if args.run and EXECUTORS[args.executor].missing():
        p.error(f"--executor {args.executor} {EXECUTORS[args.executor].missing()}")
    if args.run and args.gpus:
        why = check_gpus(args.gpus)  # the GPUs of this machine (printed commands may be for another)
        if why:
            p.error(why)
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


def main(argv=None) -> int:
    """The entry point (utils.errors.entry_point): the exit code of `grid`, 2 with one line for bad input, 130 / 143
    with one line on Ctrl-C / SIGTERM. Printed commands piped into a reader that stops early (| head) end it quietly
    with 141, as a process killed by SIGPIPE."""
    from utils.errors import entry_point
    argv = sys.argv[1:] if argv is None else list(argv)

    def body():
        try:
            code = grid(argv)
            sys.stdout.flush()
            return code
        except BrokenPipeError:  # whoever read the commands stopped: quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE

    return entry_point(body)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
