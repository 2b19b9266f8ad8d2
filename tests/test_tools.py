"""The report, grid and benchmark tools."""
import csv
import json
import os
import re
import shlex
import sys

import pytest

from tests.conftest import ROOT
from tools import benchmark, device_check, grid, make_cifar10_subset, make_cifar10c, report, studies


def fake_run(root, name, method, seed, natural, pgd20, mma=None, aa=None, data="cifar10", model="resnet18",
             n_eval=1000, n_eval_aa=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    rec = {"method": method, "data": data, "model": model, "seed": seed, "natural": natural, "pgd20": pgd20,
           "mma": mma, "aa": aa, "n_eval": n_eval, "n_eval_aa": n_eval_aa}
    (folder / "results.json").write_text(json.dumps(rec))
    return folder


def row_cells(out, label):
    """The cells of the table row labelled `label` (first column), without the label."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in:\n{out}")


def diff_cells(out, label, column):
    """[mean, 95% CI, interval kind] of the difference `label` on `column` (its title) in the differences table."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[:2] == [label, column]:
            return cells[2:]
    raise AssertionError(f"no difference {label!r} / {column!r} in:\n{out}")


def test_report_mean_std_and_differences(tmp_path, capsys):
    fake_run(tmp_path, "a1", "AT", 1, 80.0, 50.0, 48.0, 46.0)
    fake_run(tmp_path, "a2", "AT", 2, 82.0, 52.0, 50.0, 48.0)
    fake_run(tmp_path, "p1", "PART", 1, 84.0, 51.0, 49.0, None, n_eval_aa=None)
    fake_run(tmp_path, "p2", "PART", 2, 86.0, 53.0, 51.0, None)
    fake_run(tmp_path, "t1", "TRADES", 1, 78.0, 51.0, 49.0, 47.0, n_eval_aa=500)
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / "config.json").write_text("{}")
    assert report.main([str(tmp_path), "--csv", str(tmp_path / "t.csv"), "--seeds", "1", "2",
                        "--diff", "PART", "AT"]) == 0
    out = capsys.readouterr().out
    assert row_cells(out, "AT")[:4] == ["81.00 ± 1.41 [2]", "51.00 ± 1.41 [2]", "49.00 ± 1.41 [2]", "47.00 ± 1.41 [2]"]
    assert row_cells(out, "PART")[:4] == ["85.00 ± 1.41 [2]", "52.00 ± 1.41 [2]", "50.00 ± 1.41 [2]", "missing"]
    # two pairs with equal differences on every seed: no spread to estimate, so no interval (not a zero-width one)
    assert diff_cells(out, "PART − AT", "Natural") == ["+4.00", "no spread (all 2 differences equal)", "paired t, n=2"]
    assert diff_cells(out, "PART − AT", "AA") == ["missing", "", ""]
    # --diff PART AT repeats the masked row against its baseline: listed once
    assert sum(line.startswith("| PART − AT | Natural |") for line in out.splitlines()) == 1
    # a lone TRADES seed: no std, its missing seed flagged, its AA subset size shown; PART-T wholly missing
    assert row_cells(out, "TRADES") == ["78.00 [1]", "51.00 [1]", "49.00 [1]", "47.00 [1]", "1 (missing 2)",
                                        "1000 (AA 500)"]
    assert [diff_cells(out, "PART-T − TRADES", c)[0] for c in ("Natural", "PGD-20", "MMA", "AA")] == ["missing"] * 4
    assert "MART" not in out
    assert "crashed" in out and not re.search(r"\| [+-]?0\.00", out)  # missing is never shown as zero
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    at = next(r for r in rows if r["method"] == "AT")
    assert float(at["natural_mean"]) == 81.0 and float(at["natural_std"]) == pytest.approx(1.4142, abs=1e-4)
    part = next(r for r in rows if r["method"] == "PART")
    assert part["aa_mean"] == "" and part["aa_n"] == "0"


def test_report_pooled_std_weights_each_group_by_its_degrees_of_freedom(tmp_path, capsys):
    for seed, nat in zip((1, 2), (80.0, 82.0)):           # variance 2, 1 degree of freedom
        fake_run(tmp_path, f"a{seed}", "AT", seed, nat, 50.0)
    for seed, nat in zip((1, 2, 3), (84.0, 88.0, 92.0)):  # variance 16, 2 degrees of freedom
        fake_run(tmp_path, f"p{seed}", "PART", seed, nat, 50.0 + seed)
    fake_run(tmp_path, "t1", "TRADES", 1, 10.0, 10.0)      # one run: no variance, left out
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # seeds 1,2,3 against 1,2: paired over the shared seeds 1 and 2 (natural 84-80, 88-82)
    assert diff_cells(out, "PART − AT", "Natural")[0] == "+5.00" and diff_cells(out, "PART − AT", "Natural")[2] == \
        "paired t, n=2"
    cells = row_cells(out, "Pooled std")
    assert report.main([str(tmp_path), "--per-seed"]) == 0
    table = capsys.readouterr().out.split("Paired difference")[1]
    # seeds 1 and 2 only: natural 84-80, 88-82; PGD-20 51-50, 52-50
    assert row_cells(table, "PART − AT") == [f"+{5.0:.2f} ± {2 ** 0.5:.2f} [2]", f"+{1.5:.2f} ± {0.5 ** 0.5:.2f} [2]"]
    per_seed = [line.split("|")[2:-1] for line in table.split("Per-seed difference")[1].splitlines()
                if line.startswith("| PART − AT |")]
    assert [[c.strip() for c in cells] for cells in per_seed] == [["1", "+4.00", "+1.00"], ["2", "+6.00", "+2.00"]]
    assert cells[0] == f"{((2 * 1 + 16 * 2) / 3) ** 0.5:.2f}"
    assert cells[1] == f"{((0 * 1 + 1 * 2) / 3) ** 0.5:.2f}"


def test_report_groups_by_data_and_model(tmp_path, capsys):
    fake_run(tmp_path, "x", "AT", 1, 90.0, 60.0, data="svhn")
    fake_run(tmp_path, "y", "AT", 1, 70.0, 40.0, model="wrn34-10")
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### cifar10, wrn34-10" in out and "### svhn, resnet18" in out


def real_run(root, name, argv, natural, seed=1, metrics=None):
    """A run folder as the scripts write it: results.json with the resolved config (2 epochs, 1 of warm-up, unless
    argv says otherwise), and metrics.csv."""
    from tests.test_scripts import SCRIPTS, constants
    from utils.config import parse
    cfg, _ = parse("part", constants(SCRIPTS["part"]), ["--data", "synthetic", "--seed", str(seed), "--epochs", "2",
                                                        "--warm-up", "1", *argv])
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    rec = {"method": cfg["method"], "data": "synthetic", "model": "resnet18", "seed": seed, "natural": natural,
           "pgd20": natural / 2, "n_eval": cfg["n_eval"] or 500, "n_eval_aa": None, "config": cfg}
    (folder / "results.json").write_text(json.dumps(rec))
    rows = metrics or [(1, "warm-up", natural - 10, 8.0, 1.0), (2, "part", natural, 7.2, 0.2)]
    (folder / "metrics.csv").write_text("epoch,phase,natural,pgd20,budget_mean,eps_share\n" + "".join(
        f"{e},{ph},{n},{n / 2},{b},{s}\n" for e, ph, n, b, s in rows))
    return folder


def test_report_keeps_configurations_apart_and_warns_on_a_duplicate_seed(tmp_path, capsys):
    real_run(tmp_path, "a", [], 80.0)
    real_run(tmp_path, "b", [], 82.0, seed=2)
    real_run(tmp_path, "c", ["--cam", "layercam"], 70.0)
    real_run(tmp_path, "d", ["--epochs", "40"], 60.0)  # another schedule: another row, never averaged in
    real_run(tmp_path, "e", ["--no-mask"], 75.0)
    real_run(tmp_path, "f", ["--no-mask", "--low-epsilon", "5/255"], 76.0, seed=2)  # unused by AT: same AT row
    real_run(tmp_path, "g", ["--no-mask", "--n-eval", "100"], 90.0)  # another test subset: another row
    real_run(tmp_path, "h", [], 84.0)  # seed 1 again, same configuration: a warning, and not averaged
    assert report.main([str(tmp_path), "--plot", str(tmp_path / "c.png"), "--per-seed"]) == 0
    cap = capsys.readouterr()
    assert "two runs of one configuration with seed 1" in cap.err and "/h" in cap.err
    out = cap.out
    assert row_cells(out, "PART")[0] == "83.00 ± 1.41 [2]"  # seeds 1 (the newer run, h) and 2
    assert row_cells(out, "PART (cam=layercam)")[0] == "70.00 [1]"
    assert row_cells(out, "PART (epochs=40, lr_milestones=40)")[0] == "60.00 [1]"
    assert row_cells(out, "AT")[0] == "75.50 ± 0.71 [2]"
    assert row_cells(out, "AT (n_eval=100)")[0] == "90.00 [1]"
    assert diff_cells(out, "PART − AT", "Natural")[0] == "+7.50"
    assert row_cells(out, "PART")[-4:-2] == ["7.20 ± 0.00 [2]", "0.200 ± 0.000 [2]"]  # budgets after warm-up
    assert row_cells(out, "AT")[-4] == "7.20 ± 0.00 [2]"
    from PIL import Image
    with Image.open(tmp_path / "c.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200


def test_report_budget_columns_skip_a_blank_cell(tmp_path, capsys):
    folder = real_run(tmp_path, "a", ["--epochs", "3"], 80.0)
    (folder / "metrics.csv").write_text("epoch,phase,natural,pgd20,budget_mean,eps_share\n1,warm-up,70,35,8,1\n"
                                        "2,part,80,40,7.0,0.2\n3,part,80,40,7.4,\n")  # no share at epoch 3
    assert report.main([str(tmp_path)]) == 0
    assert row_cells(capsys.readouterr().out, "PART")[-4:-2] == ["7.20 [1]", "0.200 [1]"]


def test_report_curves_say_when_they_come_from_some_of_a_rows_runs(tmp_path):
    real_run(tmp_path, "a", [], 80.0)
    (real_run(tmp_path, "b", [], 82.0, seed=2) / "metrics.csv").unlink()
    from tools.reporting.groups import group_runs
    from tools.reporting.panels import curves
    from tools.reporting.records import find_runs, load_runs
    runs, _ = load_runs(find_runs([str(tmp_path)]))
    drawn = curves(group_runs(runs, print))
    assert list(drawn) == ["PART [curves of 1 of its 2 runs]"] and drawn[list(drawn)[0]]["natural"][0] == [70.0, 80.0]


def test_report_on_nothing_exits_2(tmp_path):
    assert report.main([str(tmp_path)]) == 2


def test_grid_commands(capsys):
    assert grid.main(["--data", "svhn", "--models", "resnet18", "--seeds", "1", "2", "--", "--n-eval-aa", "500"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 * 2
    python = studies.interpreter()
    assert os.path.samefile(python, sys.executable)
    assert f"{python} train_eval_part_t.py --data svhn --model resnet18 --no-mask --seed 2 " \
           "--out runs/main/svhn-resnet18-n-eval-aa500/TRADES-seed2 --n-eval-aa 500" in lines
    assert all(os.path.exists(os.path.join(ROOT, shlex.split(line)[1])) for line in lines)


def test_grid_rejects_unknown_choices(capsys):
    for argv in (["--data", "cifar11"], ["--models", "resnet19"], ["--study", "figure2"],
                 ["--study", "cam", "--methods", "PART-scorecam"], ["--", "--out", "x"], ["--root", ""],
                 ["--tag", "a/b"], ["--tag", ".."], ["--tag", "x y"]):
        assert grid.main(argv) == 2, argv


@pytest.mark.slow
def test_grid_piped_into_head_stops_without_a_traceback():
    import subprocess
    argv = [sys.executable, "-m", "tools.grid", "--seeds", *map(str, range(1, 41))]  # more than a pipe holds
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "train_eval_part" in proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_grid_studies_name_their_rows_and_folders(capsys):
    assert grid.main(["--study", "figure1", "--data", "cifar10", "--models", "resnet18", "--seeds", "1",
                      "--", "--cam", "layercam"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert any("--region-eps 12/255 12/255 6/255 12/255" in l and "/AT-br6-seed1" in l for l in lines)
    assert all("runs/figure1/cifar10-resnet18-camlayercam/" in l for l in lines)  # overrides name the folder
    assert grid.main(["--study", "mask-source", "--data", "cifar10", "--models", "resnet18", "--seeds", "1", "2",
                      "--tag", ""]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(l)[shlex.split(l).index("--out") + 1] for l in lines[:4]] == [
        f"runs/mask-source/cifar10-resnet18/{row}-seed1" for row in ("AT", "PART-cam", "PART-official", "PART-permuted")]


def test_benchmark_runs_and_writes_its_record(tmp_path, capsys):
    out = tmp_path / "new" / "b.json"  # its folder is created
    rec = benchmark.benchmark(["--models", "resnet18", "--width", "4", "--batch-size", "8", "--iters", "1",
                               "--warmup", "1", "--settings", "fp32", "--json", str(out)])
    saved = json.loads(out.read_text())
    r = saved["results"]["resnet18/fp32"]
    for step in ("at_step", "part_step", "mask", "official_mask", "pgd20_eval"):
        assert r[step]["ms_per_batch"] > 0 and r[step]["images_per_s"] > 0
    assert r["part_over_at"] > 0 and saved["device"] and saved["versions"]["torch"] and saved["width"] == 4
    assert rec["results"].keys() == saved["results"].keys()
    assert benchmark.main(["--warmup", "0"]) == 2  # an unwarmed first call would be timed
    assert "--warmup" in capsys.readouterr().err
    assert benchmark.main(["--eval", "--clock", "cpu", "--models", "resnet18", "--width", "4", "--eval-batch-size",
                           "16", "--iters", "2", "--eval-attacks", "natural", "pgd20", "cw", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["results"]["resnet18/eval"]
    assert r["pgd20"]["vs_pgd20"] == 1.0 and r["cw"]["s"] > 0 and r["natural"]["vs_pgd20"] < 1


def test_benchmark_epoch_mode_times_with_the_clock_it_names(tmp_path, capsys, monkeypatch):
    import itertools
    ticks = itertools.count(step=50.0)  # a CPU clock that advances 50 s per reading
    monkeypatch.setitem(benchmark.CLOCKS, "cpu", lambda: next(ticks))
    rec = benchmark.benchmark(["--epoch", "--clock", "cpu", "--models", "resnet18", "--width", "8", "--batch-size", "8",
                               "--n-train", "8", "--settings", "fp32", "--json", str(tmp_path / "b.json")])
    assert rec["clock"] == "cpu" and [r["measured_s"] for r in rec["speed"]] == [50.0, 50.0]
    assert benchmark.main(["--eval", "--settings", "bf16", "--json", str(tmp_path / "b.json")]) == 2  # fp32 anyway
    assert "--settings" in capsys.readouterr().err


def test_report_names_region_budgets_by_quadrant(tmp_path, capsys):
    for seed, (ul, br) in enumerate(((60.0, 58.0), (61.0, 58.5)), start=1):
        real_run(tmp_path, f"ul{seed}", ["--mask-source", "regions", "--region-eps", "6/255", "12/255", "12/255",
                                         "12/255", "--warm-up", "0"], ul, seed=seed)
        real_run(tmp_path, f"br{seed}", ["--mask-source", "regions", "--region-eps", "12/255", "12/255", "6/255",
                                         "12/255", "--warm-up", "0"], br, seed=seed)
    assert report.main([str(tmp_path), "--diff", "ul6,", "br6,"]) == 0
    out = capsys.readouterr().out
    assert row_cells(out, "AT (region_eps=ul6,ur12,br12,bl12)")[0] == "60.50 ± 0.71 [2]"
    assert diff_cells(out, "AT (region_eps=ul6,ur12,br12,bl12) − AT (region_eps=ul12,ur12,br6,bl12)",
                      "Natural")[0] == "+2.25"


def test_report_never_gives_two_configurations_one_label(tmp_path, capsys):
    regions = ["--mask-source", "regions", "--warm-up", "0", "--region-eps", "6/255", "12/255", "12/255", "12/255"]
    for seed in (1, 2):  # plain AT and the regions source: both are "AT", and region_eps is only in one of them
        real_run(tmp_path / "fig", f"uni{seed}", ["--no-mask", "--warm-up", "0"], 70.0 + seed, seed=seed)
        real_run(tmp_path / "fig", f"ul{seed}", regions, 60.0 + seed, seed=seed)
    assert report.main([str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    labels = [line.split("|")[1].strip() for line in out.split("Recorded")[0].splitlines() if line.startswith("| AT")]
    assert len(labels) == len(set(labels)) == 2, labels
    assert row_cells(out, "AT")[0] == "71.50 ± 0.71 [2]"
    regions_label = next(label for label in labels if "region_eps=ul6,ur12,br12,bl12" in label)
    assert row_cells(out, regions_label)[0] == "61.50 ± 0.71 [2]"
    assert diff_cells(out, f"{regions_label} − AT", "Natural")[0] == "-10.00"
    # records without a config on other test subsets are not averaged either
    fake_run(tmp_path / "old", "a1", "AT", 1, 80.0, 50.0, n_eval=1000)
    fake_run(tmp_path / "old", "a2", "AT", 2, 90.0, 50.0, n_eval=100)
    assert report.main([str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    assert row_cells(out, "AT (n_eval=1000)")[0] == "80.00 [1]" and row_cells(out, "AT (n_eval=100)")[0] == "90.00 [1]"


def test_report_diff_that_names_several_rows_or_one_row_twice_exits_2(tmp_path, capsys):
    fake_run(tmp_path, "a1", "AT", 1, 80.0, 50.0)
    fake_run(tmp_path, "p1", "PART", 1, 82.0, 50.0)
    for argv, word in ((["--diff", "A", "AT"], "part of 2 row labels"), (["--diff", "PART", "PAR"], "both name")):
        assert report.main([str(tmp_path), *argv]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and cap.err.startswith("error: --diff") and cap.err.count("\n") == 1 and word in cap.err
    # a side that names no row anywhere: exit 2 with the labels there are, before any output
    assert report.main([str(tmp_path), "--diff", "PART", "NOPE"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == "error: --diff 'NOPE' names no row; the rows are: AT; PART\n"
    # a side that names a row in one table (data set, model) but not in another: missing there
    fake_run(tmp_path, "s1", "AT", 1, 90.0, 60.0, data="svhn")
    assert report.main([str(tmp_path), "--diff", "PART", "AT"]) == 0
    out = capsys.readouterr().out
    svhn = out[out.index("### svhn"):]
    assert diff_cells(svhn, "PART − AT", "Natural")[0] == "missing"
    assert diff_cells(out[:out.index("### svhn")], "PART − AT", "Natural")[0] == "+2.00"


# ----------------------------------------------------------------------------------------------------
# bad input to the tools: exit 2 and one line, nothing written
# ----------------------------------------------------------------------------------------------------
# (tool, argv (TMP: the test's folder), a word the line must contain)
TOOL_BAD_INPUT = [
    (benchmark, ["--width", "0"], "--width"),
    (benchmark, ["--batch-size", "0"], "--batch-size"),
    (benchmark, ["--device", "cuda:99"], "--device"),
    (benchmark, ["--json", "TMP"], "is a folder"),
    (benchmark, ["--json", "TMP/afile/b.json"], "which is a file"),
    (benchmark, ["--data", "cifar10", "--data-dir", "TMP/nothing"], "not found"),
    (benchmark, ["--eval-attacks", "pgd0"], "pgd0"),
    (benchmark, ["--eval", "--eval-attacks", "pgd20", "natural", "pgd20"], "--eval-attacks names pgd20 more than once"),
    (benchmark, ["--epoch", "--iters", "3"], "--iters does nothing with --epoch"),  # it timed one epoch
    (benchmark, ["--eval", "--batch-size=64"], "--batch-size does nothing with --eval"),
    (benchmark, ["--batch-size", "501"], "--batch-size 501 is more than"),  # synthetic: 2000 train, 500 test images
    (benchmark, ["--epoch", "--n-train", "4", "--batch-size", "8"], "--batch-size 8 is more than the 4 training"),
    (benchmark, ["--eval", "--eval-batch-size", "501"], "--eval-batch-size 501 is more than"),
    # an output is never a file the tool reads (here the data file it would time on)
    (benchmark, ["--data", "cifar10-npz", "--data-dir", "TMP/afile", "--json", "TMP/afile"], "which this command reads"),
    (device_check, ["--data-dir", "TMP/afile", "--json", "TMP/afile"], "which this command reads"),
    (make_cifar10_subset, ["--cifar-dir", "TMP", "--out", "TMP/test_batch", "--overwrite"], "which this command reads"),
    (make_cifar10c, ["--out", "TMP/c", "--n", "-495"], "--n"),
    (make_cifar10c, ["--out", "TMP/afile"], "is a file"),
    (make_cifar10c, ["--out", "TMP/full"], "already holds files"),
    (make_cifar10c, ["--out", "TMP/c", "--data", "cifar10", "--data-dir", "TMP/nothing"], "not found"),
    (make_cifar10c, ["--out", "TMP/c", "--seed", "-1"], "--seed"),
    (make_cifar10c, ["--out", "TMP/c", "--data", "synthetic", "--n", "501"], "--n 501 is more than the 500"),
    (make_cifar10c, ["--out", "TMP/c", "--corruptions", "fog", "fog"], "names fog more than once"),
    (make_cifar10c, ["--out", ""], "must not be empty"),
    (report, ["TMP/runs", "--csv", "TMP"], "is a folder"),
    (report, ["TMP/runs", "--csv", "TMP/afile/t.csv"], "which is a file"),
    (report, ["TMP/runs", "--plot", "TMP/curves.xyz"], ".xyz"),
    (report, ["TMP/nothing"], "no such file"),
    (report, ["TMP/runs", "--seeds", "x"], "--seeds"),
    (report, ["TMP/runs", "--seeds", "1", "2", "1"], "--seeds names 1 more than once"),
    (report, ["TMP/runs", "--json", "TMP"], "is a folder"),
    (report, ["TMP/runs", "--diff", "a", "b", "--plot-diff", "TMP/d.xyz"], ".xyz"),
    (report, ["--mcnemar", "TMP/runs", "TMP/nothing"], "results.json"),
    (report, ["--mcnemar", "TMP/runs/a1", "TMP/runs/a1/"], "one run folder twice"),
    (report, ["TMP/runs", "--csv", "TMP/out", "--json", "TMP/out"], "--csv and --json name one file"),
    (report, ["TMP/runs", "--diff", "a", "b", "--plot", "TMP/p.png", "--plot-diff", "TMP/p.png"], "name one file"),
    (report, [], "--mcnemar"),
]


@pytest.mark.parametrize("tool,argv,word", TOOL_BAD_INPUT,
                         ids=[f"{t.__name__.split('.')[-1]} {' '.join(a)}"[:50] for t, a, _ in TOOL_BAD_INPUT])
def test_tools_refuse_bad_input_with_one_line(tool, argv, word, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    fake_run(tmp_path / "runs", "a1", "AT", 1, 80.0, 50.0)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert tool.main([a.replace("TMP", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and word in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written or deleted


def test_report_finds_runs_below_a_folder_that_holds_a_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    fake_run(tmp_path, "a1", "AT", 1, 80.0, 50.0)
    assert report.main([str(tmp_path)]) == 0
    assert row_cells(capsys.readouterr().out, "AT")[0] == "80.00 [1]"


def test_one_reader_of_a_runs_record_returns_it_checked_or_one_error_naming_the_file(tmp_path):
    """utils/records.read_record, which the report, the grid and the device check share: the record with its
    seed and settings, or RecordError (a ValueError) saying which file and what is wrong, a missing one too."""
    from utils.records import RecordError, read_record
    rec = read_record(fake_run(tmp_path, "good", "AT", 1, 80.0, 50.0))
    assert rec["seed"] == 1 and rec["settings"] == {"method": "AT"} and rec["natural"] == 80.0
    (fake_run(tmp_path, "cut", "AT", 1, 80.0, 50.0) / "results.json").write_text('{"method": "AT", "se')
    for folder, why in [("cut", "not valid JSON"), ("none", "cannot be read")]:
        with pytest.raises(RecordError) as e:
            read_record(tmp_path / folder)
        assert isinstance(e.value, ValueError) and why in e.value.why
        assert e.value.path == str(tmp_path / folder / "results.json") and str(e.value).startswith(e.value.path)


def test_report_leaves_out_broken_files_and_names_them(tmp_path, capsys):
    good = fake_run(tmp_path, "good", "AT", 1, 80.0, 50.0)
    (good / "metrics.csv").write_text("epoch,phase,natural,pgd20,budget_mean,eps_share\n1,plain,70,30,8,1\n"
                                      "2,plain,abc,31,8,1\nthree,plain,72,32,8,1\n")
    headless = fake_run(tmp_path, "headless", "PART", 1, 82.0, 50.0)
    (headless / "metrics.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x01binary\n1,2,3\n")
    broken = {"truncated": '{"method": "AT", "seed"', "list": "[]", "latin1": None,
              "noseed": json.dumps({"method": "AT", "natural": 1.0}),
              "variant": json.dumps({"method": "X", "seed": 2, "config": {"variant": "nope"}}),
              "listvariant": json.dumps({"method": "X", "seed": 2, "config": {"variant": ["part"]}}),
              "text": json.dumps({"method": "AT", "seed": 3, "natural": "high"}),
              "percent": json.dumps({"method": "AT", "seed": 4, "natural": 175.0}),
              "edited": json.dumps({"method": "PART", "seed": 5, "natural": 1.0, "config": {"method": "AT"}}),
              "moved": json.dumps({"method": "AT", "data": "svhn", "seed": 6, "natural": 1.0,
                                   "config": {"data": "cifar10"}}),
              "evalseed": json.dumps({"method": "PART", "seed": 7, "natural": 1.0,
                                      "config": {"variant": "part", "eval_attacks": ["natural", "seed"]}}),
              "listdata": json.dumps({"method": "PART", "seed": 8, "natural": 1.0,
                                      "config": {"variant": "part", "data": ["cifar10"]}}),
              "nanregion": json.dumps({"method": "PART", "seed": 9, "natural": 1.0,
                                       "config": {"variant": "part", "region_eps": [float("nan")] * 4}}),
              "pifint": json.dumps({"method": "AT", "seed": 10, "natural": 1.0, "per_image_file": 5}),
              "pifpath": json.dumps({"method": "AT", "seed": 11, "natural": 1.0,
                                     "per_image_file": "../good/per_image.npz"}),
              "longint": '{"method": "AT", "seed": ' + "1" * 5000 + "}",
              "deep": "[" * 100000}
    for name, text in broken.items():
        folder = fake_run(tmp_path, name, "AT", 9, 0.0, 0.0)
        if text is None:
            (folder / "results.json").write_bytes('{"method": "\xe9"}'.encode("latin-1"))
        else:
            (folder / "results.json").write_text(text)
    csv_path = tmp_path / "new" / "t.csv"
    assert report.main([str(tmp_path), "--csv", str(csv_path), "--plot", str(tmp_path / "new" / "c.png")]) == 0
    cap = capsys.readouterr()
    assert row_cells(cap.out, "AT")[0] == "80.00 [1]" and "Traceback" not in cap.err  # the good run alone
    left_out = cap.out.split("Files left out")[1]
    for name, why in [("truncated", "not valid JSON"), ("list", "JSON list"), ("latin1", "not UTF-8"),
                      ("noseed", "seed"), ("variant", "unknown variant 'nope'"), ("listvariant", "unknown variant ['part']"), ("text", "natural is 'high'"),
                      ("percent", "not an accuracy in percent"), ("edited", "its method 'PART' is not its config's 'AT'"),
                      ("moved", "its data 'svhn' is not its config's 'cifar10'"),
                      ("evalseed", "impossible --eval-attacks (unknown evaluation attack 'seed'"),
                      ("listdata", "impossible --data"), ("nanregion", "impossible --region-eps"),
                      ("pifint", "its per_image_file 5 is not the name of a file beside it"),
                      ("pifpath", "per_image_file '../good/per_image.npz' is not the name"),
                      ("longint", "not a run's record (ValueError"), ("deep", "not a run's record (RecursionError")]:
        assert f"{name}/results.json: " in left_out and why in left_out, (name, left_out)
    assert "good/metrics.csv: 2 malformed row(s)" in left_out  # a number that is not one, an epoch that is not one
    assert "headless/metrics.csv: has no epoch column" in left_out
    assert csv_path.is_file() and (tmp_path / "new" / "c.png").is_file()


def test_a_report_with_no_readable_run_exits_2_naming_one(tmp_path, capsys):
    for seed, natural in ((1, float("nan")), (2, 175.0)):
        folder = fake_run(tmp_path, f"a{seed}", "AT", seed, 80.0, 50.0)
        (folder / "results.json").write_text(json.dumps({"method": "AT", "seed": seed, "natural": natural}))
    assert report.main([str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1, cap
    assert "no run could be read" in cap.err and "results.json" in cap.err and "1 more" in cap.err


def test_report_times_sum_every_epoch_of_a_run(tmp_path, capsys):
    """--times: training and per-epoch-check seconds are the sums over metrics.csv (a resumed run's epochs all
    count), the epoch range its min-max, the final evaluation from results.json; a run without them shows '-'."""
    run = fake_run(tmp_path, "a", "AT", 1, 80.0, 50.0)
    rec = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**rec, "eval_time_s": 121.4}))
    (run / "metrics.csv").write_text("epoch,phase,epoch_time_s,eval_time_s\n1,plain,300.2,20\n2,plain,410.6,25\n"
                                     "3,plain,350,24.5\n")
    fake_run(tmp_path, "b", "AT", 2, 81.0, 51.0)
    assert report.main([str(tmp_path), "--times"]) == 0
    rows = [[c.strip() for c in line.split("|")[2:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| AT |") and line.count("|") == 8]
    assert rows == [["1", "3", "1061", "300–411", "70", "121"], ["2", "-", "-", "-", "-", "-"]]
    assert report.main(["--mcnemar", str(run), str(tmp_path / "b"), "--times"]) == 2
    with open(run / "metrics.csv", "a") as f:
        f.write("4,plain,slow,20\n")  # a time that is not a number: the row is left out and named, no traceback
    assert report.main([str(tmp_path), "--times"]) == 0
    assert "a/metrics.csv: 1 malformed row(s)" in capsys.readouterr().out


def test_report_uses_the_last_row_of_a_repeated_epoch(tmp_path, capsys):
    """A metrics.csv that repeats an epoch (a hand-edit, or an append after a crash) counts that epoch once, with
    its last row, as a resume trims it; the report says so."""
    run = fake_run(tmp_path, "run", "PART", 1, 80.0, 50.0)
    (run / "metrics.csv").write_text("epoch,phase,budget_mean,eps_share\n1,part,8,1\n2,part,8,1\n2,part,10,0.5\n")
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| Method"))
    col = [c.strip() for c in header.strip().strip("|").split("|")].index("Budget (1/255)") - 1
    assert row_cells(out, "PART")[col] == "9.00 [1]"  # (8 + 10) / 2, not (8 + 8 + 10) / 3
    assert "run/metrics.csv: 1 repeated epoch row(s); the last row of each epoch is used" in out


def test_make_cifar10c_writes_whole_folders_only(tmp_path, capsys, monkeypatch):
    """With a stand-in for imagecorruptions: the folder appears complete or not at all, so after Ctrl-C the same
    command runs again."""
    import types

    import numpy as np
    calls = []

    def corrupt(x, corruption_name, severity):
        calls.append(1)
        if interrupt and len(calls) > 3:
            raise KeyboardInterrupt
        return 255 - x

    fake = types.SimpleNamespace(corrupt=corrupt, corruption_dict={"saturate": None, "other": None})
    monkeypatch.setitem(sys.modules, "imagecorruptions", fake)
    argv = ["--data", "synthetic", "--n", "2", "--out", str(tmp_path / "c"), "--corruptions", "saturate"]
    interrupt = True
    assert make_cifar10c.main(argv) == 130
    assert os.listdir(tmp_path) == [] and "interrupted" in capsys.readouterr().err
    interrupt = False
    assert make_cifar10c.main(argv) == 0
    assert sorted(os.listdir(tmp_path / "c")) == ["labels.npy", "saturate.npy"] and os.listdir(tmp_path) == ["c"]
    assert np.load(tmp_path / "c" / "saturate.npy").shape == (10, 32, 32, 3)
    assert make_cifar10c.main(argv[:-1] + ["nope"]) == 2  # an --out that holds files, and an unknown corruption
    assert make_cifar10c.main([*argv[:5], str(tmp_path / "d"), "--corruptions", "nope"]) == 2
    assert "nope is not a CIFAR-10-C corruption" in capsys.readouterr().err
    assert make_cifar10c.main([*argv[:5], str(tmp_path / "d"), "--corruptions", "fog"]) == 2  # a published name
    assert "imagecorruptions has no fog" in capsys.readouterr().err  # the installed package cannot make
