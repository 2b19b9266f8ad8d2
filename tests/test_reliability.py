"""No silent wrong result: bad input stops early with exit 2 and one line; resume and the run folder are guarded."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.test_scripts import SCRIPTS, TINY, constants, run, same_weights, weights
from utils.entry import main
from utils.metrics_csv import truncate_metrics
from utils.runs import RunFolder, atomic_write, save_json


def call(variant, argv, capsys):
    """(exit code, stderr) of a script's main, in this process."""
    capsys.readouterr()
    code = main(variant, constants(SCRIPTS[variant]), argv)
    return code, capsys.readouterr().err


def npz(path, **override):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=np.arange(40) % 10,
                  x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=np.arange(20) % 10)
    arrays.update(override)
    np.savez(path, **arrays)
    return str(path)


def bad_file(tmp, kind):
    p = tmp / f"{kind}.npz"
    if kind == "float":
        return npz(p, x_train=np.random.rand(40, 32, 32, 3).astype(np.float32))
    if kind == "int16":
        return npz(p, x_test=np.full((20, 32, 32, 3), 300, np.int16))
    if kind == "label999":
        return npz(p, y_train=np.r_[np.arange(39) % 10, 999])
    if kind == "long-labels":
        return npz(p, y_test=np.arange(25) % 10)
    if kind == "empty":
        return npz(p, x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, np.int64))
    if kind == "zero-size":
        return npz(p, x_train=np.zeros((40, 0, 0, 3), np.uint8), x_test=np.zeros((20, 0, 0, 3), np.uint8))
    if kind == "float-labels":
        return npz(p, y_train=(np.arange(40) % 10).astype(np.float32))
    if kind == "one-class":
        return npz(p, y_train=np.full(40, 3))
    if kind == "first-one-class":  # ten classes, but the first 20 labels (what --n-train 20 trains on) are one
        return npz(p, y_train=np.r_[np.full(20, 3), np.arange(20) % 10])
    if kind == "random-bytes":
        p.write_bytes(os.urandom(2000))
        return str(p)
    if kind == "truncated":
        npz(p)
        p.write_bytes(p.read_bytes()[:3000])
        return str(p)
    if kind == "not-npy":  # a zip whose members are text, not .npy files: np.load hands back their bytes
        with zipfile.ZipFile(p, "w") as z:
            for k in ("x_train", "y_train", "x_test", "y_test"):
                z.writestr(f"{k}.npy", "some text")
        return str(p)
    if kind == "pickled":
        np.savez(p, x_train=np.array([{"a": 1}] * 40, dtype=object), y_train=np.arange(40), x_test=np.zeros(1),
                 y_test=np.zeros(1))
        return str(p)
    raise ValueError(kind)


def cifar10c_folder(path, labels=None, size=32, n=5):
    """A CIFAR-10-C-style folder of one corruption: (5 * n, size, size, 3) uint8 images and their labels."""
    path.mkdir()
    np.save(path / "gaussian_noise.npy", np.zeros((5 * n, size, size, 3), np.uint8))
    np.save(path / "labels.npy", np.arange(5 * n) % 10 if labels is None else np.asarray(labels))
    return str(path)


# case: (variant, extra argv (TMP stands for the test's folder), exit code, a word the message must contain)
BAD_INPUT = [
    ("part", ["--n-eval", "-5"], 2, "--n-eval"),
    ("part", ["--eval-epsilon", "-1"], 2, "--eval-epsilon"),
    ("part", ["--eval-epsilon", "2"], 2, "[0, 1]"),
    ("part", ["--epsilon", "100"], 2, "--epsilon"),
    ("part", ["--epsilon", "nan"], 2, "finite"),
    ("part", ["--low-epsilon", "inf"], 2, "finite"),
    ("part_t", ["--beta", "-6"], 2, "--beta"),
    ("part", ["--momentum", "-5"], 2, "--momentum"),
    ("part", ["--momentum", "1"], 2, "--momentum"),
    ("part", ["--step-size", "0"], 2, "--step-size"),
    ("part", ["--step-size", "-1/255"], 2, "--step-size"),
    ("part", ["--lr", "0"], 2, "--lr"),
    ("part", ["--lr", "nan"], 2, "--lr"),
    ("part", ["--weight-decay", "-1e-4"], 2, "--weight-decay"),
    ("part", ["--batch-size", "0"], 2, "--batch-size"),
    ("part", ["--eval-batch-size", "0"], 2, "--eval-batch-size"),
    ("part", ["--log-interval", "0"], 2, "--log-interval"),
    ("part", ["--num-steps", "-1"], 2, "--num-steps"),
    ("part", ["--n-train", "-1"], 2, "--n-train"),
    ("part", ["--width", "0"], 2, "--width"),
    ("part", ["--seed", "-1"], 2, "--seed"),
    ("part", ["--mask-refresh", "0"], 2, "--mask-refresh"),
    ("part", ["--region-eps", "1", "2", "0", "0"], 2, "--region-eps"),
    ("part", ["--device", "foo"], 2, "--device"),
    ("part", ["--eval-attacks", "pgd0"], 2, "pgd0"),
    ("part", ["--mask-source", "random"], 2, "--mask-source"),
    ("part", ["--low-epsilon", "9/255"], 2, "--low-epsilon"),
    ("part", ["--cam-layer", "layer9"], 2, "layer9"),
    ("part", ["--eval-attacks", "part-pgd", "--no-mask", "--cam-layer", "nope"], 2, "nope"),
    ("part", ["--out", "TMP/afile/run"], 2, "is a file"),
    ("part", ["--out", "TMP/afile"], 2, "is a file"),
    ("part", ["--out", "/proc/part_run_test"], 2, "cannot create or write"),  # unwritable
    ("part", ["--eval-corruptions", "TMP/nothing"], 2, "not a folder"),
    ("part", ["--resume", "TMP/garbage.pt"], 2, "cannot read checkpoint"),
    ("part", ["--eval-only", "TMP/garbage.pt"], 2, "cannot read checkpoint"),
    ("part", ["--eval-only", "TMP/nothing.pt"], 2, "no checkpoint"),
    ("part", ["--resume", "TMP/weights_only.pt"], 2, "--eval-only"),
    # one line each for the classes of issue 22: a seed past 64 bits, a model wider than any trained here, a CAM layer that
    # is no feature map, the permuted control without a second image, an empty path, flags that would be ignored,
    # a folder holding --eval-only records, CIFAR-10-C labels outside the classes or images of another size, and an
    # --eval-only output folder that cannot be written (found before loading the model)
    ("part", ["--seed", str(2**64)], 2, "--seed"),
    ("part", ["--width", "100000"], 2, "[1, 1024]"),
    ("part", ["--cam-layer", "linear"], 2, "not a feature map"),
    ("part", ["--mask-source", "permuted", "--batch-size", "1"], 2, "at least 2 images per batch"),
    ("part", ["--mask-source", "permuted", "--n-train", "1"], 2, "training needs at least two classes"),
    ("part", ["--out", ""], 2, "must not be empty"),
    ("part", ["--eval-only", "TMP/garbage.pt", "--resume"], 2, "--resume would be ignored"),
    ("part", ["--resume", "--overwrite"], 2, "give one of them"),
    ("part", ["--out", "TMP/evals"], 2, "eval_last.json"),
    ("part", ["--eval-corruptions", "TMP/c10c-999"], 2, "[0, 10)"),
    ("part", ["--eval-corruptions", "TMP/c10c-neg"], 2, "[0, 10)"),
    ("part", ["--eval-corruptions", "TMP/c10c-64px"], 2, "64x64"),
    ("part", ["--eval-corruptions", "TMP/c10c-small"], 2, "holds 5 images per severity, fewer than --n-eval 32"),
    ("part", ["--eval-only", "TMP/weights_only.pt", "--out", "/proc/part_eval_test"], 2, "cannot create or write"),
] + [("part", ["--data", "cifar10-npz", "--data-dir", f"TMP/{k}.npz"], 2, word) for k, word in [
    ("float", "uint8"), ("int16", "uint8"), ("label999", "[0, 10)"), ("long-labels", "25 labels for 20"),
    ("empty", "N, H, W > 0"), ("zero-size", "N, H, W > 0"), ("float-labels", "integer"),
    ("random-bytes", "not a readable"), ("truncated", "not a readable"), ("pickled", "not a readable"),
    ("not-npy", "x_train, y_train, x_test, y_test are not arrays"),
    ("one-class", "training labels hold only class 3 (cifar10-npz has 10 classes)")]] + [
    ("part", ["--data", "cifar10-npz", "--data-dir", "TMP/first-one-class.npz", "--n-train", "20"], 2,
     "the first 20 training labels (--n-train 20) hold only class 3")]


@pytest.mark.parametrize("variant,argv,code,word", BAD_INPUT, ids=[" ".join(c[1])[:40] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(variant, argv, code, word, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(300))
    torch.save({"model": {}}, tmp_path / "weights_only.pt")
    for kind in ("float", "int16", "label999", "long-labels", "empty", "zero-size", "float-labels", "random-bytes",
                 "truncated", "pickled", "not-npy", "one-class", "first-one-class"):
        bad_file(tmp_path, kind)
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "eval_last.json").write_text("{}")
    cifar10c_folder(tmp_path / "c10c-999", labels=np.r_[np.zeros(24, int), 999])
    cifar10c_folder(tmp_path / "c10c-neg", labels=np.r_[np.zeros(24, int), -1])
    cifar10c_folder(tmp_path / "c10c-64px", size=64)
    cifar10c_folder(tmp_path / "c10c-small")  # 5 images per severity, TINY evaluates 32
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    out = tmp_path / "run"
    got, err = call(variant, [*TINY, "--out", str(out), *argv], capsys)
    assert got == code, err
    assert word in err and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    assert not out.exists()  # found before the first epoch, and a failed start leaves no folder behind
    assert (tmp_path / "afile").is_file() and (tmp_path / "evals" / "eval_last.json").read_text() == "{}"


def test_any_damaged_checkpoint_file_is_one_usage_error(tmp_path):
    """Random bytes (plain and behind a pickle or zip header) and every truncation of a real checkpoint: reading
    them raises UsageError naming the file, never another exception (unpickling damaged bytes can raise
    OverflowError, MemoryError and others)."""
    from utils.errors import UsageError
    from utils.runs import read_checkpoint, save_checkpoint
    save_checkpoint(str(tmp_path / "real.pt"), {"model": {"w": torch.zeros(3)}, "epoch": 1})
    real = (tmp_path / "real.pt").read_bytes()
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(int(n)) for n in rng.integers(1, 400, 300)]
    blobs += [b"\x80\x02" + b for b in blobs[:100]] + [real[:4] + b for b in blobs[100:200]]
    blobs += [real[:n] for n in range(0, len(real), max(1, len(real) // 100))]
    path = tmp_path / "damaged.pt"
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(UsageError, match="damaged.pt"):
            read_checkpoint(str(path))


@pytest.mark.slow
def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY, "--epsilon", "100",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_as_budget_refuses_negative_and_non_finite():
    from attacks import as_budget
    x = torch.zeros(2, 3, 4, 4)
    for bad in (-1 / 255, float("nan"), float("inf"), torch.full_like(x, -0.1), torch.tensor([0.1, float("nan")])[:, None, None, None]):
        with pytest.raises(ValueError):
            as_budget(bad, x)
    assert as_budget(0.0, x).item() == 0 and as_budget(torch.full_like(x, 0.01), x).shape == x.shape


# ----------------------------------------------------------------------------------------------------
# resume and the run folder
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch PART run."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run("part", out, "--eval-attacks", "natural") == 0
    return out


@pytest.mark.parametrize("argv,words", [
    (["--seed", "2", "--lr", "0.1", "--epsilon", "10/255", "--no-mask"],
     ["seed: 1 -> 2", "lr: 0.01 -> 0.1", "epsilon: 8/255 -> 10/255", "mask: True -> False"]),
    (["--epochs", "1"], ["epochs: 1 is fewer than the 2 epochs already done"]),
    (["--epochs", "3"], ["lr_milestones: 2 -> 3", "--lr-milestones 2"]),
    (["--mask-source", "official", "--cam", "layercam"], ["mask_source: cam -> official", "cam: gradcam -> layercam"]),
    (["--n-train", "32", "--batch-size", "16"], ["n_train: 64 -> 32", "batch_size: 32 -> 16"]),
    (["--data", "cifar10-npz", "--data-dir", "NPZ", "--n-train", "32", "--n-eval", "16"],
     ["data: synthetic -> cifar10-npz", "data_fingerprint", "n_train: 64 -> 32"]),
])
def test_resume_refuses_other_training_settings(finished, argv, words, tmp_path, capsys):
    argv = [a.replace("NPZ", npz(tmp_path / "d.npz")) for a in argv]
    before = (finished / "last.pt").read_bytes()
    code, err = call("part", [*TINY, "--out", str(finished), "--resume", *argv], capsys)
    assert code == 2 and "was trained with other settings" in err, err
    for w in words:
        assert w in err, (w, err)
    assert (finished / "last.pt").read_bytes() == before


def test_resume_takes_more_epochs_and_other_run_control_flags(tmp_path, capsys):
    out = tmp_path / "r"
    assert run("part", out, "--lr-milestones", "3", "--eval-attacks", "natural") == 0
    code, err = call("part", [*TINY, "--out", str(out), "--resume", "--epochs", "3", "--lr-milestones", "3",
                              "--n-eval", "16", "--log-interval", "7", "--device", "cpu", "--eval-attacks", "natural"],
                     capsys)
    assert code == 0, err
    rec = json.loads((out / "results.json").read_text())
    assert rec["config"]["epochs"] == 3 and rec["n_eval"] == 16
    assert [l.split(",")[0] for l in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(finished, tmp_path, capsys):
    code, err = call("part", [*TINY, "--out", str(finished)], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err and "holds another run" in err
    assert (finished / "results.json").exists()
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ("last.pt", "results.json", "metrics.csv", "config.json"):
        (copy / f).write_bytes((finished / f).read_bytes())
    (copy / "notes.txt").write_text("mine")
    code, err = call("part", [*TINY, "--out", str(copy), "--overwrite", "--eval-attacks", "natural", "--seed", "5"],
                     capsys)
    assert code == 0, err
    assert json.loads((copy / "results.json").read_text())["seed"] == 5 and (copy / "notes.txt").exists()
    assert len((copy / "metrics.csv").read_text().splitlines()) == 3


def test_the_run_folder_is_locked_while_a_run_uses_it(tmp_path, capsys):
    held = RunFolder(str(tmp_path / "busy"))
    try:
        code, err = call("part", [*TINY, "--out", str(tmp_path / "busy")], capsys)
        assert code == 2 and "another process is using" in err
    finally:
        held.release()
    assert run("part", tmp_path / "busy", "--epochs", "1", "--no-mask", "--eval-attacks", "natural") == 0


def test_a_run_in_progress_is_named_as_such_not_as_a_run_to_resume(finished, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    for f in ("last.pt", "results.json", "metrics.csv", "config.json"):
        (busy / f).write_bytes((finished / f).read_bytes())
    held = RunFolder(str(busy))
    try:  # the same command again while the first runs: --resume or --overwrite would only meet the lock
        code, err = call("part", [*TINY, "--out", str(busy)], capsys)
        assert code == 2 and "another process is using" in err and "--resume" not in err, err
    finally:
        held.release()
    code, err = call("part", [*TINY, "--out", str(busy)], capsys)  # released: the folder holds a run again
    assert code == 2 and "holds another run" in err and "--resume" in err, err
    for flag in ("--eval-only", "--resume"):  # the folder, not its checkpoint
        code, err = call("part", [*TINY, "--out", str(busy), flag, str(busy)], capsys)
        assert code == 2 and "is a folder" in err and str(busy / "last.pt") in err and err.count("\n") == 1, err
    before = json.loads((busy / "results.json").read_text())  # --resume of a finished run: the evaluation again
    code, err = call("part", [*TINY, "--out", str(busy), "--resume"], capsys)
    assert code == 0, err
    resumed = (busy / "log.txt").read_text().split("resumed from")[-1].splitlines()[0]
    assert "(epoch 2 done: training is finished, the final evaluation runs again)" in resumed, resumed
    assert "the record it evaluates anew" in resumed and "results.json" in resumed, resumed
    assert json.loads((busy / "results.json").read_text())["natural"] == before["natural"]


def test_resume_drops_a_damaged_best_but_not_one_it_lacks_the_memory_to_read(tmp_path, monkeypatch):
    """drop_later_files: a best.pt whose epoch is not a number is damaged and goes; a best.pt that cannot be read
    for want of memory stays, and the allocation failure is raised as such (not read as damage)."""
    from utils.runs import drop_later_files, save_checkpoint
    save_checkpoint(str(tmp_path / "best.pt"), {"model": {}, "epoch": "x"})
    assert drop_later_files(str(tmp_path), 3) == ["best.pt"]
    save_checkpoint(str(tmp_path / "best.pt"), {"model": {"w": torch.zeros(2**19)}, "epoch": 2})  # 2 MiB

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        drop_later_files(str(tmp_path), 3)
    assert (tmp_path / "best.pt").is_file()


def test_resume_from_an_earlier_checkpoint_rebuilds_metrics_and_drops_later_files(tmp_path, capsys):
    """Resuming from epoch_1.pt of a finished 3-epoch run: a damaged metrics.csv is rebuilt from its readable rows,
    the later epochs' files and the old record go, and the run ends as an uninterrupted one does."""
    out = tmp_path / "r"
    args = ["--epochs", "3", "--lr-milestones", "3", "--save-freq", "1", "--eval-attacks", "natural"]
    assert run("part", out, *args) == 0
    whole = weights(out / "last.pt")
    huge = "1,warm-up," + "9" * 200_000  # a field past the csv module's limit: that line alone is unreadable
    (out / "metrics.csv").write_text((out / "metrics.csv").read_text() + f"garbage,\x00\x01,,\n{huge}\n3x,1\n")
    code, err = call("part", [*TINY, "--out", str(out), *args, "--resume", str(out / "epoch_1.pt")], capsys)
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert "dropped 5 unreadable or later line(s)" in log and "epoch_2.pt" in log and "results.json" in log
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"] and rows[0].startswith("epoch,phase")
    assert same_weights(whole, weights(out / "last.pt"))
    assert torch.load(out / "epoch_3.pt", weights_only=False)["epoch"] == 3
    assert truncate_metrics(str(out / "metrics.csv"), 2) == 1


def _damage(ckpt, how):
    """The checkpoint content `ckpt` damaged in one way (a copy)."""
    c = {**ckpt, "config": dict(ckpt["config"]), "model": dict(ckpt["model"])}
    key, _, value = how.partition("=")
    if key == "config":
        c["config"] = None if value == "none" else value
    elif key.startswith("config."):
        name = key[len("config."):]
        if value == "DEL":
            del c["config"][name]
        else:
            c["config"][name] = {"nan": float("nan"), "str": "8/255", "zzz": "zzz", "part_t": "part_t", "[]": [],
                                 "32.0": 32.0, "[32]": [32], "[2,1]": [2, 1], "nat2": ["natural", "natural"]}[value]
    elif key == "weight":
        name = next(k for k, v in c["model"].items() if v.is_floating_point())
        if value == "key":  # a key that is no parameter name
            c["model"][7] = c["model"].pop(name)
        else:
            c["model"][name] = {"int": 3, "nan": torch.full_like(c["model"][name], float("nan")),
                                "long": c["model"][name].long(), "half": c["model"][name].half()}[value]
    elif key == "running_var":
        name = next(k for k in c["model"] if k.endswith("running_var"))
        c["model"][name] = -c["model"][name]
    elif key.startswith("optimizer."):
        c["optimizer"] = {**ckpt["optimizer"], "param_groups": [dict(g) for g in ckpt["optimizer"]["param_groups"]],
                          "state": {i: dict(s) for i, s in ckpt["optimizer"]["state"].items()}}
        buf = c["optimizer"]["state"][0]["momentum_buffer"]
        if key == "optimizer.momentum":
            c["optimizer"]["param_groups"][0]["momentum"] = 5.0
        elif value == "none":
            c["optimizer"]["state"] = {}
        else:
            c["optimizer"]["state"][0]["momentum_buffer"] = {"shape": torch.zeros(3), "half": buf.half()}[value]
    else:
        c[key] = {"{}": {}, "str": "1", "int": 5, "rng": {"torch": 5}, "huge": 10**9, "none": None, "500": 500.0}[value]
    return c


# how a checkpoint is damaged, and a word the one-line refusal must contain
DAMAGED_FOR_EVAL = [("config.variant=DEL", "no known method"), ("config.variant=zzz", "no known method"),
                    ("config=hello", "not a dict"), ("config.epsilon=str", "--epsilon"),
                    ("config.epsilon=nan", "finite"), ("config.low_epsilon=nan", "--low-epsilon"),
                    ("config.eval_epsilon=nan", "--eval-epsilon"), ("config.data=DEL", "lacks the setting 'data'"),
                    ("config.data=zzz", "--data"), ("weight=int", "not dense tensors"), ("weight=nan", "non-finite"),
                    ("weight=long", "other dtypes"), ("running_var=neg", "negative variances"),
                    ("model=none", "not a state dict"), ("config=none", "not a dict"),
                    ("config.variant=part_t", "(part_t)"), ("config.eval_attacks=[]", "at least one"),
                    ("config.image_size=32.0", "image size"), ("config.image_size=[32]", "image size"),
                    ("config.lr_milestones=[2,1]", "--lr-milestones 2 1: they are not in increasing order"),
                    ("config.eval_attacks=nat2", "--eval-attacks natural natural: natural is named twice"),
                    ("epoch=int", "no usable epoch (epoch 5 of the 2"), ("epoch=str", "no usable epoch"),
                    ("weight=key", "keys that are not parameter names: 7")]
# resume reads the config and weights through the same checks as --eval-only: a few of those, and its own
DAMAGED_FOR_RESUME = [DAMAGED_FOR_EVAL[i] for i in (0, 2, 4, 7, 10, 12)] + [
    ("optimizer={}", "optimizer state"), ("epoch=str", "no usable epoch"), ("epoch=huge", "no usable epoch"),
    ("rng=rng", "RNG state"), ("best_pgd20=str", "best PGD-20"), ("best_pgd20=500", "best PGD-20"),
    ("optimizer.momentum=5", "momentum 5.0"), ("optimizer.buffer=shape", "momentum buffer"),
    ("optimizer.buffer=none", "no momentum buffer"), ("optimizer.buffer=half", "not a finite float32 tensor"),
    (DAMAGED_FOR_EVAL[-1]), ("weight=half", "another precision than the run saves")]


@pytest.mark.parametrize("how,word", DAMAGED_FOR_EVAL)
def test_eval_only_refuses_a_damaged_checkpoint_in_one_line(finished, how, word, tmp_path, capsys):
    path = tmp_path / "damaged.pt"
    torch.save(_damage(torch.load(finished / "last.pt", weights_only=False), how), path)
    code, err = call("part", ["--eval-only", str(path), "--eval-attacks", "natural", "--n-eval", "8"], capsys)
    assert code == 2 and word in err and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert str(path) in err and not list(tmp_path.glob("eval_*"))


@pytest.mark.parametrize("how,word", DAMAGED_FOR_RESUME)
def test_resume_refuses_a_damaged_checkpoint_in_one_line(finished, how, word, tmp_path, capsys):
    path = tmp_path / "damaged.pt"
    torch.save(_damage(torch.load(finished / "last.pt", weights_only=False), how), path)
    out = tmp_path / "run"
    code, err = call("part", [*TINY, "--eval-attacks", "natural", "--out", str(out), "--resume", str(path)], capsys)
    assert code == 2 and word in err and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not out.exists()


def test_eval_only_honours_data_that_fits_and_refuses_data_that_does_not(finished, tmp_path, capsys):
    path = npz(tmp_path / "d.npz")
    code, err = call("part", ["--eval-only", str(finished / "last.pt"), "--data", "cifar10-npz", "--data-dir", path,
                              "--n-eval", "8", "--eval-attacks", "natural", "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    rec = json.loads((tmp_path / "e" / "eval_last.json").read_text())
    assert rec["data"] == "cifar10-npz" and rec["config"]["data_dir"] == path
    assert rec["config"]["trained_on"]["data"] == "synthetic" and rec["n_test"] == 20
    assert rec["config"]["trained_on"]["data_fingerprint"] != rec["config"]["data_fingerprint"]
    # both records say which epoch they evaluated, and the image size is the data's
    assert rec["epoch"] == 2 == json.loads((finished / "results.json").read_text())["epoch"]
    assert rec["config"]["image_size"] == 32
    code, err = call("part", ["--eval-only", str(finished / "last.pt"), "--data", "tinyimagenet"], capsys)
    assert code == 2 and "does not fit" in err and "200 classes" in err
    rng = np.random.default_rng(0)
    big = npz(tmp_path / "64.npz", x_train=rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8),
              x_test=rng.integers(0, 256, (20, 64, 64, 3), dtype=np.uint8))
    code, err = call("part", ["--eval-only", str(finished / "last.pt"), "--data", "cifar10-npz", "--data-dir", big,
                              "--out", str(tmp_path / "e64")], capsys)
    assert code == 2 and "does not fit" in err and "64x64 px" in err and "32x32 px" in err, err
    assert not (tmp_path / "e64").exists()


# ----------------------------------------------------------------------------------------------------
# files on disk
# ----------------------------------------------------------------------------------------------------
def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.json"
    save_json(str(target), {"a": 1})

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(str(target), fail)
    assert json.loads(target.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["x.json"]


def test_a_full_disk_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import utils.runs
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(obj.get("epoch") if isinstance(obj, dict) else None)
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(utils.runs.torch, "save", save)
    code, err = call("part", [*TINY, "--out", str(tmp_path / "r"), "--eval-attacks", "natural"], capsys)
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in err and "last.pt (epoch 1)" in err, err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["epoch"] == 1
    assert not [f for f in os.listdir(tmp_path / "r") if ".tmp." in f]


def test_out_of_memory_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import utils.engine
    real, calls = utils.engine.quick_eval, []

    def quick_eval(*a, **k):  # the per-epoch check of epoch 2 runs out of GPU memory
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                         "of 80 GiB of which 1.2 GiB is free.")
        return real(*a, **k)

    monkeypatch.setattr(utils.engine, "quick_eval", quick_eval)
    code, err = call("part", [*TINY, "--out", str(tmp_path / "r"), "--eval-attacks", "natural"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "out of memory on the GPU (tried to allocate 2.00 GiB)" in err and "last.pt (epoch 1)" in err, err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["epoch"] == 1


def test_out_of_memory_is_recognised_on_cpu_and_gpu():
    from utils.errors import out_of_memory
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 360000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert out_of_memory(cpu) == "out of memory on the CPU (tried to allocate 335.28 GiB)"
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")) == \
        "out of memory on the GPU (tried to allocate 20.00 MiB)"
    assert out_of_memory(MemoryError()) == "out of memory on the CPU"
    assert out_of_memory(RuntimeError("shape mismatch")) is None


@pytest.mark.parametrize("signum,code,word", [(None, 130, "interrupted (Ctrl-C)"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_entry_point_turns_an_interrupt_into_one_line(signum, code, word, capsys):
    from utils.errors import entry_point

    def body():
        if signum is None:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)  # the handler raises in this thread
        time.sleep(5)

    previous = signal.getsignal(signal.SIGTERM)
    assert entry_point(body) == code
    err = capsys.readouterr().err
    assert err.strip() == word and signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize("signum,code,word", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                              (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_held_during_start_up_ends_the_entry_point_before_its_work(signum, code, word, capsys):
    """hold_signals (a tool's imports) keeps a signal from breaking off an import; entry_point then ends with its
    one line without starting the work, and the handlers are those from before the hold."""
    from utils.errors import entry_point
    from utils.signals import hold_signals
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    hold_signals()
    os.kill(os.getpid(), signum)
    time.sleep(0.1)  # it is held: nothing is raised here
    started = []
    assert entry_point(lambda: started.append(1)) == code
    assert not started and capsys.readouterr().err.strip() == word
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["report", "benchmark", "device_check", "flags", "make_cifar10c",
                                  "make_cifar10_subset"])
@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="needs Linux's /proc")
def test_ctrl_c_while_a_tool_loads_prints_one_line(tool, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", f"tools.{tool}", "--help"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

    def holding():  # SIGTERM caught: hold_signals has run, and the libraries' imports follow it
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
        except (OSError, StopIteration):
            return proc.poll() is not None
        return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))

    deadline = time.time() + 60
    while not holding() and time.time() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and err.strip() == "interrupted (Ctrl-C)", (proc.returncode, err)


@pytest.mark.slow
def test_a_full_file_system_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """A real failed write: the resumed epoch's checkpoint (larger: it stores the official masks) exceeds a file-size
    limit (RLIMIT_FSIZE, in a child process). torch.save raises RuntimeError there; the run exits 2 with one line
    and last.pt of epoch 1 stays intact, with no temporary file left."""
    import resource
    out = tmp_path / "r"
    args = ["--mask-source", "official", "--mask-refresh", "2", "--lr-milestones", "9", "--eval-attacks", "natural"]
    monkeypatch.setenv("PART_FAULT_NAN_AT", "2,0")  # stops the run after epoch 1 (exit 3)
    code, err = call("part", [*TINY, "--out", str(out), "--epochs", "2", *args], capsys)
    assert code == 3, err
    monkeypatch.delenv("PART_FAULT_NAN_AT")
    before = (out / "last.pt").read_bytes()
    limit = len(before) + 4096

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY, "--out", str(out),
                           "--epochs", "2", "--resume", *args], capture_output=True, text=True, preexec_fn=small_disk,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "writing failed" in proc.stderr and "last.pt (epoch 1)" in proc.stderr, proc.stderr
    assert (out / "last.pt").read_bytes() == before
    assert not [f for f in os.listdir(out) if ".tmp." in f]


def test_download_failure_is_one_line(tmp_path, capsys, monkeypatch):
    import torchvision.datasets
    from urllib.error import URLError

    class Offline(torchvision.datasets.CIFAR10):  # its file list and checksums, and no network
        def __init__(self, *a, **k):
            raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    code, err = call("part", [*TINY, "--data", "cifar10", "--data-dir", str(tmp_path), "--download",
                              "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "downloading CIFAR-10" in err and "by hand" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_tinyimagenet_half_copied_or_stale_cache(tmp_path, monkeypatch):
    from PIL import Image

    import utils.data
    from tests.conftest import tiny_imagenet_folder
    from utils.data import load_dataset
    from utils.errors import DataNotFound
    base = tiny_imagenet_folder(tmp_path, ["n01", "n02"], 2, lambda k, i: 50 * k + i, lambda k: 9)
    monkeypatch.setattr(utils.data, "TINY_EXPECTED", {"classes": 2, "train": 4, "test": 2})
    d = load_dataset("tinyimagenet", str(tmp_path))
    assert d.x_train.shape[0] == 4 and (base / "part_cache_uint8.pt").exists()
    # a half-copied folder is refused; a folder with other files than the cache was built from rebuilds it
    (base / "train" / "n02" / "images" / "n02_1.JPEG").unlink()
    with pytest.raises(DataNotFound, match="incomplete"):  # half-copied: counts do not match
        load_dataset("tinyimagenet", str(tmp_path))
    Image.fromarray(np.full((64, 64, 3), 123, np.uint8)).save(base / "train" / "n02" / "images" / "n02_9.JPEG")
    d2 = load_dataset("tinyimagenet", str(tmp_path))  # same counts, other files: the cache is rebuilt
    assert abs(int(d2.x_train[3, 0, 5, 5]) - 123) <= 2
    # an image rewritten in place (same names, same counts): the cache is rebuilt, and the fingerprint follows
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(base / "train" / "n02" / "images" / "n02_9.JPEG")
    os.utime(base / "train" / "n02" / "images" / "n02_9.JPEG", ns=(1, 1))
    d3 = load_dataset("tinyimagenet", str(tmp_path))
    assert abs(int(d3.x_train[3, 0, 5, 5]) - 250) <= 2 and d3.fingerprint() != d2.fingerprint()
    (base / "train" / "n02" / "images" / "n02_9.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DataNotFound, match="n02_9.JPEG"):
        utils.data._read_images([str(base / "train" / "n02" / "images" / "n02_9.JPEG")])
    (base / "train" / "n01" / "images" / "n01_0.JPEG").rename(base / "elsewhere.JPEG")
    with pytest.raises(DataNotFound, match="incomplete"):
        load_dataset("tinyimagenet", str(tmp_path))


# ----------------------------------------------------------------------------------------------------
# signals
# ----------------------------------------------------------------------------------------------------
def test_permuted_control_never_gives_an_image_its_own_mask():
    """An epoch of 5 images in batches of 2: the batches of two swap their masks, and the last batch (one image)
    takes the mask of an image of the previous batch. Masks are stood in for by the images themselves."""
    from utils.batches import epoch_generator, train_batches
    from utils.data import synthetic
    from utils.mask_sources import PermutedSource
    data = synthetic(n_train=5, n_test=2)
    cfg = {"epsilon": 8 / 255, "low_epsilon": 7 / 255, "mask": True, "epochs": 2, "warm_up": 1, "batch_size": 2,
           "n_train": 0, "seed": 1}
    src = PermutedSource(cfg, data)
    src.own_masks = lambda model, x: x.clone()
    for epoch in (2, 3):
        src.start_epoch(None, epoch)
        seen = []
        for i, (x, _) in enumerate(train_batches(data, 2, epoch_generator(1, epoch))):
            got = src.budget(None, x, i)
            assert got.shape == x.shape
            pool = seen if x.shape[0] == 1 else [*x]  # a batch of one draws from the previous batch
            for k in range(x.shape[0]):
                assert not torch.equal(got[k], x[k]) and any(torch.equal(got[k], other) for other in pool)
            seen = [*x]
        assert x.shape[0] == 1


@pytest.mark.slow
def test_sigterm_behaves_like_ctrl_c_and_is_logged(tmp_path):
    out = tmp_path / "r"
    args = [sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY, "--epochs", "30", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "--resume" in err and "Traceback" not in err
    assert "terminated (SIGTERM)" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_during_start_up_prints_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY, "--out",
                             str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    time.sleep(0.3)  # inside the imports
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["opening the folder", "after config.json"])
def test_interrupted_while_starting_says_what_is_left(where, tmp_path, capsys, monkeypatch):
    """Ctrl-C between the run folder's creation and the first epoch: before config.json the new folder is removed
    and the message is the plain one; after it the folder stays, its log says so, and the hint is to start again."""
    import utils.lifecycle
    target = "save_json" if where == "opening the folder" else "prepare_training"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.lifecycle, target, interrupt)
    code, err = call("part", [*TINY, "--out", str(tmp_path / "r")], capsys)
    assert code == 130 and "Traceback" not in err, err
    if where == "opening the folder":
        assert err.strip() == "interrupted (Ctrl-C)" and not (tmp_path / "r").exists(), err
    else:
        assert "start again" in err and "--resume" not in err, err
        assert "interrupted (Ctrl-C)" in (tmp_path / "r" / "log.txt").read_text()
        assert (tmp_path / "r" / "config.json").exists()
    monkeypatch.undo()
    assert run("part", tmp_path / "r", "--epochs", "1", "--no-mask", "--eval-attacks", "natural") == 0


@pytest.mark.slow
def test_interrupted_before_the_first_checkpoint_says_start_again(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_eval_part.py"), *TINY, "--n-train", "2000",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 120

    def opened():  # the folder is open once the config is logged; config.json alone can appear while it is written
        return (out / "log.txt").exists() and "config: " in (out / "log.txt").read_text()
    while not opened() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "start again" in err and "--resume" not in err, err
    assert "interrupted (Ctrl-C)" in (out / "log.txt").read_text()
    # and starting again in that folder works: it holds no finished epoch
    assert run("part", out, "--epochs", "1", "--no-mask", "--eval-attacks", "natural") == 0
