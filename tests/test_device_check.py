"""The device check and the devices: an interrupt stops a tool that trains in its own process (exit
130 / 143, the record of what ran, no temporary folders left); goals a device cannot measure, or settings --quick
leaves out, are skipped with their reason; bad --sections, --data-dir and --device stop with one line."""
import json
import os
import signal
import tempfile

import pytest
import torch

from tests.test_scripts import SCRIPTS, constants
from tools import benchmark, device_check, device_speed
from utils import devices
from utils.entry import main as script_main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def interrupt(kind):
    """What the patched call does: Ctrl-C (KeyboardInterrupt) or a real SIGTERM to this process, which the tool's
    handler (utils.errors.entry_point) turns into Terminated."""
    if kind == "SIGTERM":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        raise KeyboardInterrupt


# ----------------------------------------------------------------------------------------------------
# interrupts
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,code", [("Ctrl-C", 130), ("SIGTERM", 143)])
@pytest.mark.parametrize("where", ["training run", "speed timing"])
def test_device_check_interrupt_stops_and_writes_what_ran(where, kind, code, tmp_path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM inside a section that trains in this process (a run of section 2 through the scripts'
    engine, or an epoch timed by section 3) is no failed check: the device check stops with 130 / 143, writes
    the checks done before, marked interrupted, and removes its temporary folder."""
    import utils.engine
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    if where == "training run":  # inside the per-epoch check of the first run of section 2
        section, check = 2, "two --deterministic runs"
        monkeypatch.setattr(utils.engine, "quick_eval", lambda *a, **k: interrupt(kind))
    else:  # inside the first epoch that section 3 times
        section, check = 3, "resnet18 fp32 epochs"
        monkeypatch.setattr(benchmark, "train_epoch", lambda *a, **k: interrupt(kind))
    path = tmp_path / "d.json"
    assert device_check.main(["--quick", "--device", "cpu", "--sections", "1", str(section), "--json", str(path)]) == code
    err = capsys.readouterr().err
    what = "terminated (SIGTERM)" if kind == "SIGTERM" else "interrupted (Ctrl-C)"
    assert err.strip().splitlines()[-1].startswith(f"{what} during section {section}, check '{check}'"), err
    assert "Traceback" not in err
    rec = json.loads(path.read_text())
    assert rec["interrupted"] == {"by": what, "section": section, "check": check}
    assert [c["section"] for c in rec["checks"]] == [1] * 6  # section 1's checks (skipped on a CPU); no failure
    assert not [f for f in os.listdir(scratch) if f.startswith("device_check_")]  # its run folders are gone


def test_device_check_torchrun_is_ended_with_its_workers_when_interrupted(tmp_path, monkeypatch):
    """Section 5's torchrun runs in a process group of its own, which a timeout or an interrupt ends, workers
    included, before the exception goes on: here a stand-in for torchrun whose worker would sleep for a minute."""
    import subprocess
    import sys
    import time
    pid_file = tmp_path / "worker.pid"
    stand_in = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; "
                f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(w.pid)); time.sleep(60)")
    real_popen = subprocess.Popen
    monkeypatch.setattr(device_check.subprocess, "Popen",
                        lambda cmd, **k: real_popen([sys.executable, "-c", stand_in], **k))
    t = time.time()
    with pytest.raises(subprocess.TimeoutExpired):
        device_check._torchrun(2, "cpu", str(tmp_path / "ddp"), {**device_check.QUICK, "timeout": 3})
    assert time.time() - t < 20
    worker = int(pid_file.read_text())
    for _ in range(50):  # the worker is gone (or a zombie of init's, about to be reaped)
        try:
            os.kill(worker, 0)
            state = open(f"/proc/{worker}/stat").read().split(")")[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its torchrun")


@pytest.mark.parametrize("kind,code", [("Ctrl-C", 130), ("SIGTERM", 143)])
def test_benchmark_interrupt_writes_the_timings_done(kind, code, tmp_path, monkeypatch, capsys):
    """The benchmark times epochs in this process too: interrupted in its second setting, it exits 130 / 143 and
    writes the first setting's rows, marked interrupted."""
    real, calls = benchmark.train_epoch, []

    def train_epoch(*a, **k):  # each setting runs 2 untimed and 2 timed epochs
        calls.append(1)
        if len(calls) == 5:
            interrupt(kind)
        return real(*a, **k)
    monkeypatch.setattr(benchmark, "train_epoch", train_epoch)
    path = tmp_path / "b.json"
    assert benchmark.main(["--epoch", "--models", "resnet18", "--width", "8", "--batch-size", "8", "--n-train", "16",
                           "--settings", "fp32", "tf32", "--json", str(path)]) == code
    err = capsys.readouterr().err
    what = "terminated (SIGTERM)" if kind == "SIGTERM" else "interrupted (Ctrl-C)"
    assert err.strip().splitlines()[-1].startswith(what) and "Traceback" not in err, err
    rec = json.loads(path.read_text())
    assert rec["interrupted"] == what and [(r["method"], r["setting"]) for r in rec["speed"]] == \
        [("AT", "fp32"), ("PART", "fp32")]


# ----------------------------------------------------------------------------------------------------
# goals
# ----------------------------------------------------------------------------------------------------
def _rows(settings, peak=100.0):
    return [{"model": "resnet18", "method": m, "setting": s, "epoch_s": 10.0 if m == "AT" else 11.0,
             "peak_mem_mb": peak if m == "AT" else peak * 1.1} for s in settings for m in ("AT", "PART")] + \
        [{"model": "resnet18", "method": "official mask pass", "setting": "fp32 (transcription)", "epoch_s": 200.0,
          "peak_mem_mb": None}]


def test_goals_a_cpu_cannot_measure_and_settings_quick_leaves_out_are_skipped():
    by = {g["name"]: g for g in device_speed.goals(_rows(["fp32"]), torch.device("cpu"), device_check.QUICK)}
    assert by["PART / AT epoch, fp32"]["status"] == "met" and by["PART / AT epoch, fp32"]["figure"] == 1.1
    peak = by["PART / AT peak memory, fp32"]
    assert peak["status"] == "skipped" and peak["met"] is None and peak["figure"] is None and "RSS" in peak["reason"]
    for setting in ("tf32", "fast", "bf16"):  # left out by --quick: listed, skipped, with the reason
        assert by[f"PART / AT epoch, {setting}"]["status"] == "skipped"
        assert by[f"PART / AT epoch, {setting}"]["reason"] == "--quick times fp32 only"
    assert by["PART epoch, tf32 (s)"]["status"] == by["PART epoch, bf16 (s)"]["status"] == "skipped"
    assert all(g["status"] in ("met", "not met", "skipped") for g in by.values())


def test_goals_on_cuda_measure_peak_memory_and_name_an_untimed_setting():
    rows = _rows(["fp32", "tf32", "fast"])  # bf16 not timed (say, unsupported)
    by = {g["name"]: g for g in device_speed.goals(rows, torch.device("cuda"), device_check.FULL)}
    assert by["PART / AT peak memory, fp32"]["status"] == "met" and by["PART / AT peak memory, fp32"]["figure"] == 1.1
    assert by["PART epoch, bf16 (s)"]["status"] == "skipped" and "not timed" in by["PART epoch, bf16 (s)"]["reason"]
    assert by["official pipeline epoch / our fastest PART epoch"]["status"] == "met"


def test_quick_lists_the_settings_it_leaves_out_as_skipped_checks(monkeypatch, capsys):
    monkeypatch.setattr(device_speed, "bench_epochs", lambda model, *a, **k: [
        {"model": model, "method": m, "setting": "fp32", "images": 64, "epoch_s": 1.0, "peak_mem_mb": 1.0}
        for m in ("AT", "PART")])
    monkeypatch.setattr(device_speed, "official_image_pass", lambda model, x, *a: (x, "transcription"))
    rep = device_check.Report()
    device_speed.section_speed(rep, torch.device("cpu"), device_check.QUICK)
    skipped = {c["name"]: c["reason"] for c in rep.checks if c["status"] == "skipped"}
    assert skipped == {f"resnet18 {s} epochs": "--quick times fp32 only" for s in ("tf32", "fast", "bf16")}


# ----------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------
def test_device_check_refuses_a_section_named_twice(tmp_path, capsys):
    assert device_check.main(["--sections", "1", "1", "--json", str(tmp_path / "d.json")]) == 2
    assert "--sections names 1 more than once" in one_line_error(capsys)
    assert not (tmp_path / "d.json").exists()


def test_a_data_dir_that_is_no_npz_is_called_what_it_is(tmp_path, capsys):
    (tmp_path / "d.json").write_text('{"x_train": []}')
    assert device_check.main(["--data-dir", str(tmp_path / "d.json"), "--json", str(tmp_path / "r.json")]) == 2
    err = one_line_error(capsys)
    assert "not a readable .npz file: it holds JSON text" in err and "pickled" not in err, err
    import numpy as np
    np.save(tmp_path / "one.npy", np.zeros(3))
    assert device_check.main(["--data-dir", str(tmp_path / "one.npy"), "--json", str(tmp_path / "r.json")]) == 2
    assert "np.save's .npy" in one_line_error(capsys)


@pytest.mark.parametrize("device", ["meta", "mps"])
@pytest.mark.parametrize("tool", ["part", "part_t", "device_check", "benchmark"])
def test_a_device_this_code_does_not_run_on_is_refused_at_parse_time(tool, device, tmp_path, capsys):
    out = tmp_path / "run"
    if tool in SCRIPTS:
        code = script_main(tool, constants(SCRIPTS[tool]), ["--data", "synthetic", "--width", "4", "--epochs", "1",
                                                            "--warm-up", "0", "--out", str(out), "--device", device])
    else:
        code = {"device_check": device_check, "benchmark": benchmark}[tool].main(
            ["--device", device, "--json", str(out / "r.json")])
    assert code == 2
    err = one_line_error(capsys)
    assert f"--device: {device} is not a device this code runs on" in err and "use auto, cpu" in err.replace(
        "auto or cpu", "auto, cpu"), err
    assert not out.exists()  # no folder, no config.json, no log.txt


def test_devices_named_are_those_here(monkeypatch):
    assert devices.device_problem("auto") is None and devices.device_problem("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.usable_devices() == ["auto", "cpu", "cuda", "cuda:0", "cuda:1"]
    assert devices.device_problem("cuda:1") is None
    assert devices.device_problem("cuda:2").endswith("only 2 GPU(s) exist; use auto, cpu, cuda or cuda:0 to cuda:1")
    assert devices.device_problem("mps").endswith("use auto, cpu, cuda or cuda:0 to cuda:1")
    with pytest.raises(devices.UsageError, match="--device meta is not a device"):
        devices.pick_device("meta", 0)
