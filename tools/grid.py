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
import functools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
from dataclasses import replace  # noqa: E402

from models import MODELS  # noqa: E402
from tools.executors import (EXECUTORS, LIVE_STATES, Options, check_gpus, lock_holder, owner,  # noqa: E402
                             script_variant, settle, slurm_script, world_size)
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


@functools.lru_cache(maxsize=4096)
def _asked(argv: tuple) -> dict:
    """The config a command of the grid asks for (its flags parsed as its script parses them)."""
    from utils.config import parse, script_constants
    return parse(script_variant(argv[1]), script_constants(argv[1]), list(argv[2:]))[0]


def _identity(cfg: dict) -> dict:
    from utils.config import effective
    out = {k: v for k, v in effective(cfg).items() if k != "data_fingerprint"}
    out["data_dir"] = os.path.abspath(cfg["data_dir"]) if isinstance(cfg.get("data_dir"), str) else None
    return out


def _differences(saved: dict, asked: dict, limit: int = 3) -> str:
    keys = [k for k in sorted(set(saved) | set(asked)) if saved.get(k) != asked.get(k)]
    text = "; ".join(f"{k}: {saved.get(k)!r} -> {asked.get(k)!r}" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def results_state(folder: str, argv) -> tuple[str | None, str]:
    """What the folder's results.json says about this command: ('finished', '') for a finished run of exactly its
    settings (and data file); ('other', what differs) for a finished run of other settings; ('damaged', why) for a
    file that cannot be read or is no record of a run (truncated, not JSON, no usable config); (None, '') when the
    folder holds no results.json."""
    from utils.config import check_saved
    from utils.errors import UsageError
    from utils.records import RecordError, read_record
    path = os.path.join(folder, "results.json")
    if not os.path.lexists(path):
        return None, ""
    try:
        done = check_saved(read_record(folder).get("config"), path)
    except RecordError as e:
        return "damaged", e.why
    except UsageError as e:
        return "damaged", str(e).removeprefix(f"{path}: ")
    saved, asked = _identity(done), _identity(_asked(tuple(argv)))
    return ("finished", "") if saved == asked else ("other", _differences(saved, asked))


def _config_state(folder: str, argv) -> str | None:
    """For a folder that holds an interrupted run (last.pt): what keeps --resume from continuing it with this
    command's settings, as its config.json records them (None: nothing, or no readable config.json to tell)."""
    from utils.config import check_saved, training_differences
    from utils.errors import UsageError
    try:
        with open(os.path.join(folder, "config.json")) as f:
            saved = check_saved(json.load(f), os.path.join(folder, "config.json"))
    except (OSError, ValueError, UsageError):
        return None
    asked = dict(_asked(tuple(argv)), data_fingerprint=saved.get("data_fingerprint"))  # the run checks the data
    diffs = training_differences(saved, asked, 0)
    return "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "") if diffs else None


def folder_problem(folder: str, argv, results: tuple | None = None) -> str | None:
    """Why this command must not run in its folder, as the grid runs it (it adds --resume to an interrupted run and
    nothing else), with what to do; None when it may. `results`: results_state's answer, when known."""
    kind, detail = results or results_state(folder, argv)
    move = "move that folder away (or delete it), or give another --root or --tag"
    if kind == "damaged":
        if os.path.isfile(os.path.join(folder, "last.pt")):
            return (f"its results.json is damaged ({detail}); delete it (rm {os.path.join(folder, 'results.json')}) "
                    f"and run the same command: it resumes the run from last.pt and evaluates it again")
        return f"its results.json is damaged ({detail}) and there is no last.pt to evaluate again; {move}"
    if kind == "other":
        return f"holds a finished run of other settings ({detail}); {move}"
    if kind == "finished":
        return None
    from utils.runs import holds_run
    if os.path.isfile(os.path.join(folder, "last.pt")):
        diffs = _config_state(folder, argv)
        return f"holds an interrupted run of other settings ({diffs}); {move}" if diffs else None
    files = holds_run(folder)
    if files:
        return f"holds files of another run ({', '.join(files[:4])}{', ...' if len(files) > 4 else ''}); {move}"
    return None


def blocker(folder: str, argv) -> tuple[str, str] | None:
    """Why the grid must not start this run now, as (kind, message): 'finished' (done already, with these
    settings), 'owned' (a live job or process runs it: `owner`) or 'refused' (its folder holds something the run
    would refuse, or damaged results: `folder_problem`, which says what to do); None when it may start. The
    executors ask again under the run's job lock right before they start it (Options.check)."""
    settle(folder)  # first: job.json is made true even for a run that finished on its own
    results = results_state(folder, argv)
    if results[0] == "finished":
        return "finished", f"finished already: {folder}"
    why = owner(folder)
    if why:
        return "owned", f"not started: {folder}: {why}"
    problem = folder_problem(folder, argv, results)
    if problem:
        return "refused", f"not started: {folder}: {problem}"
    return None


def preflight(todo, world: int) -> None:
    """The checks every run makes before it needs data or a model (utils.checks.check_inputs: its folder, the batch
    split over `world` processes, the packages its evaluation, CAM backend and logging need), made once for each
    run the grid is about to start: a package missing for the study stops the grid here, in one line, instead of
    every run failing alike. Raises UsageError."""
    from utils.checks import check_inputs
    from utils.errors import UsageError
    for folder, argv, label in todo:
        try:
            cfg = dict(_asked(tuple(argv)))
            cfg["resume"] = cfg.get("resume") or "last"  # the grid resumes what the folder holds (blocker checked it)
            check_inputs(cfg, world)
        except UsageError as e:
            raise UsageError(f"{label} {folder}: {e}; no run was started") from None


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
    damaged (its results.json), interrupted (resumable) or not started; decided from what is true now: its
    results.json, the process holding the run folder's lock, and its job.json, whose job must still live (a record
    whose job ended without saying so is settled first: `settle`)."""
    rec = settle(folder)  # first: job.json is made true even for a run that finished on its own
    results = results_state(folder, argv)
    if results[0] == "finished":
        return "finished", ""
    where = f"{rec.get('executor', '?')} job {rec.get('job_id', '?')}" + \
        (f" on {rec['node']}" if rec.get("node") else "")
    requeues = rec.get("requeues", 0)
    holder = lock_holder(folder)
    if rec.get("state") in LIVE_STATES:  # settle left it: its job lives, or cannot be checked from here
        alive = EXECUTORS[rec["executor"]].alive(rec) if rec.get("executor") in EXECUTORS else None
        if alive or holder:
            if rec["state"] == "queued":
                return "queued", where
            state = f"requeued ({requeues}x)" if rec["state"] == "requeued" else "running"
            again = f", requeued {requeues}x" if requeues and state == "running" else ""
            return state, f"{where}, {_progress(folder)}{again}"
        return f"{rec['state']}?", f"{where}: its state cannot be checked from here"
    if holder:
        return "running", f"process {holder}, {_progress(folder)}"
    problem = folder_problem(folder, argv, results)
    if problem:
        return ("damaged" if results[0] == "damaged" else "failed"), f"{problem} (--run does not start it)"
    if rec.get("state") == "failed":
        return "failed", f"exit {rec.get('exit_code', '?')}: {rec.get('error') or _last_log_line(folder)} ({where})"
    how = ""
    if rec.get("state") == "interrupted":
        how = f"stopped ({where}, exit {rec['exit_code']})" if rec.get("exit_code") is not None else \
            f"{rec.get('error') or where + ' ended without a record'}"
        how += f"; last line of log.txt: {_last_log_line(folder)}"
    if os.path.isfile(os.path.join(folder, "last.pt")):
        return "interrupted", f"{_progress(folder)}; --run resumes it" + (f"; {how}" if how else "")
    if os.path.isfile(os.path.join(folder, "config.json")) or how:
        return "interrupted", "no epoch finished; --run starts it again" + (f"; {how}" if how else "")
    return "not started", ""


def show_status(cmds) -> int:
    counts = {}
    for folder, argv in cmds:
        state, detail = run_status(folder, argv)
        kind = re.sub(r" \(\d+x\)$|\?$", "", state)
        counts[kind] = counts.get(kind, 0) + 1
        print(f"{state:<14} {folder}" + (f"  {detail}" if detail else ""))
    order = ("finished", "running", "queued", "requeued", "failed", "damaged", "interrupted", "not started")
    print(f"{len(cmds)} runs: " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts))
    return 0


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
    --run: executors.check_gpus). Not -1 (no GPU), and not a comma list: a job is one process on one GPU."""
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
    from utils.config import SPEC
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
                      "running, queued, requeued, failed with its cause, interrupted, not started)")
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
