"""A record, a run folder or a table never mixes two runs, and flags that would be ignored or repeated are refused:
resume from a checkpoint outside --out or from an earlier epoch, --eval-only into another run's folder or with
training flags it would ignore, tool outputs over a run's own files, a study whose rows would be one run."""
import json
import os
import shutil

import pytest
import torch

from tests.test_reliability import call
from tests.test_scripts import SCRIPTS, TINY, constants, run, same_weights, weights
from tools import benchmark, flags, report
from tools.studies import check_extra
from utils.config import parse
from utils.entry import main as main_
from utils.metrics_csv import read_metrics
from utils.runs import drop_later_files, read_checkpoint


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------------------------------------
def test_resume_from_a_checkpoint_outside_out_is_refused_and_leaves_the_folder_alone(three, tmp_path, capsys):
    other = tmp_path / "other"
    assert run("part", other, "--seed", "2", "--eval-attacks", "natural") == 0
    before = {f: (other / f).read_bytes() for f in os.listdir(other)}
    code, err = call("part", [*TINY, "--epochs", "3", "--eval-attacks", "natural", "--resume",
                              str(three / "epoch_1.pt"), "--out", str(other)], capsys)
    assert code == 2 and "lies outside --out" in err and f"--out {three}" in err
    assert len(err.strip().splitlines()) == 1
    assert {f: (other / f).read_bytes() for f in os.listdir(other)} == before


def test_resuming_from_an_earlier_epoch_makes_last_pt_that_epoch(three, tmp_path):
    out = copy_run(three, tmp_path / "r")
    gone = drop_later_files(str(out), 1, str(out / "epoch_1.pt"))
    assert read_checkpoint(str(out / "last.pt"))["epoch"] == 1
    assert {"epoch_2.pt", "epoch_3.pt", "results.json", "last.pt"} <= set(gone)
    assert same_weights(weights(out / "last.pt"), weights(three / "epoch_1.pt"))
    # resuming from last.pt itself keeps it
    assert "last.pt" not in drop_later_files(str(out), 1, str(out / "last.pt"))


def test_resume_from_an_earlier_epoch_then_plain_resume_continues_that_trajectory(three, tmp_path, capsys,
                                                                                   monkeypatch):
    """Resumed from epoch_1.pt and stopped before epoch 2 finished: the message and a plain --resume continue from
    epoch 1, never from the discarded epoch 3, and the run ends with the weights of the uninterrupted run."""
    out = copy_run(three, tmp_path / "r")
    argv = [*TINY, "--epochs", "3", "--save-freq", "1", "--eval-attacks", "natural", "--out", str(out)]
    monkeypatch.setenv("PART_FAULT_NAN_AT", "2,0")  # the first batch of epoch 2 stops the run (exit 3)
    code, err = call("part", [*argv, "--resume", str(out / "epoch_1.pt")], capsys)
    assert code == 3 and f"the last good checkpoint is {out / 'last.pt'} (epoch 1)" in err, err
    monkeypatch.delenv("PART_FAULT_NAN_AT")
    code, err = call("part", [*argv, "--resume"], capsys)
    assert code == 0, err
    assert "(epoch 1 done)" in (out / "log.txt").read_text().split("resumed from")[-1].splitlines()[0]
    assert [r["epoch"] for r in read_metrics(str(out / "metrics.csv"))] == [1, 2, 3]
    assert same_weights(weights(out / "last.pt"), weights(three / "last.pt"))


# ----------------------------------------------------------------------------------------------------
# the report reads budgets only from a whole metrics.csv
# ----------------------------------------------------------------------------------------------------
def test_report_leaves_out_the_budget_of_a_metrics_csv_that_misses_epochs(three, tmp_path, capsys):
    out = copy_run(three, tmp_path / "r")
    capsys.readouterr()
    assert report.main([str(out)]) == 0
    whole = capsys.readouterr().out
    assert "Budget" in whole
    lines = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")  # the header and the warm-up epoch only
    assert report.main([str(out)]) == 0
    cap = capsys.readouterr()
    assert "cover epoch 1, not each of the 3 epochs" in cap.out + cap.err
    assert "Budget" not in cap.out  # no run has a budget left to show


# ----------------------------------------------------------------------------------------------------
# --eval-only
# ----------------------------------------------------------------------------------------------------
def test_eval_only_into_another_runs_folder_is_refused(three, tmp_path, capsys):
    other = tmp_path / "other"
    assert run("part", other, "--no-mask", "--eval-attacks", "natural") == 0
    before = sorted(os.listdir(other))
    code, err = call("part", ["--eval-only", str(three / "last.pt"), "--eval-attacks", "natural", "--n-eval", "8",
                              "--out", str(other)], capsys)
    assert code == 2 and "holds a run" in err and sorted(os.listdir(other)) == before
    # a folder of evaluations takes records of several checkpoints, but never one over another's of its name
    evals = tmp_path / "evals"
    argv = ["--eval-attacks", "natural", "--n-eval", "8", "--out", str(evals)]
    assert call("part", ["--eval-only", str(three / "last.pt"), *argv], capsys)[0] == 0
    assert call("part", ["--eval-only", str(three / "epoch_1.pt"), *argv], capsys)[0] == 0
    assert call("part", ["--eval-only", str(three / "last.pt"), *argv], capsys)[0] == 0  # the same one again
    code, err = call("part", ["--eval-only", str(other / "last.pt"), *argv], capsys)
    assert code == 2 and "already holds eval_last.json" in err


def test_eval_only_writes_its_own_autoattack_log_name_and_clears_a_stale_one(three, tmp_path, capsys):
    out = copy_run(three, tmp_path / "r")
    (out / "eval_last_aa_log.txt").write_text("an earlier evaluation's log\n")
    (out / "aa_log.txt").write_text("the run's own log\n")
    assert call("part", ["--eval-only", str(out / "last.pt"), "--eval-attacks", "natural", "--n-eval", "8"],
                capsys)[0] == 0
    assert not (out / "eval_last_aa_log.txt").exists()  # no AutoAttack in this evaluation, so no log of it
    assert (out / "aa_log.txt").read_text() == "the run's own log\n"


def test_mcnemar_refuses_an_eval_record_of_a_checkpoint_trained_otherwise(tmp_path, capsys):
    from tests.test_report_io import eval_only_record, refused, without_per_image
    from tests.test_stats import image_run
    bits = {"natural": [True, False, True, True], "pgd20": [False, False, True, False]}
    cfg = json.loads(json.dumps(parse("part", constants(SCRIPTS["part"]), [*TINY, "--no-mask"])[0]))
    x = image_run(tmp_path, "x", "AT", 1, bits, record={"config": cfg, "epoch": cfg["epochs"], "data": cfg["data"], "model": cfg["model"]})
    y = image_run(tmp_path, "y", "AT", 1, bits, record={"config": cfg, "epoch": cfg["epochs"], "data": cfg["data"], "model": cfg["model"]})
    without_per_image(y)
    eval_only_record(y, bits)
    rec = json.loads((y / "eval_last.json").read_text())
    rec["config"] = {**cfg, "lr": 0.1}  # another run's last.pt evaluated into y
    (y / "eval_last.json").write_text(json.dumps(rec))
    refused(["--mcnemar", str(x), str(y)], capsys, "lr: 0.01 -> 0.1")


# ----------------------------------------------------------------------------------------------------
# outputs of the tools never replace a run's own files
# ----------------------------------------------------------------------------------------------------
def test_tool_outputs_never_replace_a_runs_files(three, tmp_path, capsys):
    out = copy_run(three, tmp_path / "r")
    before = (out / "results.json").read_bytes(), (out / "results.md").read_bytes()
    capsys.readouterr()
    assert benchmark.main(["--json", str(out / "results.json"), "--width", "4"]) == 2
    assert "would replace the results.json of the run" in capsys.readouterr().err
    assert flags.main(["--out", str(out / "results.md")]) == 2
    assert "would replace the results.md of the run" in capsys.readouterr().err
    assert ((out / "results.json").read_bytes(), (out / "results.md").read_bytes()) == before


# ----------------------------------------------------------------------------------------------------
# flags that would be ignored, repeated, or make rows one run
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["--lr-milestones", "2", "2"], "2 is named twice"),
    (["--lr-milestones", "2", "1"], "not in increasing order"),
    (["--eval-attacks", "natural", "pgd20", "natural"], "natural is named twice"),
    (["--n-train", "99999"], "--n-train 99999 is more than the"),
    (["--n-train", "16"], "--batch-size 32 is more than the 16 training images an epoch uses (synthetic, --n-train)"),
])
def test_flags_that_would_mislead_are_refused(argv, words, tmp_path, capsys):
    code, err = call("part", [*TINY, "--out", str(tmp_path / "x"), *argv], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("variant,flags", [("part", []), ("part", ["--mask-source", "regions"]),
                                           ("part", ["--attack", "mma"]), ("part_t", []), ("part_m", [])])
def test_a_run_that_never_leaves_its_warm_up_is_its_baseline(variant, flags):
    """Every epoch of a masked run whose --warm-up covers them all trains the baseline at full eps: it is recorded
    under the baseline's name and is the same configuration as the baseline's --no-mask run."""
    from utils.identity import effective
    from utils.methods import METHODS
    common = ["--data", "synthetic", "--epochs", "3", *flags]
    never = parse(variant, constants(SCRIPTS[variant]), [*common, "--warm-up", "3"])[0]
    plain = parse(variant, constants(SCRIPTS[variant]), [*common, "--warm-up", "0", "--no-mask"])[0]
    masked = parse(variant, constants(SCRIPTS[variant]), [*common, "--warm-up", "2"])[0]
    assert never["method"] == plain["method"] == METHODS[variant].label(never["attack"], False)
    assert effective(never) == effective(plain) != effective(masked)


def test_a_run_that_never_leaves_its_warm_up_trains_as_its_baseline(tmp_path, capsys):
    """...and trains as it: the weights of the --no-mask run, bit for bit."""
    common = [*TINY, "--epochs", "1", "--eval-attacks", "natural"]
    assert call("part", [*common, "--warm-up", "1", "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert call("part", [*common, "--no-mask", "--out", str(tmp_path / "b")], capsys)[0] == 0
    assert same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    assert json.loads((tmp_path / "a" / "results.json").read_text())["method"] == "AT"


@pytest.mark.parametrize("study,rows,extra,words", [
    ("cam", ["PART-gradcam", "PART-layercam"], ["--no-mask"], "rows PART-gradcam and PART-layercam would train"),
    ("eps-low", ["PART-eps_low5", "PART-eps_low6"], ["--mask-source", "regions"], "would train and evaluate the same"),
    ("eps-low", ["PART-eps_low5", "PART-eps_low6"], ["--warm-up", "80"], "would train and evaluate the same"),
    ("as-published", ["AT", "AT-as-published"], ["--eval-attacks", "natural"], "rows AT and AT-as-published"),
])
def test_grid_refuses_flags_that_make_two_rows_one_run(study, rows, extra, words):
    assert words in (check_extra(study, rows, extra) or "")


def test_grid_keeps_rows_that_differ(tmp_path):
    assert check_extra("cam", ["PART-gradcam", "PART-layercam"], ["--epochs", "12", "--warm-up", "4"]) is None
    assert check_extra("as-published", ["AT", "PART", "PART-as-published"], ["--eval-attacks", "natural"]) is None


@pytest.mark.parametrize("settings,words", [(["tf32+tf32"], "names tf32 twice"),
                                            (["fast", "channels_last+tf32+torch-cam"], "are the same setting")])
def test_benchmark_refuses_a_setting_named_twice(settings, words, tmp_path, capsys):
    capsys.readouterr()
    assert benchmark.main(["--settings", *settings, "--json", str(tmp_path / "b.json")]) == 2
    assert words in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# attacks without a step
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ["pgd", "mma", "trades", "mart"])
def test_an_attack_without_steps_stays_within_every_budget(attack):
    from attacks import mma, pgd
    from attacks.trades_mart import mart_attack, trades_attack
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x = torch.rand(6, 3, 4, 4)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.arange(6) % 3
    eps = torch.where(torch.rand(6, 1, 4, 4) < 0.5, 8 / 255, 2 / 255).expand(6, 3, 4, 4)
    run_ = {"pgd": lambda: pgd(model, x, y, eps, 2 / 255, 0, official_start=8 / 255),
            "mma": lambda: mma(model, x, y, eps, 2 / 255, 0, official_start=8 / 255),
            "trades": lambda: trades_attack(model, x, y, eps, 2 / 255, 0, official_start=True),
            "mart": lambda: mart_attack(model, x, y, eps, 2 / 255, 0, official_start=True)}[attack]
    adv = run_()
    assert ((adv - x).abs() <= eps + 1e-7).all() and adv.min() >= 0 and adv.max() <= 1


# ----------------------------------------------------------------------------------------------------
# what the checks above must still let through
# ----------------------------------------------------------------------------------------------------
def test_mcnemar_reads_an_eval_record_beside_a_record_of_an_older_version(tmp_path, capsys):
    """A run recorded before later keys (and the record's epoch) existed, evaluated again with --eval-only now."""
    from tests.test_report_io import eval_only_record, without_per_image
    from tests.test_stats import image_run
    from utils.config import LATER_DEFAULTS
    bits = {"natural": [True, False, True, True], "pgd20": [False, False, True, False]}
    cfg = json.loads(json.dumps(parse("part", constants(SCRIPTS["part"]), [*TINY, "--no-mask"])[0]))
    old = {k: v for k, v in cfg.items() if k not in LATER_DEFAULTS}
    x = image_run(tmp_path, "x", "AT", 1, bits, record={"config": cfg, "epoch": cfg["epochs"], "data": cfg["data"],
                                                         "model": cfg["model"]})
    y = image_run(tmp_path, "y", "AT", 1, bits, record={"config": old, "data": cfg["data"], "model": cfg["model"]})
    without_per_image(y)
    eval_only_record(y, bits)
    rec = json.loads((y / "eval_last.json").read_text())
    (y / "eval_last.json").write_text(json.dumps({**rec, "config": cfg, "epoch": cfg["epochs"]}))
    capsys.readouterr()
    assert report.main(["--mcnemar", str(x), str(y)]) == 0, capsys.readouterr().err
    assert "(eval_last.json: its --eval-only record)" in capsys.readouterr().out


def test_eval_only_evaluates_one_checkpoint_again_from_anywhere_and_takes_run_control_flags(three, tmp_path,
                                                                                           capsys, monkeypatch):
    evals = tmp_path / "evals"
    argv = ["--eval-attacks", "natural", "--n-eval", "8"]
    monkeypatch.chdir(three.parent)
    assert call("part", ["--eval-only", os.path.join(three.name, "last.pt"), *argv, "--out", str(evals)],
                capsys)[0] == 0
    moved = copy_run(three, tmp_path / "moved")  # the same checkpoint, copied elsewhere
    monkeypatch.chdir(tmp_path)
    code, err = call("part", ["--eval-only", str(moved / "last.pt"), *argv, "--out", "evals", "--save-freq", "3",
                              "--no-mask-figure", "--log-interval", "7"], capsys)
    assert code == 0, err


def test_report_outputs_in_a_folder_of_outputs_are_replaced(three, tmp_path, capsys):
    analysis = tmp_path / "analysis"
    for _ in range(2):  # the same command twice: its own results.json is no run's
        assert report.main([str(three), "--json", str(analysis / "results.json")]) == 0


# ----------------------------------------------------------------------------------------------------
# constants at the top of a script, subset sizes, records copied between run folders
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("const,value,words", [
    ("EPSILON", 300, "EPSILON = 300 at the top of the script: must be a finite number in [0, 1]"),
    ("WIDTH", 0, "WIDTH = 0"), ("MASK", "no", "must be true or false"), ("BATCH_SIZE", 0, "BATCH_SIZE = 0"),
    ("LR", float("nan"), "LR = nan"), ("EPOCHS", 2.5, "must be a whole number"), ("EPOCHS", None, "must be set"),
    ("CAM", "gradcamx", "must be one of gradcam"), ("REGION_EPS", (1 / 255,) * 3, "must hold 4 values"),
    ("EPOCH", 80, "did you mean EPOCHS?"),
])
def test_a_bad_constant_at_the_top_of_a_script_is_one_line(const, value, words, tmp_path, capsys):
    bad = {**constants(SCRIPTS["part"]), const: value}
    capsys.readouterr()
    code = main_("part", bad, ["--data", "synthetic", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
    # a flag that overrides it takes its place, and the shipped constants pass
    if const in ("EPSILON", "WIDTH"):
        parse("part", bad, [f"--{const.lower()}", "8/255" if const == "EPSILON" else "4"])
    parse("part", constants(SCRIPTS["part"]), [])


def test_a_missing_constant_is_one_line(tmp_path, capsys):
    lost = {k: v for k, v in constants(SCRIPTS["part"]).items() if k != "WARM_UP"}
    capsys.readouterr()
    assert main_("part", lost, ["--data", "synthetic", "--out", str(tmp_path / "x")]) == 2
    assert "the constant WARM_UP is missing" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [(["--n-eval", "100000"], "--n-eval 100000 is more than the"),
                                        (["--n-eval", "16", "--n-eval-aa", "32"], "than the 16 --n-eval images")])
def test_an_evaluation_subset_larger_than_its_set_is_refused(argv, words, tmp_path, capsys):
    code, err = call("part", [*TINY, "--out", str(tmp_path / "x"), *argv], capsys)
    assert code == 2 and words in err and not (tmp_path / "x").exists(), err


def test_a_record_copied_from_another_seeds_folder_is_left_out(three, tmp_path, capsys):
    a = copy_run(three, tmp_path / "a")
    cfg = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**cfg, "seed": 2}))  # the folder's run is seed 2's
    capsys.readouterr()
    assert report.main([str(tmp_path)]) == 2  # no run left to read
    assert "is not the run of its folder's config.json (seed 2 in config.json, 1 here)" in capsys.readouterr().err


def test_the_grid_does_not_take_another_seeds_record_for_a_finished_run(tmp_path):
    from tools.run_state import results_state
    from tools.studies import commands
    (folder, argv), = commands("mask-source", ["synthetic"], ["resnet18"], ["AT"], [2], str(tmp_path),
                               ["--width", "4", "--epochs", "2", "--warm-up", "1"])
    cfg = parse("part", constants(SCRIPTS["part"]), [*argv[2:], "--seed", "1"])[0]
    os.makedirs(folder)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"method": cfg["method"], "data": cfg["data"], "model": cfg["model"], "seed": 1, "natural": 50.0,
                   "pgd20": 20.0, "n_eval": 500, "config": cfg}, f)
    state, why = results_state(folder, argv)
    assert state == "other" and "seed: 1 -> 2" in why


def test_tool_outputs_never_replace_a_runs_job_record_or_lock(three, tmp_path, capsys):
    out = copy_run(three, tmp_path / "r")
    (out / "job.json").write_text("{}")
    capsys.readouterr()
    assert report.main([str(three), "--json", str(out / "job.json")]) == 2
    assert "would replace the job.json of the run" in capsys.readouterr().err
    assert (out / "job.json").read_text() == "{}"


def rows_part_at_at16(root):
    """Rows PART, AT and AT (n_eval=16): the last one evaluated on other test images."""
    from tests.test_tools import real_run
    real_run(root, "p", [], 55.0)
    real_run(root, "a", ["--no-mask"], 52.0)
    real_run(root, "a16", ["--no-mask", "--n-eval", "16"], 50.0)


def test_a_baseline_without_a_masked_row_never_borrows_a_rows_label(tmp_path, capsys):
    rows_part_at_at16(tmp_path)
    capsys.readouterr()
    assert report.main([str(tmp_path), "--diff", "PART", "AT (n_eval=16)"]) == 0
    out = capsys.readouterr().out
    assert out.count("| PART − AT (n_eval=16) | Natural |") == 1, out  # the --diff alone
    assert "| PART (no run of these settings) − AT (n_eval=16) | Natural |" in out


def test_report_json_holds_the_budget_columns_of_the_table(three, tmp_path, capsys):
    assert report.main([str(three), "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]) == 0
    group, = json.loads((tmp_path / "r.json").read_text())["groups"]
    row = (tmp_path / "r.csv").read_text().splitlines()
    csv_budget = float(dict(zip(row[0].split(","), row[1].split(",")))["budget_mean"])
    assert group["budget"]["budget_mean"]["n"] == 1 and 7 < group["budget"]["budget_mean"]["mean"] < 8
    assert round(group["budget"]["budget_mean"]["mean"], 5) == csv_budget
    assert 0 < group["budget"]["eps_share"]["mean"] < 1


def test_a_diff_between_rows_of_different_test_subsets_is_warned_of(tmp_path, capsys):
    rows_part_at_at16(tmp_path)
    capsys.readouterr()
    assert report.main([str(tmp_path), "--diff", "PART", "AT"]) == 0
    assert "evaluated on different" not in capsys.readouterr().err  # same test images: no warning
    assert report.main([str(tmp_path), "--diff", "PART", "AT (n_eval=16)"]) == 0
    assert "the rows were evaluated on different test images (n_eval 500 and 16)" in capsys.readouterr().err
