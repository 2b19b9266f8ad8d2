"""The command-line pieces every entry point shares: `Parser` (one-line errors, whole flag names only) and the
argparse types (`number` and its common instances, `nonempty`)."""
import argparse
import math

from .errors import UsageError
from .units import fraction_text, parse_fraction


def number(kind=float, lo=None, hi=None, lo_open=False, hi_open=False, optional=False):
    """An argparse type: a finite number of `kind` (fractions accepted for floats) within [lo, hi] (open ends
    where asked); 'none' gives None when `optional`. Every numeric flag of the scripts and tools is one of these."""
    def parse(text):
        if optional and text.lower() in ("none", "default"):
            return None
        if kind is int:
            try:
                v = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        else:
            v = parse_fraction(text)
        if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            lo_s = "" if lo is None else ("(" if lo_open else "[") + fraction_text(lo)
            hi_s = "" if hi is None else fraction_text(hi) + (")" if hi_open else "]")
            where = f"in {lo_s}, {hi_s}" if lo is not None and hi is not None else \
                (f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"<= {hi}")
            what = "a whole number" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} {where}, got {text}")
        return v
    parse.__name__ = kind.__name__
    parse.describe = _describe(kind, lo, hi, lo_open, hi_open, optional)
    return parse


def _describe(kind, lo, hi, lo_open, hi_open, optional) -> str:
    """What a `number` flag takes, in words (for tools/flags.py's reference): e.g. 'number in [0, 1]'."""
    text = "whole number" if kind is int else "number"
    if lo is not None and hi is not None:
        text += f" in {'(' if lo_open else '['}{fraction_text(lo)}, {fraction_text(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text += f" {'>' if lo_open else '>='} {fraction_text(lo)}"
    elif hi is not None:
        text += f" {'<' if hi_open else '<='} {fraction_text(hi)}"
    return text + (", or none" if optional else "")


BUDGET = number(float, 0, 1)
COUNT = number(int, 0)
POSITIVE = number(int, 1)
SEED = number(int, 0, 2**64 - 1)  # torch's seed range; the seeds derived from it wrap (utils.batches.seed64)

def nonempty(text: str) -> str:
    """An argparse type for paths and names: any text but the empty string (which would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text



class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError (one line, exit code 2 in the scripts), and which takes
    whole flag names only (no prefix matching: `--see 5` is not `--seed 5`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see --help)")
