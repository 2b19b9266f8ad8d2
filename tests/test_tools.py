"""The report, grid and benchmark tools."""
import csv
import re
import json
import os

import pytest

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


def test_report_mean_std_and_differences(tmp_path, capsys):
    fake_run(tmp_path, "a1", "AT", 1, 80.0, 50.0, 48.0, 46.0)
    fake_run(tmp_path, "a2", "AT", 2, 82.0, 52.0, 50.0, 48.0)
    fake_run(tmp_path, "p1", "PART", 1, 84.0, 51.0, 49.0, None, n_eval_aa=None)
    fake_run(tmp_path, "p2", "PART", 2, 86.0, 53.0, 51.0, None)
    fake_run(tmp_path, "t1", "TRADES", 1, 78.0, 51.0, 49.0, 47.0, n_eval_aa=500)
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / "config.json").write_text("{}")
    assert report.main([str(tmp_path), "--csv", str(tmp_path / "t.csv"), "--seeds", "1", "2"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| 81.00 ± 1.41 | 51.00 ± 1.41 | 49.00 ± 1.41 | 47.00 ± 1.41 |" in lines["AT"]
    assert "| 85.00 ± 1.41 | 52.00 ± 1.41 | 50.00 ± 1.41 | missing |" in lines["PART"]
    assert "| +4.00 | +1.00 | +1.00 | missing |" in lines["PART − AT"]
    # a lone TRADES seed: no std, its missing seed flagged, its AA subset size shown; PART-T wholly missing
    assert "| 78.00 | 51.00 | 49.00 | 47.00 | 1 (missing 2) | 1000 (AA 500) |" in lines["TRADES"]
    assert lines["PART-T"] == "| PART-T | missing | missing | missing | missing | missing |  |"
    assert lines["PART-T − TRADES"].count("missing") == 4
    assert "MART" not in lines
    assert "crashed" in out and not re.search(r"\| [+-]?0\.00", out)  # missing is never shown as zero
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    at = next(r for r in rows if r["method"] == "AT")
    assert float(at["natural_mean"]) == 81.0 and float(at["natural_std"]) == pytest.approx(1.4142, abs=1e-4)
    part = next(r for r in rows if r["method"] == "PART")
    assert part["aa_mean"] == ""


def test_report_groups_by_data_and_model(tmp_path, capsys):
    fake_run(tmp_path, "x", "AT", 1, 90.0, 60.0, data="svhn")
    fake_run(tmp_path, "y", "AT", 1, 70.0, 40.0, model="wrn34-10")
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### cifar10, wrn34-10" in out and "### svhn, resnet18" in out


def test_report_on_nothing_exits_2(tmp_path):
    assert report.main([str(tmp_path)]) == 2


def test_grid_commands(capsys):
    assert grid.main(["--data", "svhn", "--models", "resnet18", "--seeds", "1", "2", "--", "--n-eval-aa", "500"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 * 2
    assert "python train_eval_part_t.py --data svhn --model resnet18 --no-mask --seed 2 " \
           "--out runs/svhn-resnet18/TRADES-seed2 --n-eval-aa 500" in lines
    assert all(os.path.exists(line.split()[1]) for line in lines)


def test_benchmark_runs_and_writes_its_record(tmp_path):
    out = tmp_path / "b.json"
    rec = benchmark.main(["--models", "resnet18", "--width", "4", "--batch-size", "8", "--iters", "1",
                          "--warmup", "0", "--settings", "fp32", "--json", str(out)])
    saved = json.loads(out.read_text())
    r = saved["results"]["resnet18/fp32"]
    for step in ("at_step", "part_step", "mask", "pgd20_eval"):
        assert r[step]["ms_per_batch"] > 0 and r[step]["images_per_s"] > 0
    assert r["part_over_at"] > 0 and saved["device"] and saved["versions"]["torch"]
    assert rec["results"].keys() == saved["results"].keys()
