"""A number the report shows comes from the configuration its record claims: a results.json whose sizes, radius or
epoch disagree with its config is left out, a metrics.csv row with a number its column cannot hold is left out,
and two runs attacked with different settings are never compared as if under one attack."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tools import report
from utils.records import RecordError, read_record


def edit_json(path, **fields):
    rec = json.loads(path.read_text())
    rec.update(fields)
    path.write_text(json.dumps(rec))


@pytest.mark.parametrize("edit,words", [({"n_eval": 16}, "its n_eval 16 is not the 32 images"),
                                        ({"n_test": 0}, "its n_test 0 is not a test-set size"),
                                        ({"n_eval_aa": 16}, "its n_eval_aa 16 is not the None"),
                                        ({"eval_epsilon": 4 / 255}, "its eval_epsilon 0.0156"),
                                        ({"epoch": 2}, "its epoch 2 is not its config's last (3)"),
                                        ({"epoch": "3"}, "its epoch '3' is not")])
def test_a_record_that_disagrees_with_its_config_is_left_out(three, tmp_path, edit, words, capsys):
    run = shutil.copytree(three, tmp_path / "runs" / "r")
    assert read_record(str(run))["n_eval"] == 32  # untouched, it is read
    edit_json(run / "results.json", **edit)
    with pytest.raises(RecordError) as e:
        read_record(str(run))
    assert words in e.value.why and "does not come from the configuration it holds" in e.value.why, e.value.why
    shutil.copytree(three, tmp_path / "runs" / "good")
    assert report.main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert f"r/results.json: its {next(iter(edit))}" in out.split("Files left out")[1]


def test_an_eval_only_record_of_another_epoch_is_read(three, tmp_path):
    """--eval-only of epoch_1.pt writes epoch 1: only a run's results.json must hold the config's last epoch."""
    run = shutil.copytree(three, tmp_path / "r")
    shutil.copy(run / "results.json", run / "eval_epoch_1.json")
    edit_json(run / "eval_epoch_1.json", epoch=1, checkpoint=str(run / "epoch_1.pt"))
    assert read_record(str(run), "eval_epoch_1")["epoch"] == 1
    edit_json(run / "eval_epoch_1.json", epoch=-1)
    with pytest.raises(RecordError, match="its epoch -1 is not an epoch count"):
        read_record(str(run), "eval_epoch_1")


@pytest.mark.parametrize("column,value", [("eps_share", "5.0"), ("budget_mean", "-1"), ("budget_mean", "9.5"),
                                          ("natural", "150"), ("epoch_time_s", "-3")])
def test_a_metrics_row_out_of_its_columns_range_is_left_out(three, tmp_path, column, value, capsys):
    """The run's rows then no longer cover every epoch, so its budget and time columns show nothing rather than
    a mean over the rows that remain; the budget's bound is the run's own largest radius (8/255 here)."""
    run = shutil.copytree(three, tmp_path / "r")
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[2].split(",")
    cells[header.index(column)] = value
    lines[2] = ",".join(cells)
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    assert report.main([str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    left_out = capsys.readouterr().out.split("Files left out")[1]
    assert f"1 row(s) with a number its column cannot hold (epoch 2: {column} {value})" in left_out, left_out
    group, = json.loads((tmp_path / "r.json").read_text())["groups"]
    assert group["budget"]["budget_mean"]["n"] == 0


def test_mcnemar_and_diff_say_when_the_runs_were_attacked_otherwise(three, tmp_path, capsys):
    x = shutil.copytree(three, tmp_path / "x")
    y = shutil.copytree(three, tmp_path / "y")
    assert report.main(["--mcnemar", str(x), str(y), "--json", str(tmp_path / "m.json")]) == 0
    assert "Note:" not in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["attack_differences"] == []
    rec = json.loads((y / "results.json").read_text())
    edit_json(y / "results.json", eval_epsilon=4 / 255, config={**rec["config"], "eval_epsilon": 4 / 255})
    assert report.main(["--mcnemar", str(x), str(y), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "Note: A and B were attacked with different settings (eval_epsilon 8/255 and 4/255)" in out, out
    assert json.loads((tmp_path / "m.json").read_text())["attack_differences"] == ["eval_epsilon 8/255 and 4/255"]
    assert report.main([str(x), str(y), "--diff", "PART (eval_epsilon=4/255)", "PART (eval_epsilon=8/255)"]) == 0
    err = capsys.readouterr().err
    assert "the rows were attacked with different settings (eval_epsilon 4/255 and 8/255)" in err, err


def test_the_report_never_waits_on_a_fifo_in_a_run_folder(three, tmp_path):
    """A FIFO where a run's config.json, metrics.csv or results.json should be (open() would wait for a writer
    forever): the report finishes, names the metrics.csv it could not read and counts the run without a record
    as unfinished. In a subprocess, so that a wait fails the test rather than hanging it."""
    a = shutil.copytree(three, tmp_path / "runs" / "a")
    b = shutil.copytree(three, tmp_path / "runs" / "b")
    for path in (a / "config.json", a / "metrics.csv", b / "results.json"):
        os.remove(path)
        os.mkfifo(path)
    proc = subprocess.run([sys.executable, "-m", "tools.report", str(tmp_path / "runs")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "a/metrics.csv: cannot be read (OSError" in proc.stdout and f"- {b}" in proc.stdout, proc.stdout


def test_open_regular_refuses_what_is_no_regular_file_and_passes_open_errors_through(tmp_path):
    from utils.runs import open_regular
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path / "fifo", tmp_path):
        with pytest.raises(OSError, match="not a regular file"):
            open_regular(path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(LookupError):  # open()'s own error, not a second close of its descriptor
        open_regular(tmp_path / "f.txt", encoding="no-such-codec")
    with open_regular(tmp_path / "f.txt") as f:
        assert f.read() == "x"
