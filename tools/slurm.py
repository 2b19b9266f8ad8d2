"""Slurm as the grid's slurm executor (tools/executors.py) uses it: submitit's SlurmExecutor parameters for the
grid's job array, its sbatch script written without Slurm (a dry run), how a job starts Python, and whether a Slurm
job still lives (squeue)."""
import os
import shlex
import shutil
import subprocess
import sys

from tools.jobs import process_alive
from utils import ROOT


def job_python() -> str:
    """How a job starts Python: this interpreter, with the repository on its path (to unpickle the task)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return f"env PYTHONPATH={shlex.quote(path)} {shlex.quote(sys.executable)}"


def slurm_parameters(opts, n_runs: int) -> dict:
    """submitit's SlurmExecutor parameters for the array: opts.slurm, one task per GPU unless told otherwise (opts:
    the executors' Options)."""
    params = {"job_name": "part-grid", "time": 24 * 60, **opts.slurm}
    params["ntasks_per_node"] = opts.tasks_per_node or params.get("gpus_per_node") or 1
    params.setdefault("array_parallelism", n_runs)
    return params


def slurm_script(opts, n_runs: int) -> str:
    """The sbatch script submitit writes for this array, made without Slurm (a dry run)."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string  # submitit's own writer (private, but what it runs)
    except ImportError as e:
        return f"# (this version of submitit cannot write it without Slurm: {e})"
    folder = os.path.abspath(opts.folder)
    command = " ".join([job_python(), "-u -m submitit.core._submit", shlex.quote(folder)])
    return _make_sbatch_string(command=command, folder=folder, map_count=n_runs if n_runs > 1 else None,
                               **slurm_parameters(opts, n_runs))


def slurm_alive(rec: dict) -> bool | None:
    """Whether the Slurm job a job record names still lives (squeue knows it); None when this machine cannot tell."""
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
