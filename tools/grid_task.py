"""One run of the grid as a submitit task (the local and slurm executors of tools/executors.py submit it): what
runs on the job's node. It runs the training script's entry point in the task's process, records the job in the run
folder's job.json, and is Checkpointable: on the preemption or time-limit signal (USR2) it is requeued and resumes
from its last.pt, which is exact; a run that fails (bad input, a crash) is not requeued. A task of several processes
(--tasks-per-node, --slurm-nodes) exports the distributed environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) from submitit's job environment, and the training engine's DDP path runs as under torchrun.
"""
import os
import sys

from tools.jobs import end_state, last_line, now, update_job, with_resume
from utils import ROOT

try:
    from submitit.helpers import Checkpointable
except ImportError:  # only the local and slurm executors need submitit; they say so when it is missing
    Checkpointable = object


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
            error = last_line(sys.stderr.tail)
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
