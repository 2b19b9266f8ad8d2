"""Ctrl-C and SIGTERM held while a command loads its libraries: an import broken off half-way can leave a library
half-initialised, which ends in an unrelated traceback. Imports nothing but `signal`, so that holding starts at
once."""
import signal

_held = {}  # while start-up signals are held: {"signals": [received], "previous": {signal: handler}}


def hold_signals() -> None:
    """Hold Ctrl-C and SIGTERM while a command imports its libraries (a tool: first thing under
    `if __name__ == "__main__"`). utils.errors.entry_point releases them and ends with the usual one line for the
    first one received. Not in a thread other than the main one (signals are the main thread's)."""
    if _held:
        return
    received = []
    try:
        previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        return
    _held.update(signals=received, previous=previous)


def release_signals() -> int | None:
    """Stop holding (`hold_signals`), restoring the handlers from before; the first signal held meanwhile, or
    None."""
    if not _held:
        return None
    for s, handler in _held["previous"].items():
        signal.signal(s, handler)
    received = _held["signals"]
    _held.clear()
    return received[0] if received else None
