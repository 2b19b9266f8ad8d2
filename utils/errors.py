"""Errors that mean "the user asked for something we cannot do", and the one handler that turns them, a failed
write, out-of-memory, Ctrl-C and SIGTERM into an exit code and one line: `entry_point`, used by the three scripts
and every tool."""
import re
import signal
import sys

from .signals import release_signals


class UsageError(Exception):
    """Bad input from the user (flag values, paths, files). Printed without a traceback; exit code 2."""


class DataNotFound(UsageError):
    """A data set is not where we looked; the message names the folder and how to get the files."""


class Stop(Exception):
    """Stop with exit code `code` and the one line `message` (printed as it is: a non-finite loss)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM after a command started its work: the exit code (130 / 143) and the one line that says what
    was left (printed as it is). A BaseException, as KeyboardInterrupt is, so that no `except Exception` (a check
    that records a crash as a failure and goes on) takes an interrupt for a failure."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def interruption(e: BaseException) -> tuple[int, str]:
    """(exit code, what happened) of an interrupt: KeyboardInterrupt (Ctrl-C), Terminated (SIGTERM) or Interrupted."""
    if isinstance(e, Interrupted):
        return e.code, "terminated (SIGTERM)" if e.code == 143 else "interrupted (Ctrl-C)"
    return (143, "terminated (SIGTERM)") if isinstance(e, Terminated) else (130, "interrupted (Ctrl-C)")


def out_of_memory(e: BaseException) -> str | None:
    """For an allocation failure (torch.OutOfMemoryError, a RuntimeError of the CPU or CUDA allocator,
    MemoryError): one line saying where and how much; None for any other error."""
    text = str(e)
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "out of memory" in text.lower() or "can't allocate memory" in text):
        return None
    where = "on the GPU" if "CUDA" in text or "HIP" in text else "on the CPU"
    m = re.search(r"tried to allocate (\d+) bytes", text, re.I)
    size = f"{int(m.group(1)) / 2**30:.2f} GiB" if m else None
    m = re.search(r"tried to allocate ([0-9.]+ ?[KMGT]i?B)", text, re.I) if size is None else None
    size = m.group(1) if m else size
    return f"out of memory {where}" + (f" (tried to allocate {size})" if size else "")


def entry_point(body, where=lambda: "", handle_sigterm: bool = True) -> int:
    """Run `body()` as a command-line entry point and return the process exit code: body's own (None: 0);
    2 and one line for a UsageError, a failed write (OSError) or out-of-memory; a Stop's or an Interrupted's code
    and line; 130 for Ctrl-C and 143 for SIGTERM (one line each). `where()` adds context to the failed-write and
    out-of-memory lines (e.g. which checkpoint is the last good one). Anything else is a bug and raises.
    `handle_sigterm=False` leaves SIGTERM's handler alone (a scheduler's task that handles it itself)."""
    def on_term(signum, frame):
        raise Terminated()

    held = release_signals()
    previous = signal.signal(signal.SIGTERM, on_term) if handle_sigterm else None
    try:
        if held is not None:
            raise KeyboardInterrupt if held == signal.SIGINT else Terminated()
        code = body()
        return 0 if code is None else int(code)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Stop, Interrupted) as e:
        print(str(e), file=sys.stderr)
        return e.code
    except OSError as e:
        name = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{name}{where()}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:
        what = out_of_memory(e)
        if what is None:
            raise
        print(f"error: {what}: use a smaller --batch-size, --eval-batch-size or --width{where()}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        code, what = interruption(e)
        print("\n" + what, file=sys.stderr)
        return code
    finally:
        if handle_sigterm:
            signal.signal(signal.SIGTERM, previous)
