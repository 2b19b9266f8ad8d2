"""The GPUs of this machine as the grid's jobs get them: which ones this process may use, whether --gpus names
them, and the GPU of each job slot of the subprocess executor (tools/executors.py)."""
import os
import re
import shutil
import subprocess


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


def job_gpus(opts) -> list:
    """The GPU of each job slot: --gpus, or every visible GPU when several jobs share this machine (opts: the
    executors' Options)."""
    if opts.gpus:
        return list(opts.gpus)
    return visible_gpus() if opts.jobs > 1 else []
