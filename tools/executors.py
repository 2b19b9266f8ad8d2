"""Where the grid's runs execute. tools/grid.py says what to run (a list of run folders and their commands); an
executor says where. Each is one entry of EXECUTORS; another scheduler is another entry.

  subprocess  this machine, --jobs N runs at a time as child processes (each job its own GPU), waiting for them
  local       this machine, through submitit's LocalExecutor: the code path of `slurm`, to try it without a cluster
  slurm       a Slurm cluster, through submitit: the grid's runs as the tasks of one job array; returns at once

Every run folder gets job.json: the executor, job id, node, the process that owns the run (pid and start time, so
that a pid reused by another process is not taken for the run's), start times, requeues, state (queued, running,
requeued, finished, failed, interrupted), exit code and the last line of the run's error output. It is written under
the folder's job lock (.job.lock), under which a grid also decides to start the run; a record whose job ended without
saying so (kill -9) is made true again by the next look at it (tools/run_state.py: `settle`). Under submitit a run is a
Checkpointable task: on the preemption or time-limit signal (USR2) it is requeued and resumes from its last.pt,
which is exact; a run that fails (bad input, a crash) is not requeued. A task of several processes (--tasks-per-node,
--slurm-nodes) exports the distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from
submitit's job environment, and the training engine's DDP path runs as under torchrun.
"""
import fcntl
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from typing import Callable

from utils import ROOT
from utils.errors import Terminated

try:
    from submitit.helpers import Checkpointable
except ImportError:  # only the local and slurm executors need submitit; they say so when it is missing
    Checkpointable = object

JOB_FILE = "job.json"
LIVE_STATES = ("queued", "running", "requeued")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # the local executor ends a job after this long; runs need no limit here
MAX_TIMEOUTS = 20  # time-limit requeues of one run before submitit gives up (preemptions do not count)
STOP_WAIT_S = 60  # after Ctrl-C / SIGTERM, how long the grid waits for its children before it kills them


@dataclass
class Options:
    """How to run: --jobs and --gpus (subprocess), tasks per node and Slurm settings (local, slurm)."""
    jobs: int = 1
    gpus: list | None = None
    tasks_per_node: int | None = None
    slurm: dict = field(default_factory=dict)  # submitit's SlurmExecutor parameters
    wait: bool = False
    folder: str = "runs/submitit"  # submitit's job files and logs (%j: the job id)
    # (folder, argv) -> None when the run may start now, else (kind, message): kind "finished" (done already),
    # "owned" (another live job or process runs it) or "refused" (it must not start: counted as a failure). Called
    # under the run folder's job lock right before each run is started or submitted (tools/run_state.py: `blocker`).
    check: Callable | None = None


# ----------------------------------------------------------------------------------------------------
# job.json and the run folder
# ----------------------------------------------------------------------------------------------------
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
    try:
        with open(os.path.join(folder, JOB_FILE)) as f:
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


def _record(folder: str, **fields) -> None:
    """update_job for the subprocess executor, whose children must not be left behind by a failed write: the
    run itself reports a folder it cannot write."""
    from utils.errors import UsageError
    try:
        update_job(folder, **fields)
    except UsageError as e:
        print(f"warning: {e}", file=sys.stderr, flush=True)


def with_resume(folder: str, argv: list) -> list:
    """The command, plus --resume when the folder holds an interrupted run (last.pt without results.json)."""
    interrupted = os.path.isfile(os.path.join(folder, "last.pt")) and \
        not os.path.isfile(os.path.join(folder, "results.json"))
    return list(argv) + ["--resume"] if interrupted else list(argv)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True


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


def lock_holder(folder: str) -> int | None:
    """The process holding the run folder's lock (a run in progress on this machine), from /proc/locks; None when
    nobody holds it or this system cannot tell. Reads only: taking the lock could make a starting run fail."""
    try:
        st = os.stat(os.path.join(folder, ".lock"))
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        dev_inode = parts[5].split(":")
        if len(dev_inode) == 3 and int(dev_inode[2]) == st.st_ino and \
                (int(dev_inode[0], 16), int(dev_inode[1], 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
            return int(parts[4])
    return None


# ----------------------------------------------------------------------------------------------------
# subprocess: child processes on this machine
# ----------------------------------------------------------------------------------------------------
class Signalled(BaseException):
    """SIGTERM or SIGHUP to the grid, raised in its main thread."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def visible_gpus() -> list:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them: its entries when set, else 0..N-1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_uuids() -> list:
    """The UUIDs of this machine's GPUs and MIG devices as CUDA_VISIBLE_DEVICES takes them (GPU-..., MIG-...), from
    nvidia-smi -L; [] when it cannot tell."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"UUID: ((?:GPU|MIG)-[^)\s]+)", out)


def check_gpus(gpus) -> str | None:
    """Why the --gpus values cannot be given to the jobs here, or None: each must name a GPU this process may use,
    as `visible_gpus` names them (the CUDA_VISIBLE_DEVICES entries when it is set; else an index 0..N-1, a UUID
    nvidia-smi lists, or a prefix that names one alone), so that no job runs on a GPU that does not exist."""
    seen = visible_gpus()
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES") is not None
    uuids = [] if restricted else gpu_uuids()
    for g in gpus:
        if not seen:  # the runs would train on the CPU
            return f"--gpus {g}: this process sees no GPU" + \
                (" (CUDA_VISIBLE_DEVICES is empty)" if restricted else " (torch.cuda finds none)")
        if g in seen or (g.startswith(("GPU-", "MIG-")) and sum(u.startswith(g) for u in uuids) == 1):
            continue
        if restricted:
            return (f"--gpus {g}: this process may use only the GPUs CUDA_VISIBLE_DEVICES names "
                    f"({', '.join(seen)}); give those")
        if g.isdigit():
            return f"--gpus {g}: this machine shows {len(seen)} GPU(s) (0 to {len(seen) - 1})"
        return (f"--gpus {g}: no GPU of this machine has that UUID (nvidia-smi -L lists them"
                + (f": {', '.join(uuids)})" if uuids else ")"))
    return None


def job_gpus(opts: Options) -> list:
    """The GPU of each job slot: --gpus, or every visible GPU when several jobs share this machine."""
    if opts.gpus:
        return list(opts.gpus)
    return visible_gpus() if opts.jobs > 1 else []


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    return lines[-1][:500] if lines else ""


def _blocked(opts: Options, folder: str, argv: list, label: str) -> str | None:
    """The kind of reason opts.check gives to keep the run from starting now (None: it may start), said in one line
    (a refusal on stderr). Call it under the run's job lock."""
    why = opts.check(folder, argv) if opts.check else None
    if why:
        kind, message = why
        print(f"{label} {message}", file=sys.stderr if kind == "refused" else sys.stdout, flush=True)
        return kind
    return None


def run_subprocess(runs: list, opts: Options) -> int:
    """Run (folder, argv, label) triples here, opts.jobs at a time, each with OMP_NUM_THREADS sharing the cores
    and, with GPUs, CUDA_VISIBLE_DEVICES = the least busy of job_gpus(opts). Each run is checked again (opts.check)
    and started under its job lock, and job.json records the child (pid and start time), so that another grid on the
    same runs neither starts it twice nor restarts one that has just finished. Returns 0, 1 when a run failed or was
    refused, or 130 / 143 after Ctrl-C / SIGTERM (SIGHUP: 129), which stop every child (its lock released, last.pt
    kept)."""
    from utils.errors import UsageError
    env = dict(os.environ)
    if opts.jobs > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // opts.jobs)))
    load = {g: 0 for g in job_gpus(opts)}
    pending, running, failed = list(runs), [], 0

    def on_signal(signum, frame):
        raise Signalled(signum)

    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                **{s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}}
    try:
        while pending or running:
            while pending and len(running) < opts.jobs:
                folder, argv, label = pending.pop(0)
                try:
                    with job_lock(folder):  # nobody else decides about this run until its child is recorded
                        kind = _blocked(opts, folder, argv, label)
                        if kind:
                            failed += kind == "refused"
                            continue
                        argv = with_resume(folder, argv)
                        child_env, gpu = env, None
                        if load:
                            gpu = min(load, key=load.get)
                            load[gpu] += 1
                            child_env = dict(env, CUDA_VISIBLE_DEVICES=gpu)
                        print(f"{label} start: {'' if gpu is None else f'CUDA_VISIBLE_DEVICES={gpu} '}"
                              f"{shlex.join(argv)}", flush=True)
                        err = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty child never blocks on it
                        # a session of its own: a signal reaches the child once, from the grid, which then waits
                        proc = subprocess.Popen([sys.executable, *argv[1:]], env=child_env, stderr=err,
                                                stdout=subprocess.DEVNULL if opts.jobs > 1 else None,
                                                start_new_session=True)
                        running.append((folder, proc, err, time.time(), gpu))
                        start = process_start(proc.pid)
                        _record(folder, new=True, executor="subprocess", job_id=str(proc.pid), pid=proc.pid,
                                node=socket.gethostname(), state="running", starts=[now()], requeues=0, command=argv,
                                **({"pid_start": start} if start else {}), **({"gpu": gpu} if gpu is not None else {}))
                except UsageError as e:  # its folder cannot be created or written: nothing started
                    failed += 1
                    print(f"{label} failed: {e}", file=sys.stderr, flush=True)
            for item in list(running):
                folder, proc, err, t0, gpu = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if gpu is not None:
                    load[gpu] -= 1
                err.seek(0)
                tail = err.read()[-2000:]
                err.close()
                code = proc.returncode
                _record(folder, state=end_state(code), exit_code=code, ended=now(),
                        **({"error": _last_line(tail)} if code else {}))
                if code:
                    failed += 1
                    print(f"failed (exit {code}) after {time.time() - t0:.0f} s: {folder}\n{tail}", file=sys.stderr,
                          flush=True)
                else:
                    print(f"finished in {time.time() - t0:.0f} s: {folder}", flush=True)
            time.sleep(0.5)
    except (KeyboardInterrupt, Signalled, Terminated) as e:
        signum = e.signum if isinstance(e, Signalled) else signal.SIGTERM if isinstance(e, Terminated) else \
            signal.SIGINT
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not leave the children half-stopped
        _stop_children(running, signal.SIGTERM if signum == signal.SIGHUP else signum)
        what = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}.get(
            signum, f"stopped ({signal.Signals(signum).name})")
        print(f"\n{what}: stopped {len(running)} run(s), each keeping the epochs it finished; the same command "
              f"resumes them", file=sys.stderr, flush=True)
        return 128 + signum
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
    return 1 if failed else 0


def _stop_children(running: list, signum: int) -> None:
    """Send `signum` to each running child, wait for them to stop (SIGKILL after STOP_WAIT_S), record them as
    interrupted (the same command resumes them)."""
    for _, proc, _, _, _ in running:
        proc.send_signal(signum)
        proc.send_signal(signal.SIGCONT)  # a stopped child would otherwise never act on it
    deadline = time.time() + STOP_WAIT_S
    for folder, proc, err, _, _ in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err.seek(0)
        _record(folder, state="finished" if proc.returncode == 0 else "interrupted", exit_code=proc.returncode,
                ended=now(), error=_last_line(err.read()))
        err.close()


def subprocess_alive(rec: dict) -> bool | None:
    return process_alive(rec)


# ----------------------------------------------------------------------------------------------------
# submitit: local and slurm
# ----------------------------------------------------------------------------------------------------
class _Tee:
    """A text stream that writes through to `stream` and keeps the tail of what was written."""

    def __init__(self, stream):
        self.stream, self.tail = stream, ""

    def write(self, s):
        self.tail = (self.tail + s)[-4000:]
        return self.stream.write(s)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class RunFailed(RuntimeError):
    """A run of the grid ended with a non-zero exit code; the message is its last line of error output."""


class GridTask(Checkpointable):
    """One run of the grid as a submitit task: runs the training script's entry point in this process (each task
    of a multi-process job is one DDP rank) and records the job in job.json. Checkpointable: on the preemption or
    time-limit signal submitit calls `checkpoint`, which counts the requeue and resubmits this same task; the
    requeued task resumes from last.pt. A failed run raises RunFailed, so it is not requeued."""

    def __init__(self, folder: str, argv: list, cwd: str, executor: str):
        self.folder, self.argv, self.cwd, self.executor = os.path.join(cwd, folder), list(argv), cwd, executor

    def __call__(self) -> int:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment
        os.chdir(self.cwd)
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            if env.num_nodes == 1:
                os.environ["MASTER_ADDR"] = "127.0.0.1"  # as torchrun on one machine: no name to resolve
        rank0 = env.global_rank == 0
        argv = with_resume(self.folder, self.argv)
        if rank0:
            update_job(self.folder, self._started, executor=self.executor, job_id=env.job_id, node=env.hostname,
                       tasks=env.num_tasks, log=str(env.paths.stderr))
        from tools.studies import script_variant
        from utils.config import script_constants
        from utils.entry import main
        script = os.path.join(ROOT, os.path.basename(self.argv[1]))
        variant = script_variant(script)
        saved_argv, saved_err = sys.argv, sys.stderr
        sys.argv, sys.stderr = [self.argv[1], *argv[2:]], _Tee(sys.stderr)  # the record names the script's command
        try:
            code = main(variant, script_constants(script), argv[2:], handle_sigterm=False)
            error = _last_line(sys.stderr.tail)
        except Exception as e:  # a crash: recorded, then raised so that submitit marks the job failed
            code, error = 1, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if rank0:
                update_job(self.folder, state="failed", exit_code=code, ended=now(), error=error)
            raise
        finally:
            sys.argv, sys.stderr = saved_argv, saved_err
        if rank0:
            update_job(self.folder, state=end_state(code), exit_code=code, ended=now(),
                       **({"error": error} if code else {}))
        if code:
            raise RunFailed(f"exit {code}: {error}")
        return code

    @staticmethod
    def _started(rec: dict) -> None:
        if rec.get("starts") and rec.get("state") != "requeued":  # requeued without us (a preemption, a node failure)
            rec["requeues"] = rec.get("requeues", 0) + 1
        rec.setdefault("starts", []).append(now())
        rec["state"] = "running"

    def checkpoint(self, *args, **kwargs):
        """Called by submitit (rank 0) on the preemption / time-limit signal, before it requeues the job."""
        update_job(self.folder, lambda r: r.update(requeues=r.get("requeues", 0) + 1), state="requeued",
                   requeued=now())
        return super().checkpoint(*args, **kwargs)


def world_size(name: str, opts: Options) -> int:
    """The processes each run of the grid has with executor `name`: one here, else the tasks per node times the
    nodes (slurm_parameters), among which a run splits its batch."""
    if name == "subprocess":
        return 1
    if name == "local":
        return opts.tasks_per_node or 1
    params = slurm_parameters(opts, 1)
    return params["ntasks_per_node"] * (params.get("nodes") or 1)


def job_python() -> str:
    """How a job starts Python: this interpreter, with the repository on its path (to unpickle the task)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return f"env PYTHONPATH={shlex.quote(path)} {shlex.quote(sys.executable)}"


def slurm_parameters(opts: Options, n_runs: int) -> dict:
    """submitit's SlurmExecutor parameters for the array: opts.slurm, one task per GPU unless told otherwise."""
    params = {"job_name": "part-grid", "time": 24 * 60, **opts.slurm}
    params["ntasks_per_node"] = opts.tasks_per_node or params.get("gpus_per_node") or 1
    params.setdefault("array_parallelism", n_runs)
    return params


def slurm_script(opts: Options, n_runs: int) -> str:
    """The sbatch script submitit writes for this array, made without Slurm (a dry run)."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string  # submitit's own writer (private, but what it runs)
    except ImportError as e:
        return f"# (this version of submitit cannot write it without Slurm: {e})"
    folder = os.path.abspath(opts.folder)
    command = " ".join([job_python(), "-u -m submitit.core._submit", shlex.quote(folder)])
    return _make_sbatch_string(command=command, folder=folder, map_count=n_runs if n_runs > 1 else None,
                               **slurm_parameters(opts, n_runs))


def _make_executor(name: str, opts: Options, n_runs: int):
    import submitit
    if name == "slurm":
        ex = submitit.SlurmExecutor(folder=opts.folder, max_num_timeout=MAX_TIMEOUTS, python=job_python())
        ex.update_parameters(**slurm_parameters(opts, n_runs))
        return ex
    ex = submitit.LocalExecutor(folder=opts.folder, max_num_timeout=MAX_TIMEOUTS, python=job_python())
    import torch
    tasks = opts.tasks_per_node or 1
    ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, tasks_per_node=tasks,
                         gpus_per_node=min(tasks, torch.cuda.device_count()) if torch.cuda.is_available() else 0)
    return ex


@contextmanager
def _environment_defaults(**values):
    """Set the environment variables not set yet (a local job inherits them), and restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if k not in os.environ})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_submitit(name: str, runs: list, opts: Options) -> int:
    """Submit the runs as submitit jobs (slurm: one array); return at once with 0 (1 when a run was refused, 2 when
    the submission fails), or with opts.wait wait for them: 0, 1 when a run failed, 130 on Ctrl-C. Each run is
    checked again (opts.check) and recorded as queued by this grid (its pid) under its job lock, so that another
    grid does not submit it too; the job's own id and process replace the grid's once submitted."""
    from utils.errors import UsageError
    cwd, me, host = os.getcwd(), os.getpid(), socket.gethostname()
    todo, refused = [], 0
    try:
        for folder, argv, label in runs:
            with job_lock(folder):
                kind = _blocked(opts, folder, argv, label)
                if kind:
                    refused += kind == "refused"
                    continue
                update_job(folder, new=True, executor=name, state="queued", submitted=now(), requeues=0, starts=[],
                           command=argv, pid=me, pid_start=process_start(me) or "", node=host)
            todo.append((folder, argv, label))
    except UsageError as e:
        for folder, _, _ in todo:
            update_job(folder, state="failed", error="not submitted")
        print(f"error: {e}; nothing was submitted", file=sys.stderr)
        return 2
    if not todo:
        return 1 if refused else 0
    tasks = [GridTask(folder, argv, cwd, name) for folder, argv, _ in todo]
    threads = max(1, (os.cpu_count() or 1) // (len(todo) * (opts.tasks_per_node or 1)))
    try:  # submitit prints sbatch's error output itself; the one line below says it
        with _environment_defaults(**({"OMP_NUM_THREADS": str(threads)} if name == "local" else {})), \
                redirect_stderr(io.StringIO()):
            ex = _make_executor(name, opts, len(todo))
            with ex.batch():
                jobs = [ex.submit(t) for t in tasks]
    except Exception as e:  # sbatch refused the job (a partition, account or time limit it does not accept)
        error = _last_line(str(e)) or type(e).__name__
        for folder, _, _ in todo:
            update_job(folder, state="failed", error=f"submission failed: {error}")
        print(f"error: the {name} submission failed: {error}", file=sys.stderr)
        return 2
    for job, (folder, _, label) in zip(jobs, todo):
        process = {}  # slurm: squeue says whether the job lives, and its task records the node
        if name == "local":  # the job's process (submitit's, which runs its tasks) owns the run from now on
            pid = int(job.job_id)
            process = {"pid": pid, "pid_start": process_start(pid) or "", "node": host}

        def edit(r, process=process):
            for k in ("pid", "pid_start") + (("node",) if r.get("state") == "queued" else ()):  # the grid's
                r.pop(k, None)
            r.update(process)

        update_job(folder, edit, job_id=str(job.job_id), log=str(job.paths.stderr))
        print(f"{label} submitted: {name} job {job.job_id}: {folder} (log: {job.paths.stderr})", flush=True)
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    logs = sorted({str(j.paths.folder) for j in jobs})
    where = logs[0] if len(logs) == 1 else f"{len(logs)} folders {os.path.commonpath(logs)}{os.sep}<job id>"
    then = "waiting for them (Ctrl-C stops waiting)" if opts.wait else \
        "watch them with the same command and --status instead of --run"
    print(f"submitted {len(jobs)} run(s) as {name} job(s) {' '.join(ids)}; logs in {where}; {then}", flush=True)
    code = _wait(name, jobs, todo) if opts.wait else 0
    return code or (1 if refused else 0)


def _wait(name: str, jobs: list, runs: list) -> int:
    left, failed = list(zip(jobs, runs)), 0
    try:
        while left:
            for item in list(left):
                job, (folder, _, _) = item
                if not job.done():
                    continue
                left.remove(item)
                rec = read_job(folder)
                if rec.get("state") == "finished":
                    print(f"finished: {folder}", flush=True)
                else:
                    failed += 1
                    print(f"failed (exit {rec.get('exit_code', '?')}): {folder}: {rec.get('error', '')}",
                          file=sys.stderr, flush=True)
            time.sleep(1)
    except (KeyboardInterrupt, Signalled, Terminated) as e:
        signum = e.signum if isinstance(e, Signalled) else signal.SIGTERM if isinstance(e, Terminated) else \
            signal.SIGINT
        what = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped ({signal.Signals(signum).name})"
        if name == "local":
            for job, _ in left:
                job.cancel()  # the job's tasks stop as on Ctrl-C, keeping last.pt
            print(f"\n{what}: stopped {len(left)} local job(s); the same command resumes them", file=sys.stderr)
        else:
            print(f"\n{what}: stopped waiting; the {len(left)} job(s) keep running (scancel stops them)",
                  file=sys.stderr)
        return 128 + signum
    return 1 if failed else 0


def local_alive(rec: dict) -> bool | None:
    return process_alive(rec)  # the job's process (submitit's, which runs its tasks), or the grid submitting it


def slurm_alive(rec: dict) -> bool | None:
    if not rec.get("job_id"):
        return process_alive(rec) if rec.get("pid") else False  # the grid submitting it, until sbatch answers
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(rec.get("job_id")), "-o", "%T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else (False if "Invalid job id" in out.stderr else None)


def _submitit_missing() -> str | None:
    import importlib.util
    return None if importlib.util.find_spec("submitit") else "needs the submitit package: pip install submitit"


def _slurm_missing() -> str | None:
    missing = [c for c in ("sbatch", "srun") if not shutil.which(c)]
    if missing:
        return (f"needs Slurm, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on this "
                f"machine's PATH: run the grid on the "
                f"cluster's login node (--executor local tries the same code path here)")
    return _submitit_missing()


@dataclass(frozen=True)
class Executor:
    run: Callable[[list, Options], int]  # (run folder, command, label) triples -> exit code
    alive: Callable[[dict], bool | None]  # a job.json record -> whether its job still lives (None: cannot tell)
    missing: Callable[[], str | None]  # why this executor cannot run here, or None
    waits: bool  # whether --run returns only when the runs have ended


EXECUTORS = {
    "subprocess": Executor(run_subprocess, subprocess_alive, lambda: None, waits=True),
    "local": Executor(lambda runs, opts: run_submitit("local", runs, opts), local_alive, _submitit_missing,
                      waits=False),
    "slurm": Executor(lambda runs, opts: run_submitit("slurm", runs, opts), slurm_alive, _slurm_missing,
                      waits=False),
}
