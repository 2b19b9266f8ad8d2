"""A run folder: its guard and lock, logger, config, per-epoch metrics CSV, atomic checkpoints, JSON records."""
import errno
import fcntl
import json
import logging
import os
import pickle
import re
import random
import shutil
import stat
import sys
import tempfile

import numpy as np
import torch

from .errors import UsageError, out_of_memory

# what a run writes into its folder (--overwrite deletes exactly these)
RUN_FILES = ("config.json", "log.txt", "metrics.csv", "last.pt", "best.pt", "results.json", "results.md", "mask.png",
             "aa_log.txt", "per_image.npz")
RUN_PATTERN = re.compile(r"epoch_\d+\.pt|eval_.+\.(json|md)|eval_.+_per_image\.npz|eval_.+_aa_log\.txt")
START_FILES = ("config.json", "log.txt", "metrics.csv")  # what a start that never finished an epoch leaves
TMP_SUFFIX = re.compile(r"\.tmp\.\d+$")  # a temporary file left by a killed write
LOCK = ".lock"


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------
def open_regular(path: str, mode: str = "r", **kwargs):
    """open(path, mode, **kwargs) for reading, of a regular file only: a FIFO, device, socket or folder raises
    OSError (EINVAL) at once, where open() would block on a FIFO with no writer, or read a device without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, mode, **kwargs)  # closes fd itself when it fails


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path), fsync it, then rename it over `path`: a crash never leaves a half-written file,
    and a failed write (a full disk) removes its temporary file and leaves `path` as it was. A failed write
    raises OSError naming `path`, also where the writer reports it otherwise (torch.save raises RuntimeError) or
    names no file (a full disk fails a write or flush with no file name)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, RuntimeError) and out_of_memory(e) is None:
            reason = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
            raise OSError(errno.EIO, f"writing failed, is the disk full? ({reason})", path) from None
        if isinstance(e, OSError) and e.filename != path:
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
    atomic_write(path, write)


def save_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def save_npz(path: str, arrays: dict) -> None:
    """np.savez_compressed, atomically; `path` is written exactly as given (no .npz appended)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)


def save_checkpoint(path: str, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str) -> dict:
    """A checkpoint's content as a dict. Ours (and plain state dicts) load with weights_only=True; an older or
    foreign pickle falls back to a full load. Raises UsageError, naming the file, when it cannot be read."""
    if os.path.isdir(path):
        hint = f"; give its checkpoint, e.g. {os.path.join(path, 'last.pt')}" if \
            os.path.isfile(os.path.join(path, "last.pt")) else ""
        raise UsageError(f"{path} is a folder, not a checkpoint file{hint}")
    if not os.path.isfile(path):
        raise UsageError(f"no checkpoint at {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - unpickling damaged bytes raises almost any type (OverflowError, ...)
        if out_of_memory(e) and os.path.getsize(path) > 2**20:
            raise  # a real allocation failure on a sizeable file, not damage: entry_point reports it as such
        raise UsageError(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}); "
                         f"it is truncated, damaged or not a PyTorch checkpoint") from None
    if not isinstance(obj, dict):
        raise UsageError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


# ----------------------------------------------------------------------------------------------------
# RNG state, stored as plain tensors and lists so that checkpoints load with weights_only=True
# ----------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> str | None:
    """Restore what `rng_state` saved. The CUDA generators are restored for the GPUs both this machine and the
    saved state have; when their counts differ, returns a one-line note that exactness is not promised."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    else:  # checkpoints written before the RNG state was stored as tensors
        np.random.set_state(n)
        random.setstate(state["python"])
    saved = list(state.get("cuda") or [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(min(len(saved), here)):
        torch.cuda.set_rng_state(saved[i], i)
    if saved and len(saved) != here:
        return (f"the checkpoint holds the RNG state of {len(saved)} GPU(s), this machine has {here}: "
                f"{min(len(saved), here)} restored; a resume on another number of GPUs is not promised to be exact")
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# the folder
# ----------------------------------------------------------------------------------------------------
def _run_file(name: str) -> bool:
    return name in RUN_FILES or RUN_PATTERN.fullmatch(name) is not None


def holds_run(out: str) -> list[str]:
    """The files in `out` that a fresh run would delete (`clear_run`) and that are worth keeping: everything of
    a run or an --eval-only record but the start-up files and temporary files (empty: none)."""
    if not os.path.isdir(out):
        return []
    return sorted(f for f in os.listdir(out) if _run_file(f) and f not in START_FILES)


def same_folder(a: str, b: str) -> bool:
    """Whether two paths name one existing folder (also through links or a second mount of it)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_run_folder(path: str) -> bool:
    """Whether `path` is a training run's folder: it holds the run's config.json or a checkpoint of ours (a folder
    of a tool's outputs that happen to be named results.json or results.md is not)."""
    return os.path.isfile(os.path.join(path, "config.json")) or \
        any(f.endswith(".pt") and _run_file(f) for f in (os.listdir(path) if os.path.isdir(path) else ()))


def check_writable(path: str, flag: str, folder: bool = True) -> None:
    """Refuse, before any work, an output path (a folder, or a file when not `folder`) that cannot be written:
    an empty path, a file where a folder is wanted or the reverse (a file name ending in a separator included), a
    folder that is a link to nothing, a file that exists but is not a regular file
    (a device such as /dev/full or /dev/null, a pipe: the writers replace the file whole, see `atomic_write`),
    a path under a file, a file named as a run's own file (results.json, results.md, ...) in a run folder, or one
    whose nearest existing folder takes no new file (tried with an unnamed temporary file, which leaves nothing
    behind). Missing folders on the way are allowed: the writer creates them. Raises
    UsageError naming `flag`."""
    if not path:
        raise UsageError(f"{flag} is empty; give a {'folder' if folder else 'file name'}")
    full = os.path.abspath(path)
    if (os.path.isdir(full) or path.endswith(os.sep)) and not folder:
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not folder and os.path.exists(full) and not os.path.isfile(full):
        raise UsageError(f"{flag} {path} is not a regular file (a device, pipe or socket); give a file name")
    if os.path.exists(full) and not os.path.isdir(full) and folder:
        raise UsageError(f"{flag} {path} is a file, not a folder")
    if folder and os.path.islink(full) and not os.path.exists(full):
        raise UsageError(f"{flag} {path} is a link to {os.readlink(full)}, which does not exist; create that folder "
                         f"or remove the link")
    home, name = os.path.split(os.path.realpath(full))
    if not folder and (_run_file(name) or name in ("job.json", LOCK)) and is_run_folder(home):
        raise UsageError(f"{flag} {path} would replace the {name} of the run in {home}; write it elsewhere")
    parent = full if folder else os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path} lies under {parent}, which is a file")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create or write files in {parent} ({e.strerror}); choose another "
                         f"{flag}") from None


def check_outputs_apart(outputs, inputs) -> None:
    """Refuse, before anything is written, an output that is one of the files a tool reads or lies in one of the
    folders it reads (a run folder: writing there would overwrite or add to the run's own files). `outputs`:
    [(flag, path)]; `inputs`: the files and folders read. Paths are compared resolved (symlinks followed), and two
    outputs naming one file are refused too. Raises UsageError naming the flag, the path and what it would hit."""
    seen = {}
    for flag, path in outputs:
        out = os.path.realpath(path)
        if out in seen:
            raise UsageError(f"{seen[out]} and {flag} name one file, {out}: the second would overwrite the first")
        seen[out] = flag
        for src in inputs:
            real = os.path.realpath(src)
            if out == real:
                raise UsageError(f"{flag} {path} is {src}, which this command reads; write it elsewhere")
            if out.startswith(real.rstrip(os.sep) + os.sep):
                raise UsageError(f"{flag} {path} lies in {src}, a folder this command reads; write it elsewhere")


def check_out_path(out: str) -> None:
    """Refuse an --out that cannot be a writable folder (see `check_writable`)."""
    check_writable(out, "--out")


def clear_run(out: str) -> None:
    """Delete what a run wrote into `out` (its known files and tb/), leaving anything else alone."""
    for f in os.listdir(out):
        p = os.path.join(out, f)
        name = TMP_SUFFIX.sub("", f)
        if _run_file(name):
            os.remove(p)
        elif f == "tb" and os.path.isdir(p):
            shutil.rmtree(p)


def drop_later_files(out: str, epoch: int, resumed_from: str | None = None) -> list[str]:
    """When a run resumes from epoch `epoch` (the checkpoint `resumed_from`), remove what a later point of the
    trajectory it replaces wrote: epoch_M.pt for M > epoch, best.pt of a later epoch, the final record (with its
    per-image file, AutoAttack log and mask figure); and when `resumed_from` is another file than last.pt, make
    last.pt a copy of it, so that last.pt always holds the trajectory being continued. Returns the names removed
    or replaced."""
    gone = []
    last = os.path.join(out, "last.pt")
    if resumed_from and os.path.realpath(resumed_from) != os.path.realpath(last):  # first: a failed copy leaves all
        atomic_write(last, lambda tmp: shutil.copyfile(resumed_from, tmp))
        gone.append("last.pt")
    for f in sorted(os.listdir(out)):
        m = re.fullmatch(r"epoch_(\d+)\.pt", f)
        later = m is not None and int(m.group(1)) > epoch
        if f == "best.pt":
            try:
                saved = read_checkpoint(os.path.join(out, f)).get("epoch", epoch + 1)
                later = not isinstance(saved, int) or saved > epoch
            except UsageError:
                later = True
        if later or f in ("results.json", "results.md", "per_image.npz", "aa_log.txt", "mask.png"):
            os.remove(os.path.join(out, f))
            gone.append(f)
    return gone


def in_use_message(out: str) -> str:
    return (f"another process is using the run folder {out} (it holds the lock on {os.path.join(out, LOCK)}); "
            f"wait for it or choose another --out")


def lock_holder(folder: str) -> int | None:
    """The process holding the run folder's lock (a run in progress on this machine), from /proc/locks; None when
    nobody holds it or this system cannot tell. Reads only: taking the lock could make a starting run fail."""
    try:
        st = os.stat(os.path.join(folder, LOCK))
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


class RunFolder:
    """Create (if needed) and exclusively lock a run folder for the life of a run. On a failed start,
    `abandon()` removes the folder again if this run created it and wrote nothing that matters into it."""

    def __init__(self, out: str):
        self.out = out
        self.created = not os.path.isdir(out)
        try:
            os.makedirs(out, exist_ok=True)
            self.fd = os.open(os.path.join(out, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot create or write the run folder {out} ({e.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise UsageError(in_use_message(out)) from None

    @property
    def held(self) -> bool:
        """Whether this process still holds the lock (not yet released or abandoned)."""
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> None:
        """Release the lock; remove the folder if this run created it and nothing but start-up files are in it."""
        self.release()
        if self.created and os.path.isdir(self.out) and \
                set(os.listdir(self.out)) <= {LOCK, "log.txt", "config.json", "metrics.csv"}:
            shutil.rmtree(self.out, ignore_errors=True)


def make_logger(out_dir: str | None, name: str = "part") -> logging.Logger:
    """Logger writing timestamped lines to stdout and, when out_dir is given, to out_dir/log.txt (appended)."""
    logger = logging.getLogger(name)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    h = logging.StreamHandler(sys.stdout)
    h.setFormatter(fmt)
    logger.addHandler(h)
    if out_dir:
        fh = logging.FileHandler(os.path.join(out_dir, "log.txt"))
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger
