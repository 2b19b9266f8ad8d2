"""A run folder of the grid as the grid sees it, decided from what is true now: what its results.json says about
a command (finished with its settings, with other settings, damaged), what the folder holds that the run would refuse,
which live job or process owns the run (its job.json made true again first where its job ended without saying so:
`settle`), and so whether the grid may start the run (`blocker`, asked again by the executors under the run's job
lock); the checks every run makes before it starts, made once for the grid (`preflight`); and the state of each run
that --status lists.
"""
import functools
import json
import os
import re
import socket

from tools.executors import EXECUTORS
from tools.jobs import JOB_FILE, LIVE_STATES, now, read_job, update_job
from tools.studies import script_variant
from utils.runs import lock_holder


# ----------------------------------------------------------------------------------------------------
# what the run folder holds
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _asked(argv: tuple) -> dict:
    """The config a command of the grid asks for (its flags parsed as its script parses them)."""
    from utils.config import parse, script_constants
    return parse(script_variant(argv[1]), script_constants(argv[1]), list(argv[2:]))[0]


def _identity(cfg: dict) -> dict:
    from utils.identity import effective
    out = {k: v for k, v in effective(cfg).items() if k != "data_fingerprint"}
    out["seed"] = cfg.get("seed")  # a run folder holds one seed's run: another seed's record is no finished run
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
    from utils.config import check_saved
    from utils.errors import UsageError
    from utils.identity import training_differences
    from utils.runs import open_regular
    try:
        with open_regular(os.path.join(folder, "config.json")) as f:
            saved = check_saved(json.load(f), os.path.join(folder, "config.json"))
    except (OSError, ValueError, UsageError):
        return None
    asked = dict(_asked(tuple(argv)), data_fingerprint=saved.get("data_fingerprint"))  # the run checks the data
    diffs = training_differences(saved, asked, 0)
    return "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "") if diffs else None


def folder_problem(folder: str, argv, results: tuple | None = None) -> str | None:
    """Why this command must not run in its folder, as the grid runs it (it adds --resume to an interrupted run and
    nothing else), with what to do; None when it may. `results`: results_state's answer, when known."""
    from utils.errors import UsageError
    from utils.runs import check_writable
    if os.path.lexists(folder) and not os.path.isdir(folder):  # a file, or a link to nothing: the run would refuse it
        try:
            check_writable(folder, "--out", folder=True)
        except UsageError as e:
            return f"{e} (the grid writes this row's run there; --root or --tag choose another place)"
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


# ----------------------------------------------------------------------------------------------------
# who owns the run, and whether the grid may start it
# ----------------------------------------------------------------------------------------------------
def settle(folder: str) -> dict:
    """The run folder's job record, made true again where it claims a live state (queued, running, requeued) whose
    job has ended without saying so (the grid or the job was killed, a node failed): no process holds the run
    folder's lock and the executor says the job is gone. Such a record becomes 'finished' when the folder holds
    results.json, else 'interrupted' (the same command resumes it), and is written back where the folder can be
    written (only if nobody changed it meanwhile). Returns the record."""
    from utils.errors import UsageError
    rec = read_job(folder)
    if rec.get("state") not in LIVE_STATES or rec.get("executor") not in EXECUTORS or lock_holder(folder):
        return rec
    if EXECUTORS[rec["executor"]].alive(rec) is not False:
        return rec
    mark = {k: rec.get(k) for k in ("state", "job_id", "pid", "pid_start", "starts")}
    done = os.path.isfile(os.path.join(folder, "results.json"))
    change = {"state": "finished" if done else "interrupted", "exit_code": None, "ended": now(),
              **({} if done else {"error": f"{rec['executor']} job {rec.get('job_id', '?')} ended without a record "
                                           f"(the grid or the job was killed?)"})}

    def edit(r):
        if {k: r.get(k) for k in mark} == mark:
            r.update(change)

    try:
        return update_job(folder, edit)
    except UsageError:  # a folder that cannot be written: the truth, unrecorded
        return {**rec, **change}


def owner(folder: str) -> str | None:
    """Why the run in `folder` must not be started now (another live job or process owns it, and how to stop it),
    or None. A record of a job that has ended is settled (`settle`) on the way."""
    pid = lock_holder(folder)
    if pid:
        return (f"process {pid} is running it (it holds {os.path.join(folder, '.lock')}); wait for it, or stop it "
                f"(kill {pid}) and run the same command again")
    rec = settle(folder)
    if rec.get("state") in LIVE_STATES and rec.get("executor") in EXECUTORS:
        alive = EXECUTORS[rec["executor"]].alive(rec)
        what = f"{rec['executor']} job {rec.get('job_id', '?')}"
        stop = f"scancel {rec['job_id']}" if rec["executor"] == "slurm" and rec.get("job_id") else \
            f"kill {rec.get('pid') or rec.get('job_id')}"
        if alive:
            return f"{what} owns it ({rec['state']}); wait for it, or stop it ({stop}) and run the same command again"
        if alive is None:
            return (f"{what} may own it ({rec['state']}), which cannot be checked from {socket.gethostname()}; "
                    f"delete {os.path.join(folder, JOB_FILE)} to start it anyway")
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


# ----------------------------------------------------------------------------------------------------
# --status
# ----------------------------------------------------------------------------------------------------
def _progress(folder: str) -> str:
    from utils.metrics_csv import read_metrics
    from utils.runs import open_regular
    rows = read_metrics(os.path.join(folder, "metrics.csv"))
    try:
        with open_regular(os.path.join(folder, "config.json")) as f:
            epochs = json.load(f).get("epochs", "?")
    except (OSError, ValueError, AttributeError):
        return "starting"
    return f"epoch {rows[-1]['epoch'] if rows else 0}/{epochs} done"


def _last_log_line(folder: str) -> str:
    from utils.runs import open_regular
    try:
        with open_regular(os.path.join(folder, "log.txt"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4000))
            lines = [l.strip() for l in f.read().decode("utf8", "replace").splitlines() if l.strip()]
        return lines[-1] if lines else "(log.txt is empty)"
    except OSError:
        return "(no log.txt)"


def run_status(folder: str, argv) -> tuple[str, str]:
    """(state, detail) of one run of the grid: finished, running, queued, requeued (Nx), failed (with the cause), damaged,
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
