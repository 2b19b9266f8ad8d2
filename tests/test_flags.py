"""tools/flags.py: the generated flag reference (docs/flags.md) is current, a stale one is caught, and every flag
has help."""
import argparse
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tools import flags


@pytest.fixture(scope="module")
def generated():
    return flags.generate()


def test_the_committed_reference_is_current():
    """CI fails here when a flag or its help changed and docs/flags.md was not regenerated (python -m tools.flags)."""
    p = subprocess.run([sys.executable, "-m", "tools.flags", "--check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "docs/flags.md is up to date" in p.stdout


def test_a_stale_reference_is_caught_and_named(tmp_path, capsys, generated):
    out = tmp_path / "flags.md"
    assert flags.main(["--out", str(out)]) == 0
    assert out.read_text() == generated
    assert flags.main(["--check", "--out", str(out)]) == 0
    # someone edits a help string by hand in the file: the section and the line are named
    text = generated.replace("untimed calls of each step", "untimed calls of every step")
    assert text != generated
    out.write_text(text)
    capsys.readouterr()
    assert flags.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is stale" in err and "section differs: python -m tools.benchmark / options" in err
    assert "-| `--warmup WARMUP`" in err and "+| `--warmup WARMUP`" in err
    assert "tools.make_cifar10c" not in err  # only the section that differs
    # a missing file is stale too
    out.unlink()
    assert flags.main(["--check", "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_flag_added_without_regenerating_fails_the_check(tmp_path, capsys, monkeypatch, generated):
    out = tmp_path / "flags.md"
    out.write_text(generated)
    from tools import benchmark
    original = benchmark.build_parser

    def more():
        p = original()
        p.add_argument("--new-flag", type=int, default=3, help="a flag nobody documented")
        return p
    monkeypatch.setattr(benchmark, "build_parser", more)
    assert flags.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "section differs: python -m tools.benchmark / options" in err
    assert "+| `--new-flag NEW_FLAG` | whole number | `3` | a flag nobody documented |" in err


def test_every_entry_point_is_documented_and_every_flag_has_help(generated):
    names = flags.tool_names()
    assert {"grid", "report", "benchmark", "device_check", "make_cifar10c", "make_cifar10_subset",
            "flags"} <= set(names)
    assert "executors" not in names  # no command line of its own
    parsers = [p for _, p in flags.script_parsers()] + [flags.tool_parser(n) for n in names]
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 15, (parser.prog, action.option_strings)
            assert flags.help_text(action) in generated.replace("&lt;", "<").replace("&gt;", ">").replace("\\*", "*")
    for name in names:
        assert f"\n## python -m tools.{name}\n" in generated and f"(#python--m-tools{name})" in generated
    for script in ("train_eval_part.py", "train_eval_part_t.py", "train_eval_part_m.py"):
        assert f"- `python {script}`:" in generated


def test_defaults_are_rendered_as_the_parser_shows_them(generated):
    assert " at 0x" not in generated and "0.0313" not in generated
    assert "| `--eval-epsilon EVAL_EPSILON` | number in [0, 1] | `8/255` |" in generated
    assert "| `--region-eps UL UR BR BL` | number in [0, 1] (4 values) | `6/255 12/255 12/255 12/255` |" in generated
    assert "| `--power POWER` | number in (0, 1) | `0.8` |" in generated  # 0.8 is 204/255, but written 0.8
    assert "| `--width WIDTH` | whole number in [1, 1024], or none | `none` |" in generated
    assert "| `--mask, --no-mask` | switch | `on` |" in generated
    assert "| `--cifar-dir DIR` | text (not empty) | `required` |" in generated
    # the scripts share one section; a flag some lack says which have it
    assert "| train_eval_part_t.py, train_eval_part_m.py |" in generated.split("`--beta BETA`")[1].split("\n")[0]
    assert generated.split("`--attack ATTACK`")[1].split("\n")[0].endswith("| train_eval_part.py |")
    assert flags.generate() == generated  # deterministic


def test_every_tool_with_a_command_line_hands_over_its_parser():
    """A tool in tools/ with a command line has build_parser(), which the reference reads (a new tool without one
    fails here rather than dropping out of docs/flags.md); the report and the device check are among them."""
    names = flags.tool_names()
    assert {"report", "device_check", "grid", "benchmark"} <= set(names)
    for name in names:
        parser = flags.tool_parser(name)
        assert isinstance(parser, argparse.ArgumentParser) and parser._option_string_actions, name


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert flags.main(["--check", "--out", str(tmp_path)]) == 2
    assert flags.main(["--nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)


def test_the_reference_is_only_ever_a_markdown_file(tmp_path, capsys):
    """--out never replaces a file that is not a markdown reference (a source file, a device), and a reference that
    is not text is named as such, not diffed."""
    source = tmp_path / "report.py"
    source.write_text("print('keep me')\n")
    assert flags.main(["--out", str(source)]) == 2
    assert flags.main(["--check", "--out", "/dev/null"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(".md" in line for line in err), err
    assert source.read_text() == "print('keep me')\n"
    binary = tmp_path / "flags.md"
    binary.write_bytes(b"\xff\xfe\x00binary")
    assert flags.main(["--check", "--out", str(binary)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not UTF-8 text" in err[0], err
