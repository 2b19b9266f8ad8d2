"""Shared code of the three scripts. `main` is their entry point; it imports the engine lazily so that
Ctrl-C or SIGTERM during the (slow) start-up ends with one line instead of a traceback. `ROOT` is the repository's
root folder (the scripts' and tools' one definition of it)."""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(variant: str, constants: dict, argv=None) -> int:
    """Run a script (see utils.entry.main) and return its exit code."""
    def on_term(signum, frame):
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        from .entry import main as entry_main
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C) during start-up", file=sys.stderr)
        return 130
    except SystemExit:
        print("\nterminated (SIGTERM) during start-up", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    return entry_main(variant, constants, argv)
