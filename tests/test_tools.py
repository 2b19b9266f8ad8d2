"""The report, grid and benchmark tools."""
import csv
import json
import os
import re
import shlex
import sys

import pytest

from tests.conftest import ROOT
from tools import benchmark, grid, report


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
    assert row_cells(out, "PART − AT") == ["+4.00", "+1.00", "+1.00", "missing"]
    # a lone TRADES seed: no std, its missing seed flagged, its AA subset size shown; PART-T wholly missing
    assert row_cells(out, "TRADES") == ["78.00 [1]", "51.00 [1]", "49.00 [1]", "47.00 [1]", "1 (missing 2)",
                                        "1000 (AA 500)"]
    assert row_cells(out, "PART-T − TRADES") == ["missing"] * 4
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
    assert row_cells(out, "PART − AT") == [f"{88 - 81:+.2f}*", f"{52 - 50:+.2f}*"]  # seeds 1,2,3 against 1,2
    cells = row_cells(out, "Pooled std (noise scale)")
    assert report.main([str(tmp_path), "--per-seed"]) == 0
    table = capsys.readouterr().out.split("Paired difference")[1]
    # seeds 1 and 2 only: natural 84-80, 88-82; PGD-20 51-50, 52-50
    assert row_cells(table, "PART − AT") == [f"+{5.0:.2f} ± {2 ** 0.5:.2f} [2]", f"+{1.5:.2f} ± {0.5 ** 0.5:.2f} [2]"]
    assert cells[0] == f"{((2 * 1 + 16 * 2) / 3) ** 0.5:.2f}"
    assert cells[1] == f"{((0 * 1 + 1 * 2) / 3) ** 0.5:.2f}"


def test_report_groups_by_data_and_model(tmp_path, capsys):
    fake_run(tmp_path, "x", "AT", 1, 90.0, 60.0, data="svhn")
    fake_run(tmp_path, "y", "AT", 1, 70.0, 40.0, model="wrn34-10")
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### cifar10, wrn34-10" in out and "### svhn, resnet18" in out


def real_run(root, name, argv, natural, seed=1, metrics=None):
    """A run folder as the scripts write it: results.json with the resolved config, and metrics.csv."""
    from tests.test_scripts import SCRIPTS, constants
    from utils.config import parse
    cfg, _ = parse("part", constants(SCRIPTS["part"]), ["--data", "synthetic", "--seed", str(seed), *argv])
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
    assert row_cells(out, "PART − AT")[0] == "+7.50"
    assert row_cells(out, "PART")[-4:-2] == ["7.20 ± 0.00 [2]", "0.200 ± 0.000 [2]"]  # budgets after warm-up
    assert row_cells(out, "AT")[-4] == "7.20 ± 0.00 [2]"
    from PIL import Image
    with Image.open(tmp_path / "c.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200


def test_report_on_nothing_exits_2(tmp_path):
    assert report.main([str(tmp_path)]) == 2


def test_grid_commands(capsys):
    assert grid.main(["--data", "svhn", "--models", "resnet18", "--seeds", "1", "2", "--", "--n-eval-aa", "500"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 * 2
    python = grid.interpreter()
    assert os.path.samefile(python, sys.executable)
    assert f"{python} train_eval_part_t.py --data svhn --model resnet18 --no-mask --seed 2 " \
           "--out runs/main/svhn-resnet18-n-eval-aa500/TRADES-seed2 --n-eval-aa 500" in lines
    assert all(os.path.exists(os.path.join(ROOT, shlex.split(line)[1])) for line in lines)


def test_grid_rejects_unknown_choices(capsys):
    for argv in (["--data", "cifar11"], ["--models", "resnet19"], ["--study", "figure2"],
                 ["--study", "cam", "--methods", "PART-scorecam"], ["--", "--out", "x"]):
        with pytest.raises(SystemExit) as e:
            grid.main(argv)
        assert e.value.code == 2, argv


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


def test_benchmark_runs_and_writes_its_record(tmp_path):
    out = tmp_path / "b.json"
    rec = benchmark.main(["--models", "resnet18", "--width", "4", "--batch-size", "8", "--iters", "1",
                          "--warmup", "1", "--settings", "fp32", "--json", str(out)])
    saved = json.loads(out.read_text())
    r = saved["results"]["resnet18/fp32"]
    for step in ("at_step", "part_step", "mask", "official_mask", "pgd20_eval"):
        assert r[step]["ms_per_batch"] > 0 and r[step]["images_per_s"] > 0
    assert r["part_over_at"] > 0 and saved["device"] and saved["versions"]["torch"]
    assert rec["results"].keys() == saved["results"].keys()
    with pytest.raises(SystemExit):
        benchmark.main(["--warmup", "0"])  # an unwarmed first call would be timed
    rec = benchmark.main(["--eval", "--clock", "cpu", "--models", "resnet18", "--width", "4", "--eval-batch-size", "16", "--iters", "2",
                          "--eval-attacks", "natural", "pgd20", "cw", "--json", str(out)])
    r = rec["results"]["resnet18/eval"]
    assert r["pgd20"]["vs_pgd20"] == 1.0 and r["cw"]["s"] > 0 and r["natural"]["vs_pgd20"] < 1
