"""GPU readiness on CPU: the speed flags' paths, determinism, the rank and RNG checks, peak memory, run identity."""
import csv
import json

import pytest
import torch

from attacks import cw, mma, pgd
from attacks.core import ascend
from models import build_model
from tests.test_scripts import SCRIPTS, constants, run, same_weights, weights
from utils import mask_rules
from utils.config import parse, upgrade
from utils.batches import to_float
from utils.data import synthetic
from utils.devices import configure_backends
from utils.identity import effective, training_differences
from utils.methods import mart_attack, trades_attack
from utils.runs import rng_state, set_rng_state

BF16_LOGIT_TOL = 0.02  # max |bf16 - fp32| logit difference, relative to the largest fp32 logit magnitude


@pytest.fixture
def fp32_backends():
    yield
    configure_backends({"tf32": False}, torch.device("cpu"))  # a test's --deterministic must not outlive it


def test_more_ranks_than_gpus_stop_before_any_cuda_call(tmp_path, monkeypatch, capsys):
    for k, v in {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29599"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def no_cuda(*a, **k):
        raise AssertionError("a CUDA call before the rank check")
    monkeypatch.setattr(torch.cuda, "set_device", no_cuda)
    monkeypatch.setattr(torch.distributed, "init_process_group", no_cuda)
    assert run("part", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 processes" in err[0] and "only 2 GPU(s)" in err[0] and "--nproc-per-node 2" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("saved,here,restored", [(2, 1, [0]), (1, 2, [0]), (2, 0, []), (2, 2, [0, 1])])
def test_rng_state_of_another_gpu_count_restores_what_fits(saved, here, restored, monkeypatch):
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) + i for i in range(saved)]  # fabricated GPU states
    monkeypatch.setattr(torch.cuda, "is_available", lambda: here > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: here)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append((int(s[0]), i)))
    note = set_rng_state(state)
    assert calls == [(i, i) for i in restored]
    if saved == here:
        assert note is None
    else:
        assert f"{saved} GPU(s)" in note and f"has {here}" in note and "not promised" in note and "\n" not in note


def test_jet_copies_the_colour_map_once_per_device(monkeypatch):
    class Table:
        copies = 0

        def to(self, device):
            Table.copies += 1
            return mask_rules.jet_table_tensor

    monkeypatch.setattr(mask_rules, "jet_table_tensor", torch.from_numpy(mask_rules.jet_table()), raising=False)
    monkeypatch.setattr(mask_rules, "_JET", Table())
    monkeypatch.setattr(mask_rules, "_DEVICE_COPIES", {})
    v = torch.rand(2, 4, 4)
    first = mask_rules.jet(v)
    assert torch.equal(mask_rules.jet(v), first) and Table.copies == 1


def test_resume_reads_old_metrics_and_a_checkpoint_of_more_gpus(tmp_path, capsys):
    """A run resumed from a checkpoint written on a 2-GPU box, whose metrics.csv predates peak_mem_mb: it
    resumes with a one-line note, keeps the old rows (blank peak) and records the new epoch's peak."""
    from tools import report
    args = ["--epochs", "2", "--eval-attacks", "natural"]
    assert run("part", tmp_path / "r", *args) == 0
    path = tmp_path / "r" / "metrics.csv"
    rows = list(csv.DictReader(path.open()))
    assert all(float(r["peak_mem_mb"]) > 0 for r in rows)
    old = [k for k in rows[0] if k != "peak_mem_mb"]
    with path.open("w", newline="") as f:  # the file as the code before peak_mem_mb wrote it
        w = csv.DictWriter(f, fieldnames=old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2
    torch.save(ckpt, tmp_path / "r" / "last.pt")
    capsys.readouterr()
    assert run("part", tmp_path / "r", "--epochs", "3", "--lr-milestones", "2", "--eval-attacks", "natural",
               "--resume") == 0
    assert "RNG state of 2 GPU(s)" in (tmp_path / "r" / "log.txt").read_text()
    rows = list(csv.DictReader(path.open()))
    assert [r["peak_mem_mb"] for r in rows[:2]] == ["", ""] and float(rows[2]["peak_mem_mb"]) > 0
    assert report.main([str(tmp_path), "--plot", str(tmp_path / "c.png")]) == 0
    assert "| PART |" in capsys.readouterr().out


def test_run_identity_amp_and_tf32_split_the_rest_is_recorded(tmp_path, capsys):
    from tests.test_tools import real_run
    from tools import report
    base, _ = parse("part", constants(SCRIPTS["part"]), ["--data", "synthetic"])
    for argv in (["--amp", "bf16"], ["--tf32"]):
        other, _ = parse("part", constants(SCRIPTS["part"]), ["--data", "synthetic", *argv])
        assert effective(other) != effective(base) and training_differences(base, other, 1)
    other, _ = parse("part", constants(SCRIPTS["part"]), ["--data", "synthetic", "--channels-last", "--compile",
                                                          "--deterministic", "--device", "cpu"])
    other["world_size"] = 2
    assert effective(other) == effective(base) and not training_differences(base, other, 1)
    real_run(tmp_path, "a", [], 80.0)
    real_run(tmp_path, "b", ["--channels-last"], 82.0, seed=2)
    real_run(tmp_path, "c", ["--amp", "bf16"], 70.0)
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| PART (amp=none) | 81.00 ± 1.41 [2]" in out and "| PART (amp=bf16) | 70.00 [1]" in out
    assert "channels_last False [2], True [1]" in out


def test_a_setting_older_records_lack_reads_not_recorded_unless_its_old_value_is_certain():
    from tools.reporting.tables import recorded
    line = recorded([{"config": {"world_size": 1}}, {"config": {}}])  # the second predates both keys
    assert "world_size 1 [1], not recorded [1]" in line  # an older run may have used torchrun
    assert "deterministic False [2]" in line  # older code had no --deterministic


def test_ascend_hands_the_loss_float32_logits_under_bf16():
    model = build_model("resnet18", 10, width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        ascend(model, x, x.clone(), torch.tensor(8 / 255), 2 / 255, 1, lambda z: seen.append(z.dtype) or z.sum())
    assert seen == [torch.float32]


@pytest.fixture(scope="module")
def small():
    data = synthetic(n_train=8, n_test=8)
    torch.manual_seed(0)
    return build_model("resnet18", 10, width=8), to_float(data.x_test), data.y_test


def test_attacks_stay_in_their_budgets_under_bf16_and_channels_last(small):
    model, x, y = small
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    budget = torch.where(torch.rand_like(x) > 0.5, 8 / 255, 4 / 255)
    attacks = {"pgd": lambda: pgd(model, x, y, budget, 2 / 255, 3), "mma": lambda: mma(model, x, y, budget, 2 / 255, 3),
               "cw": lambda: cw(model, x, y, budget, 2 / 255, 3),
               "trades": lambda: trades_attack(model, x, y, budget, 2 / 255, 3),
               "mart": lambda: mart_attack(model, x, y, budget, 2 / 255, 3)}
    for name, attack in attacks.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_adv = attack()
        assert x_adv.dtype == torch.float32, name
        assert bool(((x_adv - x).abs() <= budget + 1e-6).all()), name
        assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1, name
        assert float((x_adv - x).abs().max()) > 4 / 255, name  # it did move, beyond the low budget somewhere


def test_bf16_logits_agree_with_fp32(small):
    model, x, _ = small
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert float((low - ref).abs().max()) <= BF16_LOGIT_TOL * float(ref.abs().max())


def test_a_tiny_run_completes_with_bf16_channels_last_tf32_and_deterministic(tmp_path, fp32_backends):
    assert run("part", tmp_path / "r", "--amp", "bf16", "--channels-last", "--tf32", "--deterministic") == 0
    rec = json.loads((tmp_path / "r" / "results.json").read_text())
    assert rec["config"]["amp"] == "bf16" and 0 <= rec["pgd20"] <= 100
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["deterministic"] is True and cfg["world_size"] == 1 and torch.are_deterministic_algorithms_enabled()
    assert upgrade({k: v for k, v in cfg.items() if k != "deterministic"})["deterministic"] is False


def test_compile_wraps_the_attack_model_and_times_compilation_apart(tmp_path, monkeypatch):
    """--compile compiles the loss module and the model the attacks run (here a pass-through stand-in for
    torch.compile), compiles them before epoch 1 and records that time; the compiling step leaves the run as it
    was, so with a pass-through "compiler" the weights equal those of a run without --compile."""
    compiled = []

    class Compiled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod, self.calls = module, 0

        def forward(self, *a):
            self.calls += 1
            return self._orig_mod(*a)

    def fake_compile(module, **kw):
        compiled.append(Compiled(module))
        return compiled[-1]
    monkeypatch.setattr(torch, "compile", fake_compile)
    assert run("part", tmp_path / "c", "--compile", "--eval-attacks", "natural") == 0
    assert run("part", tmp_path / "p", "--eval-attacks", "natural") == 0
    assert len(compiled) == 2 and all(c.calls > 0 for c in compiled)
    assert compiled[1]._orig_mod.__class__.__name__ == "ResNet"  # the model the attacks run
    rec = json.loads((tmp_path / "c" / "results.json").read_text())
    assert rec["compile_time_s"] >= 0 and "torch.compile:" in (tmp_path / "c" / "log.txt").read_text()
    assert same_weights(weights(tmp_path / "c" / "last.pt"), weights(tmp_path / "p" / "last.pt"))
    assert "compile_time_s" not in json.loads((tmp_path / "p" / "results.json").read_text())


def test_benchmark_epoch_mode_times_real_epochs_under_a_combined_setting(tmp_path):
    from tools import benchmark
    # width 8: torch 2.14's oneDNN crashes in the CPU backward of width 4's 4-to-8-channel strided 1x1 convolution
    # in channels_last (docs/performance.md)
    rec = benchmark.benchmark(["--epoch", "--models", "resnet18", "--width", "8", "--batch-size", "8", "--n-train", "16",
                          "--settings", "tf32+channels_last", "--json", str(tmp_path / "b.json")])
    assert [(r["method"], r["setting"], r["images"]) for r in rec["speed"]] == \
        [("AT", "tf32+channels_last", 16), ("PART", "tf32+channels_last", 16)]
    assert all(r["epoch_s"] > 0 and r["images_per_s"] > 0 and r["peak_mem_mb"] > 0 for r in rec["speed"])
    assert benchmark.speed_setting("fast+bf16") == benchmark.speed_setting("fast-bf16")
    assert benchmark.main(["--settings", "fp32+turbo"]) == 2


def test_device_check_bad_input_exits_2_and_a_failing_check_exits_1(tmp_path, monkeypatch, capsys):
    from tools import device_check
    assert device_check.main(["--data-dir", str(tmp_path / "none.npz"), "--json", str(tmp_path / "d.json")]) == 2
    assert device_check.main(["--sections", "9"]) == 2
    assert device_check.main(["--json", str(tmp_path)]) == 2  # refused before any check runs
    assert len(capsys.readouterr().err.strip().splitlines()) == 3
    monkeypatch.setattr(device_check, "_train", lambda argv: 1 / 0)
    assert device_check.main(["--quick", "--sections", "2", "--json", str(tmp_path / "d.json")]) == 1
    checks = json.loads((tmp_path / "d.json").read_text())["checks"]
    assert [c["status"] for c in checks] == ["fail", "skipped"] and "ZeroDivisionError" in checks[0]["reason"]


@pytest.mark.slow
def test_device_check_quick_reports_every_section(tmp_path):
    from tools import device_check
    path = tmp_path / "device_check.json"
    assert device_check.main(["--quick", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())
    assert rec["device"] and rec["versions"]["torch"] and "commit" in rec
    assert {c["section"] for c in rec["checks"]} == {1, 2, 3, 4, 5}
    assert all(c.keys() == {"name", "section", "status", "figure", "reason"} for c in rec["checks"])
    assert all(c["status"] == "skipped" and "no accelerator" in c["reason"] for c in rec["checks"] if c["section"] == 1)
    assert all(c["status"] == "pass" for c in rec["checks"] if c["section"] in (2, 4))
    assert {(r["model"], r["method"]) for r in rec["speed"]} >= {("resnet18", "AT"), ("resnet18", "PART"),
                                                                 ("wrn34-10", "PART")}
    assert all({"model", "method", "setting", "epoch_s", "images_per_s", "peak_mem_mb"} <= r.keys() for r in rec["speed"])


@pytest.mark.slow
def test_wheelhouse_downloads_the_requirements_and_extras(tmp_path):
    """tools/wheelhouse.sh with a stand-in for `python -m pip download` (no network in the tests): the folder gets
    requirements.txt plus the extras, the pip call its options, and SHA256SUMS lists the downloaded files."""
    import os
    import subprocess
    from tests.conftest import ROOT
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\n[ "$3" = "--version" ] && exit 0\necho "$@" > "$LOG"\n'
                    'while [ "$1" != "--dest" ]; do shift; done\necho wheel > "$2/torch-9.9-py3-none-any.whl"\n')
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), LOG=str(tmp_path / "log"), EXTRAS="torchcam", PYTHON_VERSION="3.11")
    proc = subprocess.run([os.path.join(ROOT, "tools", "wheelhouse.sh"), str(tmp_path / "wh")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    req = (tmp_path / "wh" / "requirements.txt").read_text().split()
    assert req[-1] == "torchcam" and any(r.startswith("grad-cam") for r in req)
    call = (tmp_path / "log").read_text()
    assert call.startswith("-m pip download --dest") and "--python-version 3.11 --only-binary=:all:" in call
    assert "torch-9.9-py3-none-any.whl" in (tmp_path / "wh" / "SHA256SUMS").read_text()
