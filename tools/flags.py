"""The flag reference, generated: every entry point's flags, read from its own argparse parser, as docs/flags.md.

    python -m tools.flags                # (re)write docs/flags.md
    python -m tools.flags --check        # exit 1, naming the sections that differ, when docs/flags.md is stale

The entry points are the three training scripts (their parser is utils.config.build_parser with the constants at
the top of each script, read without training) and every module in tools/ with a command line (found by listing
the folder, so a new tool is documented without being registered here). A tool hands over its parser through its
`build_parser()`, which every tool with a command line has. The text of a flag is its --help text: to
change the reference, change the help string and regenerate. Defaults are rendered as --help shows them (budgets
as 8/255), never with a memory address. Exit code 0 (1 for --check with a stale file; 2 with one line for bad
input).
"""
import argparse
import copy
import difflib
import importlib
import os
import re
import sys

if __name__ == "__main__":  # the repository root on the path (run as a file: python tools/flags.py), and
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from utils.signals import hold_signals
    hold_signals()  # Ctrl-C / SIGTERM held until the libraries have loaded (entry_point ends with one line)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("docs", "flags.md")
# the tools in the order the reference lists them; any other tool with a `main` follows in name order
TOOL_ORDER = ("grid", "report", "benchmark", "device_check", "make_cifar10_subset", "make_cifar10c", "flags")


def build_parser():
    from utils.cli import Parser, nonempty
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=nonempty, metavar="PATH",
                   help="the reference to write (a .md file), or with --check the one to compare (default: "
                        "docs/flags.md of this repository, wherever the command runs)")
    p.add_argument("--check", action="store_true",
                   help="write nothing: exit 0 when --out equals what would be generated, else exit 1 and name the "
                        "sections and lines that differ")
    return p


# ----------------------------------------------------------------------------------------------------
# the parsers
# ----------------------------------------------------------------------------------------------------
def tool_names() -> list[str]:
    """Every module of tools/ that has a command line (a top-level `def main(` or `if __name__ == "__main__":`, so a
    module that re-exports another's main counts), in TOOL_ORDER then by name."""
    names = []
    for f in sorted(os.listdir(os.path.join(ROOT, "tools"))):
        if f.endswith(".py") and not f.startswith("_"):
            with open(os.path.join(ROOT, "tools", f), encoding="utf-8") as fh:
                if re.search(r"^(def main\(|if __name__ == .__main__.:)", fh.read(), re.M):
                    names.append(f[:-3])
    return sorted(names, key=lambda n: (TOOL_ORDER.index(n) if n in TOOL_ORDER else len(TOOL_ORDER), n))


def tool_parser(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"tools.{name}")
    return module.build_parser()


def script_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(script, parser) of each training script, in METHODS order."""
    from utils.config import build_parser as script_parser, script_constants
    from utils.methods import METHODS
    return [(m.script, script_parser(variant, script_constants(os.path.join(ROOT, m.script))))
            for variant, m in METHODS.items()]


# ----------------------------------------------------------------------------------------------------
# one flag as a table row
# ----------------------------------------------------------------------------------------------------
# what a flag of each argparse type takes, by the type function's name (number types describe themselves)
TYPE_TEXT = {"nonempty": "text (not empty)", "device_name": "auto, cpu, cuda or cuda:N",
             "eval_attack": "attack name", "str": "text", "int": "whole number", "float": "number",
             "folder_tag": "folder-name part (letters, digits, . = _ -)", "_gpu_id": "GPU index or UUID",
             "_slurm_extra": "KEY=VALUE", "_mark": "COLUMN=VALUE", "_setting_name": "speed setting"}


def _value_text(v) -> str:
    """A default as people write it: a float as its short decimal (0.8, 2e-4) where it has one, else as a number of
    255ths (8/255) where it is one; never an object's repr with its memory address."""
    from utils.units import fraction_text
    if isinstance(v, (list, tuple)):
        return " ".join(_value_text(x) for x in v)
    if isinstance(v, float) and len(repr(v)) <= 8:
        return repr(v)
    text = fraction_text(v)
    if " at 0x" in text:
        return type(v).__name__
    return text


def default_text(action: argparse.Action) -> str:
    if action.required and action.option_strings:
        return "required"
    if action.nargs == 0:  # a switch
        return "on" if action.default else "off"
    if action.default in (None, [], ()) or action.default is argparse.SUPPRESS:
        return "none" if getattr(action.type, "describe", "").endswith("or none") else "—"
    return _value_text(action.default)


def takes_text(action: argparse.Action, exclusive: dict) -> str:
    if action.nargs == 0:
        text = "switch"
    else:
        if action.choices is not None:
            choices = sorted(action.choices) if isinstance(action.choices, (set, frozenset)) else action.choices
            text = "one of " + ", ".join(str(c) for c in choices)
        else:
            kind = action.type
            text = getattr(kind, "describe", None) or TYPE_TEXT.get(getattr(kind, "__name__", "str"), "text")
        many = {"+": "one or more", "*": "any number", "?": "optional"}.get(action.nargs)
        if isinstance(action.nargs, int) and action.nargs > 1:
            many = f"{action.nargs} values"
        if many:
            text += f" ({many})"
    others = exclusive.get(action)
    if others:
        text += "; not with " + ", ".join(others)
    return text


def help_text(action: argparse.Action) -> str:
    """The help as --help prints it (%-formatting expanded), without the suffix some Python versions add to
    BooleanOptionalAction's help (the default column says it)."""
    text = (action.help or "").removesuffix(" (default: %(default)s)")
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    for k, v in list(params.items()):
        if hasattr(v, "__name__"):
            params[k] = v.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    try:
        text = text % params
    except (KeyError, TypeError, ValueError):
        pass
    return " ".join(text.split())


def invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The flag as --help lists it: its option strings and its arguments' metavars (e.g. --resume [CKPT])."""
    formatter = parser._get_formatter()
    if action.choices is not None and action.metavar is None:  # the choices have their own column
        action = copy.copy(action)
        action.choices = None
    if not action.option_strings:
        return formatter._format_args(action, action.dest)
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    return f"{names} {formatter._format_args(action, action.dest.upper())}"


def parser_groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """[(group title, [(flag, takes, default, help)])] of a parser, without --help and without empty groups.
    argparse has no public API for its groups; _action_groups is the one its own help formatter reads."""
    exclusive = {}
    for group in parser._mutually_exclusive_groups:
        for action in group._group_actions:
            exclusive[action] = [a.option_strings[-1] for a in group._group_actions if a is not action]
    out = []
    for group in parser._action_groups:
        title = {"optional arguments": "options"}.get(group.title, group.title)  # Python < 3.10 said the former
        rows = [(invocation(parser, a), takes_text(a, exclusive), default_text(a), help_text(a))
                for a in group._group_actions
                if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
        if rows:
            out.append((title, rows))
    return out


# ----------------------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("*", "\\*"))


def _code(text: str) -> str:
    return f"`{text}`" if text not in ("—", "") else text


def table(rows, note_column=False) -> list[str]:
    head = "| flag | takes | default | meaning |" + (" scripts |" if note_column else "")
    lines = [head, "|---|---|---|---|" + ("---|" if note_column else "")]
    for row in rows:
        flag, takes, default, text = row[:4]
        line = f"| {_code(flag)} | {_cell(takes)} | {_code(default)} | {_cell(text)} |"
        if note_column:
            line += f" {row[4]} |"
        lines.append(line)
    return lines


def merged_script_groups(parsers) -> list[tuple[str, list[tuple]]]:
    """The scripts' groups merged: one row per distinct (flag, takes, default, help), with the scripts that have it
    (all three, or the ones named). A row some scripts lack stays at its place among its neighbours."""
    scripts = [s for s, _ in parsers]
    groups = {}  # title -> [[row, [scripts]]]
    for script, parser in parsers:
        for title, rows in parser_groups(parser):
            merged = groups.setdefault(title, [])
            at = -1
            for row in rows:
                found = next((i for i, (r, _) in enumerate(merged) if r == row), None)
                if found is None:
                    at += 1
                    merged.insert(at, [row, [script]])
                else:
                    merged[found][1].append(script)
                    at = found
    out = []
    for title, rows in groups.items():
        out.append((title, [(*row, "all" if have == scripts else ", ".join(have)) for row, have in rows]))
    return out


def first_paragraph(text: str) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def generate() -> str:
    scripts = script_parsers()
    lines = ["# Flag reference", "",
             "<!-- Generated by `python -m tools.flags` from the entry points' argparse parsers: edit their help "
             "strings, not this file. -->", "",
             "Every flag of every entry point, as its `--help` states it. Regenerate this file with "
             "`python -m tools.flags` after changing a flag; `python -m tools.flags --check` (run by the tests) fails "
             "while it is stale.", "",
             "Wherever a flag takes a number, a fraction such as `8/255` is accepted; a flag whose range ends in "
             "\"or none\" also takes `none` (the meaning column says what none stands for). A value out of range stops "
             "the command with exit code 2 and one line naming the flag. *default* `—` means unset.", "",
             "Entry points:", ""]
    sections = [("Training scripts", "training-scripts")] + [
        (f"python -m tools.{name}", f"python--m-tools{name}") for name in tool_names()]
    lines += [f"- [{title}](#{anchor})" for title, anchor in sections] + [""]

    lines += ["## Training scripts", ""]
    for script, parser in scripts:
        lines.append(f"- `python {script}`: {_cell(first_paragraph(parser.description))}")
    lines += ["", "The three scripts take the same flags, except where the *scripts* column names some of them. Each "
              "flag of the first group overrides the constant of the same name at the top of the script "
              "(`WARM_UP` → `--warm-up`).", ""]
    for title, rows in merged_script_groups(scripts):
        lines += [f"### {title}", ""] + table(rows, note_column=True) + [""]

    for name in tool_names():
        parser = tool_parser(name)
        lines += [f"## python -m tools.{name}", "", _cell(first_paragraph(parser.description)), ""]
        for title, rows in parser_groups(parser):
            lines += [f"### {title}", ""] + table(rows) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def differences(old: str, new: str, context: int = 40) -> list[str]:
    """What differs between the file and the generated text: one line per section ('## ...' / '### ...') whose
    lines differ, then the first `context` lines of a unified diff."""
    old_lines, new_lines = old.splitlines(), new.splitlines()

    def section_of(lines, i):
        top = sub = ""
        for line in lines[:i + 1]:
            if line.startswith("## "):
                top, sub = line[3:], ""
            elif line.startswith("### "):
                sub = line[4:]
        return top + (f" / {sub}" if sub else "") if top else "(header)"

    where = []
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        for s in [section_of(old_lines, i) for i in range(i1, i2)] + [section_of(new_lines, j) for j in range(j1, j2)]:
            if s not in where:
                where.append(s)
    diff = list(difflib.unified_diff(old_lines, new_lines, "committed", "generated", lineterm="", n=0))
    shown = diff[:context] + ([f"... ({len(diff) - context} more diff lines)"] if len(diff) > context else [])
    return [f"section differs: {s}" for s in where] + shown


def run(argv=None) -> int:
    from utils.errors import UsageError
    from utils.runs import check_writable, save_text
    args = build_parser().parse_args(argv)
    out, shown = (args.out, args.out) if args.out else (os.path.join(ROOT, DEFAULT_OUT), DEFAULT_OUT)
    again = "python -m tools.flags" + (f" --out {args.out}" if args.out else "")
    if not out.endswith(".md"):  # the reference is markdown: never a source file or anything else it could replace
        raise UsageError(f"--out {shown}: the flag reference is a markdown file; give a path ending in .md")
    if args.check:
        if os.path.isdir(out):
            raise UsageError(f"--out {shown} is a folder; give the reference's file")
        if os.path.exists(out) and not os.path.isfile(out):
            raise UsageError(f"--out {shown} is not a regular file (a device, pipe or socket)")
        text = generate()
        if not os.path.isfile(out):
            print(f"{shown} does not exist; write it with: {again}", file=sys.stderr)
            return 1
        try:
            with open(out, encoding="utf-8") as f:
                old = f.read()
        except UnicodeDecodeError:
            print(f"{shown} is not UTF-8 text, so not the flag reference; regenerate it with: {again}",
                  file=sys.stderr)
            return 1
        if old == text:
            print(f"{shown} is up to date")
            return 0
        print(f"{shown} is stale (the parsers' flags or help strings changed); regenerate it with: {again}",
              file=sys.stderr)
        print("\n".join(differences(old, text)), file=sys.stderr)
        return 1
    check_writable(out, "--out", folder=False)
    text = generate()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_text(out, text)
    print(f"wrote {shown}")
    return 0


def main(argv=None) -> int:
    """The entry point: 0; 1 for --check with a stale reference; 2 with one line for bad input."""
    from utils.errors import entry_point
    return entry_point(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
