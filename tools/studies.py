"""The paper's studies as the grid (tools/grid.py) runs them: each study's rows (a training script and its flags),
the rows a study runs by default, and the commands of a grid, one per (data set, model, row, seed), each with its
run folder <root>/<data>-<model>[-<tag>]/<row>-seed<N>; the folder-name tag made from the flags passed after `--`
to every command, and which of those flags a grid may pass (`check_extra`).
"""
import argparse
import os
import re
import sys

from utils import ROOT
from utils.methods import METHODS, labels

SCRIPT = {v: m.script for v, m in METHODS.items()}


def script_variant(script: str) -> str:
    """The method variant (a key of METHODS) of a training script, given by its path."""
    return next(v for v, m in METHODS.items() if m.script == os.path.basename(script))


def _main_rows():
    rows = {}
    for label, (variant, attack, masked, _) in labels().items():
        flags = (["--attack", attack] if attack != METHODS[variant].attacks[0] else []) + ([] if masked else ["--no-mask"])
        rows[label] = (SCRIPT[variant], flags)
    return rows


def _figure1_rows():
    # every row without warm-up, as the figure trains: --warm-up 0 also lets --epochs go below the default warm-up
    rows = {"AT-uniform": (SCRIPT["part"], ["--no-mask", "--warm-up", "0", "--eval-attacks", "natural", "pgd20"])}
    for i, quadrant in enumerate(("ul", "ur", "br", "bl")):
        eps = ["12/255"] * 4
        eps[i] = "6/255"
        rows[f"AT-{quadrant}6"] = (SCRIPT["part"], ["--mask-source", "regions", "--warm-up", "0", "--region-eps", *eps,
                                                    "--eval-attacks", "natural", "pgd20"])
    return rows


def _as_published_rows():
    rows = {}
    for label, (script, flags) in _main_rows().items():  # ours, then the official code's behaviour beside it
        rows[label] = (script, flags)
        rows[f"{label}-as-published"] = (script, flags + ["--as-published"])
    return rows


STUDIES = {
    "main": _main_rows(),
    "figure1": _figure1_rows(),
    "eps-low": {f"PART-eps_low{k}": (SCRIPT["part"], ["--low-epsilon", f"{k}/255"]) for k in (5, 6, 7, 8)},
    "cam": {f"PART-{cam}": (SCRIPT["part"], ["--cam", cam]) for cam in ("gradcam", "xgradcam", "layercam")},
    "mask-source": {"AT": (SCRIPT["part"], ["--no-mask"]),
                    **{f"PART-{s}": (SCRIPT["part"], ["--mask-source", s]) for s in ("cam", "official", "permuted")}},
    "as-published": _as_published_rows(),
}
DEFAULT_ROWS = {"main": [m.label(m.attacks[0], masked) for m in METHODS.values() for masked in (False, True)]}
DEFAULT_ROWS["as-published"] = [r for label in DEFAULT_ROWS["main"] for r in (label, f"{label}-as-published")]
NOT_IN_TAG = {"--data-dir", "--device", "--download", "--log-interval", "--save-freq"}


def shown_path(path: str) -> str:
    """`path` relative to the current folder when it lies below it, else absolute: a printed command runs as pasted."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else os.path.abspath(path)


def interpreter() -> str:
    """The Python running this tool, as the printed commands give it."""
    return shown_path(sys.executable)


TAG_CHARS = "A-Za-z0-9.=_-"  # what a folder-name tag holds, made from flags or given with --tag


def override_tag(extra) -> str:
    """A folder-name tag for the flags passed to every command: '--width 16 --epochs=12' -> 'width16-epochs12'."""
    def clean(value):
        return re.sub(f"[^{TAG_CHARS}]", "_", value)
    parts, skip = [], False
    for a in extra:
        if a.startswith("--"):
            name, _, value = a.partition("=")
            skip = name in NOT_IN_TAG
            if not skip:
                parts.append(name[2:] + clean(value))
        elif not skip:
            parts[-1] += clean(a)
    return "-".join(parts)


def folder_tag(value: str) -> str:
    """--tag: one folder-name part (letters, digits and . = _ -, as the tags made from flags), or "" for none."""
    if value and not re.fullmatch(f"[{TAG_CHARS}]+", value) or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"{value!r} is not one folder-name part (letters, digits, . = _ - only)")
    return value


def commands(study, data, models, rows, seeds, root, extra=(), tag=None):
    """[(folder, argv)] for every run of the grid."""
    tag = override_tag(extra) if tag is None else tag
    out = []
    for d in data:
        for m in models:
            for s in seeds:  # seed by seed, so that an unfinished grid has whole seeds of every row
                for row in rows:
                    script, flags = STUDIES[study][row]
                    folder = os.path.join(root, f"{d}-{m}" + (f"-{tag}" if tag else ""), f"{row}-seed{s}")
                    out.append((folder, [interpreter(), shown_path(os.path.join(ROOT, script)), "--data", d,
                                         "--model", m, *flags, "--seed", str(s), "--out", folder, *extra]))
    return out


# ----------------------------------------------------------------------------------------------------
# what the flags after -- may set
# ----------------------------------------------------------------------------------------------------
OWNED = {"data": "the grid's --data says which", "model": "the grid's --models says which",
         "seed": "the grid's --seeds says which", "out": "the grid's --root and --tag say where",
         "resume": "--run resumes interrupted runs by itself", "eval_only": "the grid trains",
         "overwrite": "--run resumes interrupted runs and skips finished ones; to start a run over, delete its folder"}


def check_extra(study: str, rows, extra) -> str | None:
    """Why the flags after -- cannot go to every command of these rows, or None. They must parse for each row's
    script (no prefixes: the scripts' parser takes whole flag names only), must not set what the grid sets per
    command, must not set what any row of the study sets, must not give one flag twice (the last would win while
    the folder tag names both), and must not leave two rows the same run (either would train every row alike under
    different names)."""
    from utils.config import build_parser, explicit_flags, parse, script_constants
    from utils.errors import UsageError
    from utils.identity import effective
    given, varies, names, runs, options = set(), {}, {}, {}, {}
    for row, (script, flags) in STUDIES[study].items():
        variant = script_variant(script)
        constants = script_constants(os.path.join(ROOT, script))
        parser = build_parser(variant, constants)
        names.update({a.dest: "/".join(a.option_strings) for a in parser.flags})
        options.update({o: a.dest for a in parser.flags for o in a.option_strings})
        for dest in explicit_flags(parser, flags):
            varies.setdefault(dest, []).append(row)
        if row in rows:
            try:
                given |= explicit_flags(build_parser(variant, constants), extra)
            except UsageError as e:
                return f"the flags after -- do not fit {script}: {str(e).removesuffix(' (see --help)')}"
            try:  # the row's own flags with them: a contradiction (e.g. --as-published --mask-source cam) stops here
                cfg, _ = parse(variant, constants, [*flags, *extra])
            except UsageError as e:
                return f"row {row} with the flags after --: {str(e).removesuffix(' (see --help)')}"
            runs[row] = (effective(cfg), sorted(cfg["eval_attacks"]))  # what it trains, and what it evaluates
    seen = {}
    for a in extra:
        dest = options.get(a.partition("=")[0]) if a.startswith("-") else None
        if dest in seen:
            return (f"{names[dest]} is given twice after -- ({seen[dest]} and {a}): the last would win while the "
                    f"folder tag names both; give it once")
        if dest is not None:
            seen[dest] = a
    for dest in sorted(given):
        if dest in OWNED:
            return f"{names[dest]} is set by the grid for each command: {OWNED[dest]}"
        if dest in varies:
            return (f"{names[dest]} is what the rows of study {study} set ({', '.join(varies[dest])}): passed "
                    f"after --, every row would train alike under different names; drop it (or run one command "
                    f"yourself)")
    for i, row in enumerate(runs):  # e.g. --no-mask after -- makes every PART row AT
        same = next((r for r in list(runs)[:i] if runs[r] == runs[row]), None)
        if same is not None:
            return (f"rows {same} and {row} would train and evaluate the same run under two names (with the flags "
                    f"after --, the settings that tell them apart are not used); drop the flag that does this, or "
                    f"choose one of the rows with --methods")
    return None
