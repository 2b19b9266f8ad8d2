"""Budgets and rates as people write them: '8/255' in, '8/255' out."""
import argparse


def parse_fraction(text: str) -> float:
    """'8/255' -> 0.0313..., '0.01' -> 0.01. Raises argparse.ArgumentTypeError on anything else."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 8/255, got {text!r}") from None


def fraction_text(v) -> str:
    """A value in (0, 1) that is a whole number of 255ths as 'k/255'; anything else as str(v)."""
    if isinstance(v, float) and 0 < v < 1 and abs(v * 255 - round(v * 255)) < 1e-9:
        return f"{round(v * 255)}/255"
    return str(v)
