"""Shared code of the three scripts. `main` is their entry point; it imports the engine lazily so that
Ctrl-C or SIGTERM during the (slow) start-up ends with one line instead of a traceback. `ROOT` is the repository's
root folder (the scripts' and tools' one definition of it)."""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(variant: str, constants: dict, argv=None) -> int:
    """Run a script (see utils.entry.main) and return its exit code. A Ctrl-C (130) or SIGTERM (143) that arrives
    while the libraries load is held until they have loaded (utils.signals), then ends the run with
    one line, before any folder is made."""
    from .signals import hold_signals, release_signals
    hold_signals()
    failed = None
    try:
        from .entry import main as entry_main
    except BaseException as e:  # reported below, unless a held signal caused it
        failed = e
    held = release_signals()
    if held is not None:
        ctrl_c = held == signal.SIGINT
        print(f"\n{'interrupted (Ctrl-C)' if ctrl_c else 'terminated (SIGTERM)'} during start-up", file=sys.stderr)
        return 130 if ctrl_c else 143
    if failed is not None:
        raise failed
    return entry_main(variant, constants, argv)
