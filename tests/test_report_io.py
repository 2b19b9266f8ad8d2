"""The report's inputs and outputs: no output may overwrite or add to what it reads, an output that
cannot be a file is refused before anything is printed, a failed write names its path, --plot-diff names each
panel's data set, and --mcnemar reads the --eval-only record where a run's own has no per-image file."""
import errno
import hashlib
import json
import os

import numpy as np
import pytest

from tests.test_stats import grid_of_runs, image_run
from tests.test_tools import fake_run
from tools import report
from utils.errors import UsageError
from utils.evaluate import per_image_name
from utils.runs import check_writable


def snapshot(root):
    """{path: sha256} of every file below root."""
    return {os.path.join(d, f): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def refused(argv, capsys, word=None):
    """Run the report; it must exit 2 with one line (containing `word`) and print nothing."""
    assert report.main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1, cap
    assert word is None or word in cap.err, cap.err
    return cap.err


@pytest.mark.parametrize("flag,target", [("--json", "a1/results.json"), ("--csv", "a1/metrics.csv"),
                                         ("--csv", "a1/config.json"), ("--json", "p2/per_image.npz"),
                                         ("--plot", "a1/curves.png"), ("--plot-diff", "p1/sub/d.png"),
                                         ("--csv", "a1/new.csv"), ("--json", "new/results.json"),
                                         ("--csv", "new/config.json")])
def test_no_output_lands_in_a_run_folder_or_makes_one(flag, target, tmp_path, capsys):
    root = tmp_path / "runs"
    grid_of_runs(root, seeds=(1, 2))
    (root / "a1" / "metrics.csv").write_text("epoch,natural\n1,50\n")
    before = snapshot(root)
    extra = ["--diff", "PART", "AT"] if flag == "--plot-diff" else []
    err = refused([str(root), *extra, flag, str(root / target)], capsys, flag)
    run_file = os.path.basename(target) in ("results.json", "metrics.csv", "config.json", "per_image.npz")
    assert ("a run folder to the next report" if target.startswith("new/") else
            "would replace the" if run_file else "a folder this command reads") in err
    assert snapshot(root) == before  # nothing written, nothing added


def test_an_output_reached_through_a_link_is_refused_too(tmp_path, capsys):
    root = tmp_path / "runs"
    grid_of_runs(root, seeds=(1, 2))
    before = snapshot(root)
    os.symlink(root / "a1" / "results.json", tmp_path / "link.json")
    os.symlink(root / "p1", tmp_path / "linked_run")
    refused([str(root), "--json", str(tmp_path / "link.json")], capsys, "--json")
    refused([str(root), "--csv", str(tmp_path / "linked_run" / "t.csv")], capsys, "--csv")
    refused([str(root / "a1"), "--json", str(root / "a1" / "x.json")], capsys, "--json")  # a run folder as root
    assert snapshot(root) == before
    # beside the run folders (not in one, not named like a record) is where outputs go
    assert report.main([str(root), "--csv", str(root / "table.csv"), "--json", str(root / "report.json")]) == 0
    assert (root / "table.csv").is_file() and (root / "report.json").is_file()


def test_mcnemar_writes_nothing_into_its_runs(tmp_path, capsys):
    bits = {"natural": [True, False, True, True], "pgd20": [False, False, True, False]}
    image_run(tmp_path, "x", "AT", 1, bits)
    image_run(tmp_path, "y", "PART", 1, bits)
    before = snapshot(tmp_path)
    refused(["--mcnemar", str(tmp_path / "x"), str(tmp_path / "y"), "--json", str(tmp_path / "y" / "results.json")],
            capsys, "--json")
    assert snapshot(tmp_path) == before


def test_an_output_that_is_not_a_regular_file_is_refused_before_the_report(tmp_path, capsys):
    grid_of_runs(tmp_path / "runs", seeds=(1, 2))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for flag in ("--json", "--csv", "--plot"):
        refused([str(tmp_path / "runs"), flag, str(fifo)], capsys, "not a regular file")
    assert not os.path.isfile(fifo) and os.path.exists(fifo)  # still the pipe, not replaced by a file
    for device in ("/dev/full", "/dev/null"):  # checked only: nothing is ever written to them here
        with pytest.raises(UsageError, match="not a regular file"):
            check_writable(device, "--json", folder=False)


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot-diff"])
def test_a_failed_write_names_its_path(flag, tmp_path, capsys, monkeypatch):
    """A full disk fails a write with no file name (ENOSPC from fsync); the message names the flag and path, and
    no partial or temporary file is left."""
    grid_of_runs(tmp_path / "runs", seeds=(1, 2))
    out = tmp_path / "out" / "r.png"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("utils.runs.os.fsync", full)
    assert report.main([str(tmp_path / "runs"), "--diff", "PART", "AT", flag, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {out}: writing failed (No space left on device)") and err.count("\n") == 1
    assert os.listdir(tmp_path / "out") == []


def test_plot_diff_names_each_panels_data_set_when_there_are_several(tmp_path, capsys, monkeypatch):
    for data, off in (("cifar10", 0.0), ("svhn", 5.0)):
        for s in (1, 2, 3):
            fake_run(tmp_path, f"{data}-a{s}", "AT", s, 80.0 + s + off, 50.0 - s, data=data)
            fake_run(tmp_path, f"{data}-p{s}", "PART", s, 81.0 + 1.3 * s + off, 50.5 - 0.7 * s, data=data)
    drawn = []
    monkeypatch.setattr("utils.figures._save", lambda fig, path: drawn.append(fig))
    assert report.main([str(tmp_path), "--diff", "PART", "AT", "--plot-diff", str(tmp_path / "d.png")]) == 0
    titles = [ax.get_title() for ax in drawn[0].axes]
    assert titles == [f"{c}\nPART − AT\n{d}, resnet18" for d in ("cifar10", "svhn") for c in ("Natural", "PGD-20")]
    cells = [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in drawn[0].axes]
    assert cells == [(0, 0), (0, 1), (1, 0), (1, 1)]  # a row per data set, a column per accuracy column
    from tools.reporting.comparisons import analyse  # one data set: no data set in the titles, as before
    from tools.reporting.groups import group_runs
    from tools.reporting.panels import diff_panels
    from tools.reporting.records import find_runs, load_runs
    tables = group_runs(load_runs(find_runs([str(tmp_path)]))[0], print)
    one = {k: v for k, v in tables.items() if k[0] == "cifar10"}
    assert {p["where"] for p in diff_panels(one, [("PART", "AT")], analyse(one, [("PART", "AT")]))} == {None}


# ----------------------------------------------------------------------------------------------------
# --mcnemar and the --eval-only record
# ----------------------------------------------------------------------------------------------------
def eval_only_record(folder, bits, checkpoint="last.pt"):
    """What --eval-only writes beside the checkpoint (utils.engine.write_evaluation): eval_<stem>.json naming its
    per-image file, and that file."""
    name = f"eval_{os.path.splitext(checkpoint)[0]}"
    rec = json.loads((folder / "results.json").read_text())
    acc = {c: 100.0 * np.mean(v) for c, v in bits.items()}
    n = len(next(iter(bits.values())))
    rec.update(acc, n_eval=n, checkpoint=str(folder / checkpoint), per_image_file=per_image_name(name))
    (folder / f"{name}.json").write_text(json.dumps(rec))
    arrays = {"labels": np.zeros(n, dtype=np.int64), "n_test": np.int64(n), "data_fingerprint": np.array("abc")}
    for c, v in bits.items():
        arrays[c], arrays[f"{c}_index"] = np.asarray(v, dtype=bool), np.arange(n)
    np.savez_compressed(folder / per_image_name(name), **arrays)


def without_per_image(folder, checkpoint="last.pt"):
    os.remove(folder / "per_image.npz")
    rec = json.loads((folder / "results.json").read_text())
    rec["checkpoint"] = f"runs/elsewhere/{os.path.basename(folder)}/{checkpoint}"  # as written at training time
    (folder / "results.json").write_text(json.dumps(rec))


def test_mcnemar_reads_the_eval_only_record_of_the_same_checkpoint(tmp_path, capsys):
    a = [True] * 5 + [False] * 15 + [True] * 30
    b = [False] * 5 + [True] * 15 + [True] * 30
    x = image_run(tmp_path, "x", "AT", 1, {"natural": a, "pgd20": a})
    y = image_run(tmp_path, "y", "PART", 1, {"natural": a, "pgd20": a})
    without_per_image(y)
    err = refused(["--mcnemar", str(x), str(y)], capsys, "eval_last_per_image.npz")
    assert "--eval-only" in err and os.path.join(str(y), "last.pt") in err
    eval_only_record(y, {"natural": b, "pgd20": a})
    path = tmp_path / "m.json"
    assert report.main(["--mcnemar", str(x), str(y), "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"B = {y} (eval_last.json: its --eval-only record)" in out and f"A = {x}\n" in out
    doc = json.loads(path.read_text())
    rows = {r["column"]: r for r in doc["mcnemar"]}
    assert rows["natural"]["p"] == pytest.approx(0.041389, abs=1e-6)
    assert doc["records"] == [str(x / "results.json"), str(y / "eval_last.json")]
    # the run's own per-image file, where there is one, comes first
    eval_only_record(x, {"natural": b, "pgd20": a})
    assert report.main(["--mcnemar", str(x), str(y), "--json", str(path)]) == 0
    assert json.loads(path.read_text())["records"][0] == str(x / "results.json")


def test_mcnemar_never_reads_the_eval_only_record_of_another_checkpoint(tmp_path, capsys):
    bits = {"natural": [True, False, True, True], "pgd20": [False, False, True, False]}
    x = image_run(tmp_path, "x", "AT", 1, bits)
    y = image_run(tmp_path, "y", "PART", 1, bits)
    without_per_image(y)
    eval_only_record(y, bits, checkpoint="best.pt")  # another checkpoint of the run: not its results
    refused(["--mcnemar", str(x), str(y)], capsys, "eval_last_per_image.npz")


@pytest.mark.slow
def test_mcnemar_reads_what_eval_only_really_writes(tmp_path, capsys):
    """End to end: two tiny runs (one draws its mask figure, written atomically); one run's per_image.npz is
    gone, --eval-only of its last.pt writes the record McNemar then reads."""
    from tests.test_scripts import SCRIPTS, constants, run
    from utils.entry import main
    assert run("part", tmp_path / "at", "--no-mask", "--seed", "1") == 0
    assert run("part", tmp_path / "part", "--seed", "1", "--mask-figure") == 0
    assert (tmp_path / "part" / "mask.png").stat().st_size > 0
    os.remove(tmp_path / "part" / "per_image.npz")
    capsys.readouterr()  # the runs' logs
    err = refused(["--mcnemar", str(tmp_path / "at"), str(tmp_path / "part")], capsys, "eval_last_per_image.npz")
    assert "--eval-only" in err
    assert main("part", constants(SCRIPTS["part"]), ["--eval-only", str(tmp_path / "part" / "last.pt")]) == 0
    capsys.readouterr()
    assert report.main(["--mcnemar", str(tmp_path / "at"), str(tmp_path / "part")]) == 0
    out = capsys.readouterr().out
    assert "(eval_last.json: its --eval-only record)" in out and "| Natural | 32 |" in out
