"""Device plumbing: the devices this code runs on (`device_name`, the --device flag's type), the processes of a
torchrun run (`setup_distributed`, `barrier`, `ranks_identical`), the device a process uses (`pick_device`), the
backend switches (`configure_backends`, `autocast`) and peak memory (`reset_peak_memory`, `peak_memory_mb`,
`peak_memory_unmeasured`)."""
import argparse
import os
import sys
import warnings
from contextlib import nullcontext

import torch

from .errors import UsageError


def usable_devices() -> list[str]:
    """The --device values this code runs on here: auto, cpu and, where CUDA is, cuda and cuda:0 .. cuda:N-1."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus else [])


def device_problem(name: str) -> str | None:
    """Why --device `name` cannot be used here, in one line that names the devices that can; None if it can. The
    code runs on the CPU and on CUDA GPUs: other torch devices (mps, meta, xla, ...) are refused."""
    usable = usable_devices()
    gpus = [d for d in usable if d.startswith("cuda:")]
    choices = "auto or cpu" if not gpus else \
        f"auto, cpu, cuda or {gpus[0]}" + (f" to {gpus[-1]}" if len(gpus) > 1 else "")
    if name in usable:
        return None
    try:
        d = torch.device(name)
    except (RuntimeError, ValueError):
        return f"{name!r} is not a device name; use {choices}"
    if d.type == "cpu":  # cpu:0 and the like
        return None
    if d.type == "cuda":
        why = "CUDA is not available here" if not gpus else f"only {len(gpus)} GPU(s) exist"
        return f"{name} asked for, but {why}; use {choices}"
    return f"{name} is not a device this code runs on (the CPU and CUDA GPUs); use {choices}"


def device_name(text: str) -> str:
    """The --device flag's type: auto, cpu, cuda or cuda:N of a GPU that is here (see `device_problem`)."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def setup_distributed(device: str):
    """(rank, world_size, local_rank) from the distributed environment: the variables torchrun sets (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which the grid's submitit executors also export from the
    job's environment. Initialises the process group (NCCL when the processes run on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise UsageError(f"WORLD_SIZE is {world} but {', '.join(missing)} not set: start the processes with torchrun "
                         f"(or the grid's local or slurm executor), which sets them")
    if device.startswith("cuda:"):
        raise UsageError(f"--device {device} would put every torchrun process on one GPU; use --device cuda "
                         f"(each process takes the GPU of its LOCAL_RANK)")
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if gpus:  # before any CUDA call: every rank stops with one line instead of rank N failing inside CUDA
        per_node, visible = int(os.environ.get("LOCAL_WORLD_SIZE", world)), torch.cuda.device_count()
        if max(per_node, local + 1) > visible:
            raise UsageError(f"torchrun started {per_node} processes on this node but only {visible} GPU(s) are "
                             f"visible; use --nproc-per-node {visible} (or fewer), or --device cpu")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if gpus else "gloo")
    return dist.get_rank(), world, local


def barrier(world: int):
    """Wait for every process of the run (nothing to wait for with one)."""
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def ranks_identical(model: torch.nn.Module) -> bool:
    """Whether every process holds bit-identical parameters (a hash of their bytes, gathered from all ranks)."""
    import hashlib

    import torch.distributed as dist
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    hashes = [None] * dist.get_world_size()
    dist.all_gather_object(hashes, h.hexdigest())
    return len(set(hashes)) == 1


def pick_device(name: str, local_rank: int) -> torch.device:
    """The torch device of --device `name` for the process of `local_rank` (auto: its GPU if CUDA is here)."""
    problem = device_problem(name)
    if problem:
        raise UsageError(f"--device {problem}")
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_backends(cfg: dict, device: torch.device) -> None:
    """The backend switches of a run: TF32 on CUDA as --tf32 says; with --deterministic, deterministic cuDNN and
    cuBLAS algorithms (the workspace variable set before the first cuBLAS call) and no autotuning, otherwise
    cuDNN autotuning on CUDA. Sets the process-wide switches every time, so a later run is not left with them."""
    deterministic = bool(cfg.get("deterministic"))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # torch flags the backward of adaptive_avg_pool2d on CUDA, whose 1x1 output (the models' global pooling)
        # takes the kernel without atomics: warn rather than stop, hide that one warning; the device check
        # (tools.device_check, section 2) is what shows the reruns are bit-identical
        warnings.filterwarnings("ignore", message=".*adaptive_avg_pool2d_backward_cuda.*")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = cfg["tf32"]
        torch.backends.cudnn.allow_tf32 = cfg["tf32"]


def autocast(cfg: dict, device: torch.device):
    """The bf16 autocast context with --amp bf16, else one that changes nothing."""
    if cfg.get("amp") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA runs it asynchronously): before a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mb` (on CUDA; a process's maximum RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_unmeasured(device: torch.device) -> str | None:
    """Why `peak_memory_mb` cannot measure the peak of a stretch of work on `device` (None on CUDA, where it can):
    its figure there is the process's maximum resident set size, which `reset_peak_memory` cannot reset."""
    if device.type == "cuda":
        return None
    return (f"not measurable on {device.type}: the figure is the process's maximum RSS, which never resets, so it "
            f"does not measure one epoch's peak")


def peak_memory_mb(device: torch.device) -> float:
    """MiB: on CUDA the peak of torch.cuda.max_memory_allocated on `device` since `reset_peak_memory`; elsewhere
    the process's maximum resident set size so far."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)
