"""A run folder's job record and locks, and the processes that own its run: what every executor
(tools/executors.py) and the grid's view of a run folder (tools/run_state.py) share.

job.json says which executor runs the run, its job id, node, the process that owns the run (pid and start time, so
that a pid reused by another process is not taken for the run's), start times, requeues, state (queued, running,
requeued, finished, failed, interrupted), exit code and the last line of the run's error output. It is read and
written under the folder's job lock (.job.lock), under which a grid also decides to start the run. Whether the
process a record names still runs the run is told from /proc (`process_alive`), and whether a run is in progress on
this machine from the run folder's own lock (.lock, held by the training: `utils.runs.lock_holder`).
"""
import fcntl
import json
import os
import re
import signal
import socket
import time
from contextlib import contextmanager
from typing import Callable

JOB_FILE = "job.json"
LIVE_STATES = ("queued", "running", "requeued")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# the type of each field the executors write into job.json (a record with another type is not one of ours)
JOB_FIELDS = {"state": str, "executor": str, "job_id": str, "node": str, "log": str, "error": str, "submitted": str,
              "ended": str, "requeued": str, "requeues": int, "tasks": int, "exit_code": (int, type(None)),
              "starts": list, "command": list, "pid": int, "pid_start": str}
# job.json's states: LIVE_STATES, then finished, failed, and interrupted (stopped by a signal, or found dead without a
# record by tools/run_state.py `settle`: the same command resumes it)
INTERRUPTED_CODES = (128 + signal.SIGHUP, 128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGHUP, -signal.SIGINT,
                     -signal.SIGTERM)


def end_state(code: int | None) -> str:
    """The job.json state of a run that ended with exit code `code`: finished, interrupted (a stop by SIGINT, SIGTERM
    or SIGHUP, which keeps its last.pt: the same command resumes it) or failed."""
    return "finished" if code == 0 else "interrupted" if code in INTERRUPTED_CODES else "failed"


def read_job(folder: str) -> dict:
    """The run folder's job record, or {} when it has none, or an unreadable or damaged one (not a JSON object, or
    a field of another type than JOB_FIELDS gives)."""
    from utils.runs import open_regular
    try:
        with open_regular(os.path.join(folder, JOB_FILE)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(rec, dict) or any(k in rec and (not isinstance(rec[k], t) or isinstance(rec[k], bool))
                                        for k, t in JOB_FIELDS.items()):
        return {}
    return rec


_HELD: dict = {}  # run folder (absolute) -> fd of its job lock held by this process (`job_lock`)


@contextmanager
def job_lock(folder: str):
    """Hold the run folder's job lock (.job.lock; the folder is created): whoever holds it may read and write
    job.json, and decide to start the run, without another grid or task doing the same meanwhile. Re-entrant within
    this process. Raises UsageError when the folder cannot be written."""
    from utils.errors import UsageError
    key = os.path.abspath(folder)
    if key in _HELD:
        yield
        return
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, ".job.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UsageError(f"cannot write the run folder {folder} ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = fd
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)


def update_job(folder: str, edit: Callable[[dict], None] | None = None, new: bool = False, **fields) -> dict:
    """Change the run folder's job.json under its job lock (the grid and a job's task both write it): start from an
    empty record when `new`, set `fields`, then call `edit(record)`. Written atomically; returns the record.
    Raises UsageError when the folder cannot be written."""
    from utils.errors import UsageError
    from utils.runs import save_json
    with job_lock(folder):
        rec = {} if new else read_job(folder)
        rec.update(fields)
        if edit:
            edit(rec)
        try:
            save_json(os.path.join(folder, JOB_FILE), rec)
        except OSError as e:
            raise UsageError(f"cannot write {os.path.join(folder, JOB_FILE)} ({e.strerror})") from None
        return rec


def with_resume(folder: str, argv: list) -> list:
    """The command, plus --resume when the folder holds an interrupted run (last.pt without results.json)."""
    interrupted = os.path.isfile(os.path.join(folder, "last.pt")) and \
        not os.path.isfile(os.path.join(folder, "results.json"))
    return list(argv) + ["--resume"] if interrupted else list(argv)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie. A process whose main thread has ended
    while others still run (a multi-threaded process being killed shows this for a moment, and still holds its
    files and locks) is alive until its last thread has ended."""
    if pid <= 0:
        return False
    if _thread_runs(pid, str(pid)):
        return True
    try:
        return any(_thread_runs(pid, tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:  # no such process, or no /proc
        pass
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True


def _thread_runs(pid: int, tid: str) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """Which process `pid` is: '<boot id>:<start time in clock ticks since boot>' from /proc, a value no other
    process of this machine ever shares (a pid is reused, its start time is not); None when no such live process
    exists or this system has no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, OverflowError, ValueError):
        return None
    return None if fields[0] in ("Z", "X") else f"{_boot_id()}:{fields[19]}"


def _cmdline(pid: int) -> list | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf8", "replace") for a in f.read().split(b"\0")[:-1]]
    except (OSError, OverflowError, ValueError):
        return None


def process_alive(rec: dict) -> bool | None:
    """Whether the process that a job record names (its pid, else a job id that is a pid) still runs the run: the
    same process, not another that got its pid since. Told by the start time job.json records (`process_start`);
    for a record without one (an older grid's), by the process's command line (the run's command, or submitit's
    job process). None when the record names another machine."""
    pid = rec.get("pid")
    if pid is None:
        if not re.fullmatch(r"[0-9]{1,12}", str(rec.get("job_id", ""))):
            return False  # never started (a submission that did not happen), or not a pid
        pid = int(rec["job_id"])
    if rec.get("node", socket.gethostname()) != socket.gethostname():
        return None
    if not pid_alive(pid):
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no /proc: a live pid is all this system can tell
    if rec.get("pid_start"):
        return process_start(pid) == rec["pid_start"]
    args = _cmdline(pid)
    if args is None:
        return False
    command = rec.get("command")
    if isinstance(command, list) and len(command) > 1 and args[1:] == [str(a) for a in command[1:]]:
        return True
    return rec.get("executor") == "local" and any("submitit" in a for a in args)


def last_line(text: str) -> str:
    """The last non-blank line of a run's error output (at most 500 characters), as job.json records it."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1][:500] if lines else ""
