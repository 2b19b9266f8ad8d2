"""End-to-end runs of the three scripts on the synthetic set with tiny budgets."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from utils.config import script_constants
from utils.entry import main

TINY = ["--data", "synthetic", "--width", "4", "--epochs", "2", "--warm-up", "1", "--batch-size", "32",
        "--n-train", "64", "--num-steps", "2", "--n-eval", "32", "--n-eval-epoch", "32",
        "--eval-attacks", "natural", "pgd20", "mma", "--eval-batch-size", "32", "--no-mask-figure"]


def set_flag(argv, flag, *values):
    """`argv` with the values of `flag` (present in it; its values run to the next --flag) replaced by `values`:
    the grid refuses a flag given twice after --."""
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return [*argv[:i], flag, *values, *argv[j:]]


SCRIPTS = {"part": "train_eval_part.py", "part_t": "train_eval_part_t.py", "part_m": "train_eval_part_m.py"}


def constants(script):
    """The constants block of a script, read as the script itself does."""
    return script_constants(os.path.join(ROOT, script))


def run(variant, out, *extra):
    return main(variant, constants(SCRIPTS[variant]), [*TINY, "--out", str(out), *extra])


def weights(path):
    return torch.load(path, weights_only=False)["model"]


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", [pytest.param("part", marks=pytest.mark.slow), "part_t", "part_m"])
def test_script_end_to_end(variant, tmp_path):
    extra = ["--eval-attacks", "natural", "pgd20", "mma", "aa", "--n-eval", "8"] if variant == "part" else []
    assert run(variant, tmp_path / "run", "--mask-figure", *extra) == 0
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "log.txt", "metrics.csv", "last.pt", "best.pt", "results.json", "results.md",
            "mask.png"} <= files
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("natural", "pgd20", "mma", "aa"):
        assert key in rec
        assert rec[key] is None or 0 <= rec[key] <= 100
    assert isinstance(rec["aa"], float) if variant == "part" else rec["aa"] is None
    assert rec["n_test"] == 500 and rec["n_eval"] == (8 if variant == "part" else 32)
    assert rec["method"] == {"part": "PART", "part_t": "PART-T", "part_m": "PART-M"}[variant]
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["variant"] == variant and cfg["step_size"] == pytest.approx(2 / 255)
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,phase,lr,loss") and len(rows) == 3
    assert ",warm-up," in rows[1] and ",part," in rows[2]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "config:" in log.splitlines()[0] and "PGD-20" in log


@pytest.mark.parametrize("variant,source", [("part", "cam"), ("part_t", "cam"), ("part", "official"),
                                            ("part", "permuted")])
def test_equal_budgets_train_exactly_like_the_baseline(variant, source, tmp_path):
    """With eps_low == eps every CAM source computes its masks but they equal eps everywhere: the same weights as
    --no-mask (the sources draw no random numbers the training uses and leave the model as they found it)."""
    common = ["--num-steps", "5", "--eval-attacks", "natural", "--mask-source", source]  # 5 steps reach 7/255
    assert run(variant, tmp_path / "a", "--low-epsilon", "8/255", *common) == 0
    assert run(variant, tmp_path / "b", "--no-mask", *common) == 0
    assert same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    # and the mask does matter when the budgets differ
    assert run(variant, tmp_path / "c", *common) == 0
    assert not same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "c" / "last.pt"))


@pytest.mark.parametrize("source", ["cam", "official", "official-refresh2", "permuted", "regions"])
def test_resume_is_exact_with_every_mask_source(source, tmp_path, monkeypatch):
    """A run cut after epoch 3 of 4 (its last checkpoint) and resumed ends with the weights of an uninterrupted
    run; with --mask-refresh 2 the official masks of epoch 3 come back from the checkpoint."""
    name, _, refresh = source.partition("-refresh")
    args = ["--epochs", "4", "--lr-milestones", "4", "--eval-attacks", "natural", "--mask-source", name,
            "--mask-refresh", refresh or "1"]
    assert run("part", tmp_path / "whole", *args) == 0
    monkeypatch.setenv("PART_FAULT_NAN_AT", "4,0")
    assert run("part", tmp_path / "cut", *args) == 3
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert cut["epoch"] == 3
    if refresh:  # masked epochs 1 and 2 (epochs 2 and 3) had passes; epoch 4 reuses epoch 3's masks
        assert cut["mask_source"]["pass_epoch"] == 3 and len(cut["mask_source"]["bits"]) == 2
    monkeypatch.delenv("PART_FAULT_NAN_AT")
    assert run("part", tmp_path / "cut", *args, "--resume") == 0
    assert same_weights(weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    columns = lambda p: [r.split(",")[1:9] for r in (p / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert columns(tmp_path / "whole") == columns(tmp_path / "cut")  # budgets and own-image shares too
    if refresh:  # masks stored by another number of processes are of other batches: recomputed, with a note
        cut["config"]["world_size"] = 2
        (tmp_path / "other").mkdir()
        torch.save(cut, tmp_path / "other" / "two.pt")
        assert run("part", tmp_path / "other", *args, "--resume", str(tmp_path / "other" / "two.pt")) == 0
        assert "not restored, recomputed" in (tmp_path / "other" / "log.txt").read_text()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL in the middle of epoch 2 (of 3), then --resume: the same final weights as an uninterrupted run."""
    args = [sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY, "--epochs", "3",
            "--eval-attacks", "natural"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    whole = subprocess.run([*args, "--out", str(tmp_path / "whole")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.run([*args, "--out", str(tmp_path / "cut")], capture_output=True, text=True,
                            env=dict(env, PART_FAULT_KILL_AT="2,1"))
    assert killed.returncode == -9
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = subprocess.run([*args, "--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    rows = (tmp_path / "cut" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert (a["natural"], a["pgd20"]) == (b["natural"], b["pgd20"])


def test_eval_only_reproduces_the_final_record(tmp_path):
    assert run("part_m", tmp_path / "r") == 0
    rec = json.loads((tmp_path / "r" / "results.json").read_text())
    assert main("part_m", constants(SCRIPTS["part_m"]), ["--eval-only", str(tmp_path / "r" / "last.pt")]) == 0
    again = json.loads((tmp_path / "r" / "eval_last.json").read_text())
    for key in ("natural", "pgd20", "mma", "aa", "n_eval"):
        assert again[key] == rec[key], key
    # both evaluations leave per-image records that match their JSON records and each other
    from tools.reporting.records import load_per_image
    first, second = load_per_image(tmp_path / "r", rec), load_per_image(tmp_path / "r", again, "eval_last")
    assert again["per_image_file"] == "eval_last_per_image.npz" and set(first["columns"]) == {"natural", "pgd20", "mma"}
    for col in first["columns"]:
        assert (first["columns"][col] == second["columns"][col]).all() and len(first["columns"][col]) == 32
        assert first["test_set"][col] == second["test_set"][col]


@pytest.mark.slow
@pytest.mark.parametrize("argv,needle", [
    (["--data", "mnist"], "invalid choice: 'mnist'"),
    (["--model", "vgg"], "invalid choice: 'vgg'"),
    (["--cam", "scorecam"], "invalid choice: 'scorecam'"),
    (["--mask-rule", "top"], "invalid choice: 'top'"),
    (["--low-epsilon", "9/255"], "--low-epsilon"),
    (["--warm-up", "5"], "--warm-up (5) must be between 0 and --epochs (2)"),
    (["--epsilon", "eight"], "fraction like 8/255"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, needle, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY,
                           "--out", str(tmp_path / "x"), *argv], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_checkpoint_that_does_not_match_exits_2(tmp_path, capsys):
    assert run("part", tmp_path / "r", "--epochs", "1", "--warm-up", "0", "--eval-attacks", "natural") == 0
    code = main("part", constants(SCRIPTS["part"]),
                ["--eval-only", str(tmp_path / "r" / "last.pt"), "--n-eval", "32", "--eval-attacks", "natural"])
    assert code == 0  # eval-only reads the model width back from the checkpoint's config
    # a training flag that differs from the checkpoint's would be ignored: refused, the same value is not
    code = main("part", constants(SCRIPTS["part"]), [*TINY, "--width", "8", "--eval-only", str(tmp_path / "r" / "last.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "would be ignored" in err and "--width 8 (the checkpoint's width: 4)" in err
    assert "--epochs 2 (the checkpoint's epochs: 1)" in err and "--n-eval" not in err
    assert main("part", constants(SCRIPTS["part"]), [*TINY, "--epochs", "1", "--warm-up", "0", "--eval-only",
                                                    str(tmp_path / "r" / "last.pt")]) == 0
    torch.save({"model": torch.load(tmp_path / "r" / "last.pt", weights_only=False)["model"]}, tmp_path / "bare.pt")
    code = main("part", constants(SCRIPTS["part"]), [*TINY, "--width", "8", "--eval-only", str(tmp_path / "bare.pt")])
    assert code == 2 and "does not match the model" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    assert run("part", tmp_path / "whole", "--save-freq", "1", "--eval-attacks", "natural") == 0
    good = weights(tmp_path / "whole" / "epoch_1.pt")
    capsys.readouterr()
    monkeypatch.setenv("PART_FAULT_NAN_AT", "2,0")  # the loss of epoch 2's first batch becomes NaN
    code = run("part", tmp_path / "r", "--eval-attacks", "natural")
    assert code == 3
    err = capsys.readouterr().err
    assert "loss is nan" in err.lower() and "last.pt (epoch 1)" in err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["epoch"] == 1
    assert same_weights(good, weights(tmp_path / "r" / "last.pt"))
    assert not (tmp_path / "r" / "results.json").exists()  # no record of a failed run
    monkeypatch.setenv("PART_FAULT_NAN_AT", "1,1")  # before any checkpoint: the message says none exists
    assert run("part", tmp_path / "s", "--eval-attacks", "natural") == 3
    assert "no checkpoint was written" in capsys.readouterr().err and not (tmp_path / "s" / "last.pt").exists()


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_equals_two_local_submitit_tasks(tmp_path, monkeypatch):
    """torchrun --nproc_per_node=2 (gloo); and the same run from the grid's local executor as one job of two tasks,
    which set up DDP from submitit's environment: the same final weights, bit for bit."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.Popen([torchrun, "--nproc_per_node=2", "--master_port=29517",
                             os.path.join(ROOT, "train_eval_part.py"), *TINY, "--eval-attacks", "natural",
                             "--out", str(tmp_path / "ddp")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    local = tmp_path / "grid" / "synthetic-resnet18" / "PART-cam-seed1"
    if importlib.util.find_spec("submitit"):
        from tools import grid
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert grid.main(["--study", "mask-source", "--methods", "PART-cam", "--data", "synthetic", "--models",
                          "resnet18", "--seeds", "1", "--root", str(tmp_path / "grid"), "--tag", "", "--executor",
                          "local", "--tasks-per-node", "2", "--wait", "--run", "--",
                          *set_flag(TINY[2:], "--eval-attacks", "natural")]) == 0
        assert "2 process(es)" in (local / "log.txt").read_text()
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "ddp" / "results.json").read_text())["ranks_identical"] is True
    assert (tmp_path / "ddp" / "log.txt").read_text().count("epoch   2") == 1  # rank 0 alone writes
    assert "2 process(es)" in (tmp_path / "ddp" / "log.txt").read_text()
    if importlib.util.find_spec("submitit"):
        assert same_weights(weights(tmp_path / "ddp" / "last.pt"), weights(local / "last.pt"))


def test_tensorboard_scalars(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    assert run("part", tmp_path / "r", "--tensorboard", "--eval-attacks", "natural") == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "r" / "tb")).Reload()
    assert {"loss", "natural", "pgd20", "budget_mean", "eps_share", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("budget_mean")] == [1, 2]
