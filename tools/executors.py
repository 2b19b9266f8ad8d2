"""Where the grid's runs execute. tools/grid.py says what to run (a list of run folders and their commands); an
executor says where. Each is one entry of EXECUTORS; another scheduler is another entry.

  subprocess  this machine, --jobs N runs at a time as child processes (each job its own GPU), waiting for them
  local       this machine, through submitit's LocalExecutor: the code path of `slurm`, to try it without a cluster
  slurm       a Slurm cluster, through submitit: the grid's runs as the tasks of one job array; returns at once

Every run folder gets job.json (tools/jobs.py): the executor, job id, node, the process that owns the run, start
times, requeues, state, exit code and the last line of the run's error output, written under the folder's job lock,
under which a grid also decides to start the run (Options.check); a record whose job ended without saying so
(kill -9) is made true again by the next look at it (tools/run_state.py: `settle`), which asks the executor whether
the job still lives (Executor.alive). Under submitit a run is a Checkpointable task (tools/grid_task.py): on the
preemption or time-limit signal (USR2) it is requeued and resumes from its last.pt, which is exact. The GPUs of the
subprocess executor's jobs are in tools/gpus.py, the Slurm specifics of the slurm executor in tools/slurm.py.
"""
import io
import os
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

from tools.gpus import job_gpus
from tools.grid_task import GridTask
from tools.jobs import (end_state, job_lock, last_line, now, process_alive, process_start, read_job, update_job,
                        with_resume)
from tools.slurm import job_python, slurm_alive, slurm_parameters
from utils.errors import Terminated

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


def _record(folder: str, **fields) -> None:
    """update_job for the subprocess executor, whose children must not be left behind by a failed write: the
    run itself reports a folder it cannot write."""
    from utils.errors import UsageError
    try:
        update_job(folder, **fields)
    except UsageError as e:
        print(f"warning: {e}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# subprocess: child processes on this machine
# ----------------------------------------------------------------------------------------------------
class Signalled(BaseException):
    """SIGTERM or SIGHUP to the grid, raised in its main thread."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


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
                        **({"error": last_line(tail)} if code else {}))
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
                ended=now(), error=last_line(err.read()))
        err.close()


def subprocess_alive(rec: dict) -> bool | None:
    return process_alive(rec)


# ----------------------------------------------------------------------------------------------------
# submitit: local and slurm
# ----------------------------------------------------------------------------------------------------
def world_size(name: str, opts: Options) -> int:
    """The processes each run of the grid has with executor `name`: one here, else the tasks per node times the
    nodes (slurm_parameters), among which a run splits its batch."""
    if name == "subprocess":
        return 1
    if name == "local":
        return opts.tasks_per_node or 1
    params = slurm_parameters(opts, 1)
    return params["ntasks_per_node"] * (params.get("nodes") or 1)


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
        error = last_line(str(e)) or type(e).__name__
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
