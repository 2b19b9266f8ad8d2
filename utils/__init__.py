"""Shared code of the three scripts. `main` is their entry point; it imports the engine lazily so that
Ctrl-C or SIGTERM during the (slow) start-up ends with one line instead of a traceback. `ROOT` is the repository's
root folder (the scripts' and tools' one definition of it)."""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(variant: str, constants: dict, argv=None) -> int:
    """Run a script (see utils.entry.main) and return its exit code. A Ctrl-C (130) or SIGTERM (143) that arrives
    while the libraries load is held until they have loaded, then ends the run with one line: an import broken
    off half-way can leave a library half-initialised (numpy was seen so), which would end in an unrelated
    traceback instead."""
    received = []

    def hold(signum, frame):
        received.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from .entry import main as entry_main
    except BaseException:
        if not received:
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:  # it wins over an error it caused
        ctrl_c = received[0] == signal.SIGINT
        print(f"\n{'interrupted (Ctrl-C)' if ctrl_c else 'terminated (SIGTERM)'} during start-up", file=sys.stderr)
        return 130 if ctrl_c else 143
    return entry_main(variant, constants, argv)
