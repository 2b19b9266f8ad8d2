"""The grid's run loop and its executors (tools/executors.py; job.json: tools/jobs.py; a run folder's state:
tools/run_state.py): flags after --, GPUs per job, interrupts, job.json, --status, and the submitit path on the local
executor (preemption and requeue, DDP with two tasks, failures)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_reliability import call
from tests.test_scripts import TINY, same_weights, set_flag, weights
from tools import executors, gpus, grid, jobs, run_state, studies
from utils.config import parse, script_constants
from utils.errors import UsageError
from utils.runs import lock_holder

GRID = ["--study", "mask-source", "--data", "synthetic", "--models", "resnet18", "--seeds", "1"]
EXTRA = ["--width", "4", "--epochs", "2", "--warm-up", "1", "--batch-size", "32", "--n-train", "64", "--num-steps", "2",
         "--n-eval", "32", "--n-eval-epoch", "32", "--eval-attacks", "natural", "--eval-batch-size", "32",
         "--no-mask-figure"]
PART = os.path.join(ROOT, "train_eval_part.py")



def record(cfg: dict) -> dict:
    """A finished run's results.json as training writes it (method and seed beside the config), for the grid to read."""
    return {"method": cfg["method"], "seed": cfg["seed"], "config": cfg}

def refused(capsys, argv) -> str:
    """grid.main(argv) must exit 2 with one line on stderr; returns it."""
    capsys.readouterr()
    code = grid.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def me(**fields) -> dict:
    """job.json fields that name this process (the test) as a run's live job on this machine."""
    return dict(job_id=str(os.getpid()), pid=os.getpid(), pid_start=jobs.process_start(os.getpid()),
                node=socket.gethostname(), **fields)


def started(monkeypatch):
    """subprocess.Popen replaced by a child that has finished at once (exit 0); returns the commands started."""
    calls = []

    class Done:
        returncode, pid = 0, 0

        def __init__(self, argv, **kw):
            calls.append(argv)

        def poll(self):
            return 0

    monkeypatch.setattr(executors.subprocess, "Popen", Done)
    return calls


def wait_for(predicate, timeout=600):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------------
# flags after --
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("study,extra,word", [
    ("mask-source", ["--seed=5"], "--seed is set by the grid"),
    ("mask-source", ["--see", "5"], "unrecognized arguments: --see"),  # no prefix matching
    ("mask-source", ["--out=x"], "--out is set by the grid"),
    ("mask-source", ["--data", "cifar10"], "--data is set by the grid"),
    ("mask-source", ["--resume"], "--resume is set by the grid"),
    ("mask-source", ["--mask-source", "permuted"], "--mask-source is what the rows of study mask-source set"),
    ("mask-source", ["--mask"], "--mask/--no-mask is what the rows"),
    ("eps-low", ["--low-epsilon=6/255"], "--low-epsilon is what the rows of study eps-low set"),
    ("main", ["--beta", "3"], "do not fit train_eval_part.py"),  # TRADES / MART only: every row must take it
    ("figure1", ["--epochs", "2", "--width", "4", "--epochs=3"], "--epochs is given twice after -- (--epochs and "
                                                                 "--epochs=3)"),
    ("main", ["--eval-attacks", "natural", "--eval-attacks", "pgd20"], "--eval-attacks is given twice"),
])
def test_flags_after_dashdash_that_the_grid_or_a_row_sets_are_refused(study, extra, word, capsys):
    assert word in refused(capsys, ["--study", study, "--data", "synthetic", "--models", "resnet18", "--", *extra])


def test_other_flags_after_dashdash_pass_in_either_form_and_name_the_folder(capsys):
    assert grid.main(["--study", "figure1", "--data", "synthetic", "--models", "resnet18", "--seeds", "1", "--",
                      "--width=4", "--data-dir=/a/b.npz", "--epochs", "30"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all("runs/figure1/synthetic-resnet18-width4-epochs30/" in line for line in lines)


def test_flags_after_dashdash_that_break_a_row_are_refused_before_any_run(capsys):
    # every row's own flags are parsed with the extra ones: the rows keep the default warm-up of 20 epochs
    assert grid.main(["--study", "mask-source", "--data", "synthetic", "--models", "resnet18", "--seeds", "1", "--",
                      "--epochs", "3"]) == 2
    assert "row AT with the flags after --" in capsys.readouterr().err
    # figure1 trains every row without warm-up, so a short schedule fits all five rows
    assert grid.main(["--study", "figure1", "--data", "synthetic", "--models", "resnet18", "--seeds", "1", "--",
                      "--epochs", "3"]) == 0
    assert grid.main(["--study", "main", "--data", "synthetic", "--models", "resnet18", "--seeds", "1", "--",
                      "--overwrite"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_training_scripts_take_whole_flag_names_only():
    constants = script_constants(PART)
    with pytest.raises(UsageError, match="unrecognized arguments: --see"):
        parse("part", constants, ["--see", "5"])
    assert parse("part", constants, ["--seed=5"])[0]["seed"] == 5


@pytest.mark.parametrize("argv,word", [
    (["--seeds", "1", "1"], "--seeds names 1 more than once"),
    (["--data", "synthetic", "synthetic"], "--data names synthetic more than once"),
    (["--slurm-partition", "gpu"], "--slurm-partition only apply with --executor slurm"),
    (["--executor", "local", "--jobs", "2"], "--jobs and --gpus are for --executor subprocess"),
    (["--tasks-per-node", "2"], "--tasks-per-node and --wait are for --executor local or slurm"),
    (["--executor", "slurm", "--slurm-extra", "=x"], "expected KEY=VALUE"),
    (["--status", "--run"], "not allowed with"),
    (["--gpus", "0 1"], "expected a GPU index or UUID"),
    (["--gpus", "0", ""], "expected a GPU index or UUID"),
    (["--gpus", "0,"], "expected a GPU index or UUID"),
    # a GPU that is none (-1 hid every GPU: the runs went to the CPU), several for one single-process job
    (["--gpus", "-1"], "expected a GPU index or UUID"),
    (["--gpus", "0,1"], "'0,1' names several GPUs for one job"),
    (["--gpus", "GPU-a,GPU-b"], "give them apart (--gpus GPU-a GPU-b)"),
    # a flag that would be ignored
    (["--wait"], "--wait applies only with --run"),
    (["--executor", "local", "--wait", "--status"], "--wait applies only with --run"),
    (["--jobs", "2"], "--jobs only apply with --run (or --status)"),
    (["--executor", "local", "--tasks-per-node", "2"], "--executor local and --tasks-per-node only apply with --run"),
    # Slurm values that Slurm would read as something else: empty or multi-word text, a zero or a number past its
    # field (0xfffe CPUs reads as unset), memory that rounds to --mem=0 (all of the node)
    *[(["--executor", "slurm", f"--slurm-{name}", ""], "must not be empty")
      for name in ("partition", "account", "qos", "constraint")],
    (["--executor", "slurm", "--slurm-partition", "gpu\n#SBATCH --x"], "one word without blanks or line breaks"),
    (["--executor", "slurm", "--slurm-constraint", "a100 h100"], "one word without blanks"),
    (["--executor", "slurm", "--slurm-mem-gb", "0.0001"], "would be written --mem=0MB"),
    (["--executor", "slurm", "--slurm-mem-gb", "0"], "--slurm-mem-gb"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time"),
    (["--executor", "slurm", "--slurm-cpus-per-task", "0"], "--slurm-cpus-per-task"),
    (["--executor", "slurm", "--slurm-cpus-per-task", "65534"], "[1, 65533]"),
    (["--executor", "slurm", "--slurm-nodes", "0"], "--slurm-nodes"),
    (["--executor", "slurm", "--slurm-array-parallelism", "0"], "--slurm-array-parallelism"),
    (["--executor", "slurm", "--tasks-per-node", "70000"], "--tasks-per-node"),
    (["--executor", "slurm", "--slurm-extra", "mem=0"], "mem is set by --slurm-mem-gb (checked there)"),
    (["--executor", "slurm", "--slurm-extra", "time=0"], "time is set by --slurm-time"),
    (["--executor", "slurm", "--slurm-extra", "mem-per-cpu=0G"], "Slurm reads a zero mem-per-cpu"),
    (["--executor", "slurm", "--slurm-extra", "gres=gpu:0"], "Slurm reads a zero gres"),
    (["--executor", "slurm", "--slurm-extra", "comment=a\nb"], "one word without blanks or line breaks"),
    (["--executor", "slurm", "--slurm-extra", "comment="], "one word without blanks or line breaks"),
])
def test_bad_grid_input_exits_2_with_one_line(argv, word, capsys):
    assert word in refused(capsys, [*GRID, *argv])


def test_gpus_are_checked_against_the_gpus_this_process_may_use(tmp_path, capsys, monkeypatch):
    """With --run, every --gpus value must name a GPU of this machine (an index, or a UUID nvidia-smi lists, or a
    prefix of one alone), or one of CUDA_VISIBLE_DEVICES's entries when that is set; printing the commands (for
    another machine) checks nothing."""
    calls = started(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpus, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(gpus, "gpu_uuids", lambda: ["GPU-1234-aaaa", "GPU-1299-bbbb", "MIG-77"])
    run = [*GRID, "--root", str(tmp_path), "--run", "--gpus"]
    for ids, word in ((["2"], "--gpus 2: this machine shows 2 GPU(s) (0 to 1)"),
                       (["0", "GPU-abc"], "--gpus GPU-abc: no GPU of this machine has that UUID"),
                       (["GPU-12"], "--gpus GPU-12: no GPU"),  # a prefix of two UUIDs names neither
                       (["MIG-7"], None), (["GPU-1234-aaaa", "1"], None), (["0", "GPU-129"], None)):
        if word:
            assert word in refused(capsys, [*run, *ids]) and calls == []
        else:
            assert grid.main([*run, *ids]) == 0 and len(calls) == 4, ids
            calls.clear()
            capsys.readouterr()
    assert grid.main([*GRID, "--gpus", "7"]) == 0  # only printed
    monkeypatch.setattr(gpus, "visible_gpus", lambda: [])
    assert "--gpus 0: this process sees no GPU (torch.cuda finds none)" in refused(capsys, [*run, "0"])
    assert "this process sees no GPU" in refused(capsys, [*run, "GPU-1234-aaaa"])  # nvidia-smi's, but torch's none
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(gpus, "visible_gpus", lambda: ["3", "5"])
    assert "only the GPUs CUDA_VISIBLE_DEVICES names (3, 5)" in refused(capsys, [*run, "0"])
    assert "only the GPUs CUDA_VISIBLE_DEVICES names" in refused(capsys, [*run, "GPU-1234-aaaa"])
    assert grid.main([*run, "5"]) == 0 and len(calls) == 4


def test_a_package_a_run_needs_stops_the_grid_once_before_the_first_run(tmp_path, capsys, monkeypatch):
    """What every run checks before it needs data (utils.checks.check_inputs: the packages its evaluation, CAM
    backend and logging need, the batch split over the processes of a run) is checked for each run the grid would
    start, before the first: exit 2 with one line, and no run started or submitted, instead of each failing alike."""
    import importlib.util
    calls = started(monkeypatch)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchattacks" else
                        real(name, *a))
    argv = ["--study", "as-published", "--data", "synthetic", "--models", "resnet18", "--seeds", "1",
            "--root", str(tmp_path), "--run"]
    err = refused(capsys, argv)
    assert "AT-as-published" in err and "pip install torchattacks==3.4.0" in err and "no run was started" in err
    assert calls == []
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("tensorboard") is None:
        err = refused(capsys, [*GRID, "--root", str(tmp_path), "--run", "--", *EXTRA, "--tensorboard"])
        assert "--tensorboard needs the tensorboard package" in err and calls == []
    pytest.importorskip("submitit")
    err = refused(capsys, [*GRID, "--root", str(tmp_path), "--executor", "local", "--tasks-per-node", "3", "--run",
                           "--", *EXTRA])
    assert "--batch-size 32 is not divisible by the 3 processes" in err and calls == []
    assert not list(tmp_path.rglob("job.json"))  # nothing was submitted


def test_a_root_that_cannot_be_written_stops_the_grid_before_any_run(tmp_path, capsys, monkeypatch):
    """--run with a --root that is a file, lies under a file or under a folder that takes no file: exit 2 with one
    line naming --root, and no run started (each would otherwise start and fail alike)."""
    calls = started(monkeypatch)
    (tmp_path / "afile").write_text("x")
    for root, word in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "runs", "which is a file"),
                       ("/proc/part-runs", "cannot create or write files in /proc")):
        err = refused(capsys, [*GRID, "--root", str(root), "--run"])
        assert err.startswith("error: --root ") and word in err, err
    assert calls == []


def test_slurm_without_sbatch_exits_2_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(executors.shutil, "which", lambda name: None)
    root = tmp_path / "runs"
    err = refused(capsys, [*GRID, "--root", str(root), "--executor", "slurm", "--run"])
    assert "needs Slurm, but sbatch and srun are not on this machine's PATH" in err
    assert not root.exists()


def test_without_run_slurm_prints_the_sbatch_script_submitit_writes(tmp_path, capsys):
    pytest.importorskip("submitit")
    root = tmp_path / "runs"
    assert grid.main([*GRID, "--root", str(root), "--executor", "slurm", "--slurm-nodes", "2",
                      "--slurm-gpus-per-node", "4", "--slurm-partition", "gpu", "--slurm-time", "600",
                      "--slurm-mem-gb", "64", "--slurm-extra", "requeue", "mail-type=END"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=600", "#SBATCH --mem=64GB", "#SBATCH --array=0-3%4",
                 "#SBATCH --signal=USR2@90", "#SBATCH --requeue", "#SBATCH --mail-type=END",
                 "-u -m submitit.core._submit"):
        assert line in out, line
    assert not root.exists()


def test_slurm_submission_status_and_owner_with_stand_in_slurm_commands(tmp_path, monkeypatch, capsys):
    """sbatch, srun and squeue as shell scripts: the grid submits one array through submitit, writes job.json,
    --status asks squeue, and a second --run does not submit the runs the array owns."""
    pytest.importorskip("submitit")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    queue = tmp_path / "queue"
    queue.write_text("PENDING\n")
    for name, body in {"sbatch": 'echo "Submitted batch job 4242"', "srun": "exit 0",
                       "squeue": f'case "$3" in 4242_*) cat {queue};; esac'}.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    argv = [*GRID, "--methods", "AT", "PART-cam", "--root", str(tmp_path / "runs"), "--tag", "", "--executor",
            "slurm", "--slurm-partition", "gpu", "--slurm-gpus-per-node", "2", "--run"]
    assert grid.main(argv) == 0
    assert "submitted 2 run(s) as slurm job(s) 4242" in capsys.readouterr().out
    folders = [str(tmp_path / "runs" / "synthetic-resnet18" / f"{row}-seed1") for row in ("AT", "PART-cam")]
    recs = [jobs.read_job(f) for f in folders]
    assert [(r["executor"], r["state"], r["job_id"]) for r in recs] == [("slurm", "queued", f"4242_{i}")
                                                                         for i in range(2)]
    script = "".join(p.read_text() for p in (tmp_path / "runs" / "submitit").rglob("*_submission.sh"))
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --ntasks-per-node=2"):
        assert line in script, line
    status = [a if a != "--run" else "--status" for a in argv]
    assert grid.main(status) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("queued ") and "slurm job 4242_0" in out[0] and out[-1] == "2 runs: 2 queued"
    assert grid.main(argv) == 0  # the array owns both runs: nothing is submitted again
    out = capsys.readouterr().out
    assert "slurm job 4242_1 owns it (queued)" in out and "submitted" not in out
    queue.write_text("")  # the jobs are gone without a record: interrupted, and the next --run starts them again
    assert grid.main(status) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "2 runs: 2 interrupted" and "--run starts it again" in out[0] and "ended without a record" in out[0]
    assert [jobs.read_job(f)["state"] for f in folders] == ["interrupted"] * 2  # job.json says so too


# ----------------------------------------------------------------------------------------------------
# the subprocess executor: GPUs, owners
# ----------------------------------------------------------------------------------------------------
def test_each_job_gets_its_own_gpu(tmp_path, monkeypatch, capsys):
    started, running = [], []

    class Child:
        returncode, pid = 0, 0

        def __init__(self, argv, env=None, **kw):
            self.gpu, self.threads, self.polls = env.get("CUDA_VISIBLE_DEVICES"), env.get("OMP_NUM_THREADS"), 0
            assert self.gpu is None or self.gpu not in [c.gpu for c in running]  # no two running jobs share one
            started.append(self)
            running.append(self)

        def poll(self):
            self.polls += 1
            if self.polls < 3:
                return None
            if self in running:
                running.remove(self)
            return 0

    monkeypatch.setattr(executors.subprocess, "Popen", Child)
    monkeypatch.setattr(executors.time, "sleep", lambda s: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], list(studies.STUDIES["mask-source"]), [1, 2],
                            str(tmp_path))
    assert grid.run_all(cmds, opts=executors.Options(jobs=2, gpus=["0", "1"])) == 0
    assert sorted(c.gpu for c in started) == ["0"] * 4 + ["1"] * 4 and {c.threads for c in started} == {
        str(max(1, os.cpu_count() // 2))}
    monkeypatch.setattr(gpus, "visible_gpus", lambda: ["3", "5"])  # default: every visible GPU
    started.clear()
    assert grid.run_all(cmds, jobs=2) == 0 and sorted({c.gpu for c in started}) == ["3", "5"]
    started.clear()
    assert grid.run_all(cmds, jobs=1) == 0  # one job at a time: the environment as it is
    assert {c.gpu for c in started} == {os.environ.get("CUDA_VISIBLE_DEVICES")}
    capsys.readouterr()
    assert grid.main([*GRID, "--gpus", "0", "1"]) == 0  # printed commands carry the variable
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"] * 2


def test_a_run_another_live_job_or_process_owns_is_not_started_twice(tmp_path, capsys, monkeypatch):
    from utils.runs import RunFolder
    gone = dead_pid()
    calls = started(monkeypatch)
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT", "PART-cam", "PART-official"], [1],
                            str(tmp_path))
    jobs.update_job(cmds[0][0], new=True, executor="local", **me(state="running"))
    lock = RunFolder(cmds[1][0])  # a run in progress here, without job.json (as an older grid's runs)
    try:
        assert grid.run_all(cmds) == 0
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert f"local job {os.getpid()} owns it (running)" in out and f"process {os.getpid()} is running it" in out
    assert [c[c.index("--out") + 1] for c in calls] == [cmds[2][0]]
    jobs.update_job(cmds[0][0], job_id=str(gone), pid=gone)  # its job is gone: the run starts
    calls.clear()
    assert grid.run_all(cmds[:1]) == 0 and len(calls) == 1


def test_a_pid_that_now_belongs_to_another_process_does_not_own_the_run(tmp_path, capsys, monkeypatch):
    """job.json names a process by pid and start time: a live process that got the pid since (another start time;
    for an older record without one, another command line) is not the run's, and the run starts. The run's own
    process does own it, and the grid says how to stop it."""
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT"], [1], str(tmp_path),
                            ["--epochs", "2", "--warm-up", "1"])
    (folder, argv), = cmds
    sleep = ["-c", "import time; time.sleep(120)"]
    other = subprocess.Popen([sys.executable, *sleep])
    twin = subprocess.Popen([sys.executable, *sleep, *argv[2:]])  # the command line an older record names
    calls = started(monkeypatch)
    try:
        wait_for(lambda: jobs.process_start(other.pid) and jobs.process_start(twin.pid), 60)
        base = dict(executor="subprocess", node=socket.gethostname(), state="running", starts=["x"], command=argv)
        for rec, owned in ((dict(job_id=str(other.pid), pid=other.pid, pid_start="boot:1"), False),  # pid reused
                           (dict(job_id=str(other.pid)), False),  # an older record: another command line
                           (dict(job_id=str(twin.pid), command=["python", *sleep, *argv[2:]]), True),  # its command
                           (dict(job_id=str(other.pid), pid=other.pid,
                                 pid_start=jobs.process_start(other.pid)), True)):
            jobs.update_job(folder, new=True, **{**base, **rec})
            calls.clear()
            capsys.readouterr()
            assert grid.run_all(cmds) == 0
            out = capsys.readouterr().out
            assert (calls == []) == owned, (rec, out)
            if owned:
                pid = rec.get("pid") or rec["job_id"]
                assert f"subprocess job {rec['job_id']} owns it (running); wait for it, or stop it (kill {pid}) and " \
                       f"run the same command again" in out and "1 run(s) left to the jobs" in out
            else:
                assert jobs.read_job(folder)["job_id"] == "0"  # the grid's own (stand-in) child now
    finally:
        for p in (other, twin):
            p.kill()
            p.wait()


def test_two_grids_on_one_root_neither_restart_nor_mark_the_others_runs(tmp_path, capsys, monkeypatch):
    """Grid A decides about each run again, under the run folder's job lock, right before it starts it: a run that
    grid B finished meanwhile is skipped as finished (its job.json left as B wrote it, not marked failed), and one
    that B started meanwhile is left to B."""
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT", "PART-cam", "PART-official"], [1],
                            str(tmp_path), ["--epochs", "2", "--warm-up", "1"])
    (first, _), (second, second_argv), (third, _) = cmds
    calls = []

    class GridB:  # while A's first run trains, grid B finishes the second run and starts the third
        returncode, pid = 0, 0

        def __init__(self, argv, **kw):
            calls.append(argv)
            os.makedirs(second, exist_ok=True)
            with open(os.path.join(second, "results.json"), "w") as f:
                json.dump(record(parse("part", script_constants(PART), second_argv[2:])[0]), f)
            jobs.update_job(second, new=True, executor="subprocess", job_id="1", state="finished", exit_code=0)
            jobs.update_job(third, new=True, executor="subprocess", command=["x"], **me(state="running"))

        def poll(self):
            return 0

    monkeypatch.setattr(executors.subprocess, "Popen", GridB)
    assert grid.run_all(cmds) == 0
    out = capsys.readouterr().out
    assert len(calls) == 1 and calls[0][calls[0].index("--out") + 1] == first
    assert f"[2/3] finished already: {second}" in out and f"[3/3] not started: {third}: subprocess job" in out
    assert jobs.read_job(second)["state"] == "finished" and jobs.read_job(third)["state"] == "running"


def test_the_job_lock_keeps_a_second_grid_out_while_one_decides(tmp_path):
    """While one process holds a run folder's job lock (deciding to start the run, and recording it), another's
    job.json update waits for it, and then sees what the first wrote."""
    import threading
    folder = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys
sys.path.insert(0, {ROOT!r})
from tools import jobs
with jobs.job_lock({folder!r}):
    print("held", flush=True)
    sys.stdin.readline()  # until the test says go
    jobs.update_job({folder!r}, new=True, executor="subprocess", job_id="1", state="running")
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        got = {}
        second = threading.Thread(target=lambda: got.update(jobs.update_job(folder, requeues=3)))
        second.start()
        second.join(0.5)
        assert second.is_alive()  # it cannot have finished: the lock is held
        holder.stdin.write("go\n")
        holder.stdin.flush()
        second.join(60)
        assert not second.is_alive() and got["job_id"] == "1" and got["requeues"] == 3
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_record_whose_job_ended_without_saying_so_is_settled(tmp_path, capsys):
    """The grid was killed (kill -9) and its child went on to finish, or died too: job.json's 'running' is made true
    again by the next --status or --run: finished when results.json is there, else interrupted (which the same
    command resumes)."""
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT", "PART-cam"], [1], str(tmp_path),
                            ["--epochs", "2", "--warm-up", "1"])
    (done, done_argv), (cut, cut_argv) = cmds
    for folder in (done, cut):
        jobs.update_job(folder, new=True, executor="subprocess", job_id=str(dead_pid()), node=socket.gethostname(),
                             state="running", starts=["x"])
    with open(os.path.join(done, "results.json"), "w") as f:
        json.dump(record(parse("part", script_constants(PART), done_argv[2:])[0]), f)
    open(os.path.join(cut, "last.pt"), "w").close()
    assert run_state.run_status(done, done_argv) == ("finished", "")
    assert run_state.run_status(cut, cut_argv)[0] == "interrupted" and \
        "--run resumes it" in run_state.run_status(cut, cut_argv)[1]
    assert run_state.owner(done) is None and jobs.read_job(done)["state"] == "finished"
    rec = jobs.read_job(cut)
    assert rec["state"] == "interrupted" and rec["exit_code"] is None and "ended without a record" in rec["error"]


def test_a_local_submission_names_its_job_ids_and_log_folders(tmp_path, capsys, monkeypatch):
    """The message after a submission gives each job's log file and the real log folder, never submitit's %j."""
    from pathlib import Path

    class Job:
        def __init__(self, n):
            self.job_id = str(os.getpid()) if n == 0 else str(dead_pid())
            folder = Path(str(tmp_path / "submitit" / "%j").replace("%j", self.job_id))
            self.paths = type("Paths", (), {"folder": folder, "stderr": folder / f"{self.job_id}_0_log.err"})

    class Executor:
        def batch(self):
            import contextlib
            return contextlib.nullcontext()

        def submit(self, task, jobs=[]):
            jobs.append(Job(len(jobs)))
            return jobs[-1]

    monkeypatch.setattr(executors, "_make_executor", lambda name, opts, n: Executor())
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT", "PART-cam"], [1], str(tmp_path),
                            ["--epochs", "2", "--warm-up", "1"])
    opts = executors.Options(folder=str(tmp_path / "submitit" / "%j"))
    assert grid.run_all(cmds, executor="local", opts=opts) == 0
    out = capsys.readouterr().out
    assert "%j" not in out and f"(log: {tmp_path}/submitit/{os.getpid()}/{os.getpid()}_0_log.err)" in out, out
    assert f"logs in 2 folders {tmp_path}/submitit/<job id>;" in out
    rec = jobs.read_job(cmds[0][0])
    assert rec["pid"] == os.getpid() and rec["pid_start"] == jobs.process_start(os.getpid())


def test_grid_runs_skip_finished_and_resume_interrupted(tmp_path, monkeypatch, capsys):
    calls = started(monkeypatch)
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT", "PART-cam", "PART-official"], [1],
                            str(tmp_path), ["--epochs", "2", "--warm-up", "1"])
    (at_folder, at_argv), (cam_folder, _), (official_folder, official_argv) = cmds
    os.makedirs(at_folder)
    with open(os.path.join(at_folder, "results.json"), "w") as f:
        json.dump(record(parse("part", script_constants(PART), at_argv[2:])[0]), f)
    os.makedirs(cam_folder)
    open(os.path.join(cam_folder, "last.pt"), "w").close()
    assert grid.run_all(cmds, jobs=2) == 0
    assert len(calls) == 2 and calls[0][-1] == "--resume" and "--resume" not in calls[1]
    assert "PART-official" in " ".join(calls[1]) and "finished already" in capsys.readouterr().out


def test_a_folder_the_run_would_refuse_is_not_started_and_the_grid_says_what_to_do(tmp_path, monkeypatch, capsys):
    """A finished run of other settings, a damaged results.json (truncated, not a record, a config that is no
    config), an interrupted run of other settings, files of another run: the grid starts no run there (the run would
    refuse the folder with advice the grid cannot follow, such as --resume or --overwrite), says why and what to do,
    and exits 1; --status says the same."""
    calls = started(monkeypatch)
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT"], [1], str(tmp_path),
                            ["--epochs", "2", "--warm-up", "1"])
    (folder, argv), = cmds
    os.makedirs(folder)
    cfg = parse("part", script_constants(PART), argv[2:])[0]
    results = os.path.join(folder, "results.json")
    cases = [(json.dumps(record({**cfg, "lr": 0.1})), "holds a finished run of other settings (lr: 0.1 -> 0.01)")]
    cases += [(text, "its results.json is damaged") for text in (
        "[]", '"text"', '{"config": null}', '{"config": []}', '{"config": {"epochs": "x"}}', '{"config": {"variant": 3}}',
        '{"no config": 1}', "{truncated", json.dumps(record(cfg))[:-40])]
    for text, word in cases:
        with open(results, "w") as f:
            f.write(text)
        for with_last in (False, True):
            if with_last:
                open(os.path.join(folder, "last.pt"), "w").close()
            calls.clear()
            capsys.readouterr()
            assert grid.run_all(cmds) == 1 and calls == [], text
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and f"not started: {folder}: {word}" in err, (text, err)
            if "damaged" in word and with_last:  # what to do: the grid resumes from last.pt once it is gone
                assert f"delete it (rm {results}) and run the same command: it resumes the run from last.pt" in err
            else:
                assert "move that folder away (or delete it), or give another --root or --tag" in err, err
            assert "--overwrite" not in err and "add --resume" not in err
            state, detail = run_state.run_status(folder, argv)
            assert state == ("damaged" if "damaged" in word else "failed") and word in detail, (state, detail)
            if with_last:
                os.remove(os.path.join(folder, "last.pt"))
    os.remove(results)  # an interrupted run of other settings: its config.json tells
    open(os.path.join(folder, "last.pt"), "w").close()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**cfg, "epsilon": 10 / 255}, f)
    assert grid.run_all(cmds) == 1 and calls == []
    assert "holds an interrupted run of other settings (epsilon: 10/255 -> 8/255)" in capsys.readouterr().err
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**cfg, "epochs": 1, "eval_attacks": ["natural", "pgd20"]}, f)  # only what resume may change
    assert grid.run_all(cmds) == 0 and calls[-1][-1] == "--resume"
    calls.clear()
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))
    open(os.path.join(folder, "best.pt"), "w").close()  # files of another run, nothing to resume
    assert grid.run_all(cmds) == 1 and calls == []
    assert "holds files of another run (best.pt)" in capsys.readouterr().err


def test_a_damaged_job_record_is_read_as_none_and_the_run_is_started(tmp_path, monkeypatch):
    """job.json with a field of another type than the executors write (an unhashable executor, a state that is a
    list, requeues that are text) or a pid past any real one: read as no record (so neither owner() nor --status
    raises), and the grid starts the run; a live job's record that is whole still keeps the run from starting."""
    calls = started(monkeypatch)
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT"], [1], str(tmp_path),
                            ["--epochs", "2", "--warm-up", "1"])
    (folder, argv), = cmds
    os.makedirs(folder)
    mine = me(executor="subprocess", state="running")
    for damage in ({"executor": ["subprocess"]}, {"executor": {"a": 1}}, {"state": ["running"]}, {"requeues": "many"},
                   {"job_id": 7}, {"starts": "x"}, {"exit_code": "2"}, {"tasks": True}, {"job_id": "9" * 30},
                   {"job_id": "\u00b2"}, {"job_id": "9" * 5000}, {"pid": "12"}, {"pid": True}, {"pid_start": 7}):
        with open(os.path.join(folder, jobs.JOB_FILE), "w") as f:
            json.dump({**{k: v for k, v in mine.items() if k not in ("pid", "pid_start")}, **damage}, f)
        if "job_id" in damage and isinstance(damage["job_id"], str):  # a record of ours, but no pid: not alive
            assert jobs.read_job(folder)["job_id"] == damage["job_id"] and not jobs.pid_alive(10 ** 30)
        else:
            assert jobs.read_job(folder) == {}, damage
        assert run_state.owner(folder) is None and \
            run_state.run_status(folder, argv)[0] in ("not started", "failed", "interrupted")
        calls.clear()
        assert grid.run_all(cmds, jobs=1) == 0 and len(calls) == 1, damage
    with open(os.path.join(folder, jobs.JOB_FILE), "w") as f:
        json.dump(mine, f)
    assert "owns it" in run_state.owner(folder)


# ----------------------------------------------------------------------------------------------------
# --status
# ----------------------------------------------------------------------------------------------------
def test_status_names_the_state_of_every_run(tmp_path, capsys):
    args = [*GRID, "--seeds", "1", "2", "--root", str(tmp_path), "--tag", ""]
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], list(studies.STUDIES["mask-source"]), [1, 2],
                            str(tmp_path), tag="")
    folders = {os.path.basename(f): f for f, _ in cmds}
    for f in folders.values():
        os.makedirs(f)
    cfg, _ = parse("part", script_constants(PART), cmds[0][1][2:])
    with open(os.path.join(folders["AT-seed1"], "results.json"), "w") as f:
        json.dump(record(cfg), f)
    host = socket.gethostname()
    with open(os.path.join(folders["PART-cam-seed1"], "metrics.csv"), "w") as f:
        f.write("epoch,phase\n1,warm-up\n")
    with open(os.path.join(folders["PART-cam-seed1"], "config.json"), "w") as f:
        json.dump({"epochs": 80}, f)
    jobs.update_job(folders["PART-cam-seed1"], executor="subprocess", **me(state="running"))
    jobs.update_job(folders["PART-official-seed1"], executor="local", **me(state="queued"))
    jobs.update_job(folders["PART-permuted-seed1"], executor="local", **me(state="requeued", requeues=2))
    jobs.update_job(folders["AT-seed2"], executor="local", job_id="1", state="failed", exit_code=2,
                         error="error: no data at x.npz")
    jobs.update_job(folders["PART-cam-seed2"], executor="subprocess", job_id=str(dead_pid()), node=host,
                         state="running")
    with open(os.path.join(folders["PART-cam-seed2"], "log.txt"), "w") as f:
        f.write("2026-01-01 00:00:00 epoch   1  warm-up\n\n")
    open(os.path.join(folders["PART-official-seed2"], "last.pt"), "w").close()
    assert grid.main([*args, "--status"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    state = {os.path.basename(next(w for w in line.split() if w.startswith(str(tmp_path)))): line for line in out[:-1]}
    assert state["AT-seed1"].startswith("finished ")
    assert state["PART-cam-seed1"].startswith("running ") and "epoch 1/80 done" in state["PART-cam-seed1"]
    assert state["PART-official-seed1"].startswith("queued ") and f"local job {os.getpid()}" in \
        state["PART-official-seed1"]
    assert state["PART-permuted-seed1"].startswith("requeued (2x) ")
    assert state["AT-seed2"].startswith("failed ") and "exit 2: error: no data at x.npz" in state["AT-seed2"]
    # its process died without a record (the grid and its child killed): interrupted, as the next --run takes it
    assert state["PART-cam-seed2"].startswith("interrupted ") and "ended without a record" in state["PART-cam-seed2"] \
        and "--run starts it again" in state["PART-cam-seed2"] and state["PART-cam-seed2"].endswith("epoch   1  warm-up")
    assert jobs.read_job(folders["PART-cam-seed2"])["state"] == "interrupted"  # and job.json says so now
    assert state["PART-official-seed2"].startswith("interrupted ")
    assert "--run resumes it" in state["PART-official-seed2"]
    assert state["PART-permuted-seed2"].startswith("not started ")
    assert out[-1] == "8 runs: 1 finished, 1 running, 1 queued, 1 requeued, 1 failed, 2 interrupted, 1 not started"


def test_a_row_folder_that_is_a_file_or_a_link_to_nothing_reads_alike_in_status_and_run(tmp_path, capsys):
    """--status says what --run does: both name the file or the dangling link and start nothing there."""
    cmds = studies.commands("mask-source", ["synthetic"], ["resnet18"], ["AT"], [1, 2], str(tmp_path), tag="")
    (a, argv_a), (b, argv_b) = cmds
    os.makedirs(os.path.dirname(a))
    open(a, "w").close()
    os.symlink(str(tmp_path / "gone"), b)
    for folder, argv, word in ((a, argv_a, "is a file, not a folder"), (b, argv_b, "which does not exist")):
        state, detail = run_state.run_status(folder, argv)
        assert state == "failed" and word in detail and "--run does not start it" in detail
        kind, message = run_state.blocker(folder, argv)
        assert kind == "refused" and word in message
    assert not os.path.lexists(tmp_path / "gone") and os.path.isfile(a)
    code, err = call("part", [*TINY, "--out", b], capsys)
    assert code == 2 and "which does not exist" in err and not os.path.lexists(tmp_path / "gone")


# ----------------------------------------------------------------------------------------------------
# real processes
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tools_run_as_files_from_any_folder(tmp_path):
    """python tools/<tool>.py --help, from another folder and without PYTHONPATH (tools/grid.py: the next test);
    one process runs the three, each with a fresh path and no module of the repository loaded."""
    script = f"""
import os, runpy, sys
tools = os.path.join({ROOT!r}, "tools")
for tool in ("report", "benchmark", "make_cifar10c"):
    for name in [m for m in sys.modules if m.split(".")[0] in ("utils", "models", "attacks", "tools")]:
        del sys.modules[name]
    sys.path[:] = [tools] + [p for p in sys.path if os.path.abspath(p or ".") not in ({ROOT!r}, tools)]
    sys.argv = [os.path.join(tools, tool + ".py"), "--help"]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), (tool, e.code)
    print("ok", tool, file=sys.stderr)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stderr.count("ok ") == 3, p.stderr[-3000:]


@pytest.mark.slow
def test_grid_stops_its_children_on_ctrl_c_and_sigterm_and_the_same_command_then_completes(tmp_path):
    """python tools/grid.py, run as a file from another folder. Its child stops itself (SIGSTOP) in epoch 2, then in
    epoch 3 of the resumed run; Ctrl-C, then SIGTERM to the grid stop the child (its lock released) with exit 130 /
    143 and one line; the same command then finishes the run from its last.pt."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "grid.py"), *GRID, "--methods", "AT", "--root", "runs",
           "--tag", "", "--run", "--", *set_flag(EXTRA, "--epochs", "3")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    folder = str(tmp_path / "runs" / "synthetic-resnet18" / "AT-seed1")

    def stopped():
        pid = jobs.read_job(folder).get("job_id")
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "T"
        except OSError:
            return False

    for signum, code, epoch in ((signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 3)):
        p = subprocess.Popen(cmd, cwd=tmp_path, env=dict(env, PART_FAULT_SIGNAL_AT=f"{epoch},0,STOP"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(stopped)
        p.send_signal(signum)
        err = p.communicate(timeout=300)[1].strip()
        assert p.returncode == code and "\n" not in err and "Traceback" not in err, err
        assert "the same command resumes them" in err
        rec = jobs.read_job(folder)
        # recorded as interrupted (not failed): the same command resumes it
        assert rec["state"] == "interrupted" and rec["exit_code"] == code and not jobs.pid_alive(rec["pid"])
        assert lock_holder(folder) is None
        assert "--resume" in rec["error"]  # the child's own last line: how to continue
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert os.path.exists(os.path.join(folder, "results.json"))
    assert "resumed from" in open(os.path.join(folder, "log.txt")).read() and "(epoch 2 done)" in open(
        os.path.join(folder, "log.txt")).read()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_a_process_whose_main_thread_ended_is_alive_while_another_thread_runs():
    """A killed multi-threaded run shows its main thread as a zombie while its other threads still hold the run's
    lock: it is alive until the last of them has ended."""
    import ctypes
    import threading
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        threading.Thread(target=os.read, args=(r, 1)).start()
        ctypes.CDLL(None).pthread_exit(None)
    os.close(r)

    def leader_state():
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    wait_for(lambda: leader_state() == "Z")
    assert jobs.pid_alive(pid)
    os.close(w)  # the other thread's read returns: the process ends
    wait_for(lambda: not jobs.pid_alive(pid), timeout=60)
    os.waitpid(pid, 0)
    assert not jobs.pid_alive(pid)


@pytest.mark.slow
def test_after_kill_9_of_the_grid_status_and_job_json_tell_what_is_true(tmp_path, capsys):
    """kill -9 of the grid records nothing. Its child killed too: --status says interrupted and resumable (not
    failed), and the same command resumes it. Its child left running: --status says running while it lives, and
    once it has finished on its own, finished, and job.json says so (not 'running' forever)."""
    root = tmp_path / "runs"
    argv = [*GRID, "--methods", "AT", "--root", str(root), "--tag", ""]
    cmd = [sys.executable, os.path.join(ROOT, "tools", "grid.py"), *argv, "--run", "--", *set_flag(EXTRA, "--epochs", "3")]
    status = [*argv, "--status", "--", *set_flag(EXTRA, "--epochs", "3")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    folder = str(root / "synthetic-resnet18" / "AT-seed1")

    def stopped_child():
        pid = jobs.read_job(folder).get("pid")
        try:
            with open(f"/proc/{pid}/stat") as f:
                return pid if f.read().rsplit(")", 1)[1].split()[0] == "T" else None
        except OSError:
            return None

    def state():
        capsys.readouterr()
        assert grid.main(status) == 0
        return capsys.readouterr().out.splitlines()[0]

    for epoch, kill_child in ((2, True), (3, False)):
        p = subprocess.Popen(cmd, env=dict(env, PART_FAULT_SIGNAL_AT=f"{epoch},0,STOP"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        wait_for(stopped_child)
        child = stopped_child()
        p.kill()
        p.wait()
        assert jobs.read_job(folder)["state"] == "running" and jobs.pid_alive(child)
        assert state().startswith("running ")  # its child still holds the run
        os.kill(child, signal.SIGKILL if kill_child else signal.SIGCONT)
        wait_for(lambda: not jobs.pid_alive(child))
        line = state()
        if kill_child:
            assert line.startswith("interrupted ") and "epoch 1/3 done; --run resumes it" in line, line
            assert "ended without a record" in line and jobs.read_job(folder)["state"] == "interrupted"
        else:
            assert line.startswith("finished "), line
            assert jobs.read_job(folder)["state"] == "finished"
    log = open(os.path.join(folder, "log.txt")).read()
    assert "resumed from" in log and "(epoch 1 done)" in log


def local_grid(root, *argv, extra=()):
    return [*GRID, "--methods", "AT", "--root", str(root), "--tag", "", "--executor", "local", *argv, "--run", "--",
            *EXTRA, *extra]


@pytest.mark.slow
def test_local_executor_requeues_a_preempted_run_which_resumes_exactly(tmp_path, monkeypatch, capsys):
    """The local executor's preemption signal (USR2) in the middle of epoch 2: the run is requeued, resumes from
    last.pt (epoch 1) and ends with the weights of an uninterrupted run, bit for bit; a second submission while the
    job lives does not start the run twice."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    whole = subprocess.Popen([sys.executable, PART, "--data", "synthetic", "--no-mask", "--seed", "1", *EXTRA,
                              "--out", str(tmp_path / "whole")], env=dict(os.environ, PYTHONPATH=ROOT),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    monkeypatch.setenv("PART_FAULT_SIGNAL_AT", "2,1,USR2")
    assert grid.main(local_grid(tmp_path / "grid")) == 0  # returns at once
    folder = str(tmp_path / "grid" / "synthetic-resnet18" / "AT-seed1")
    job = jobs.read_job(folder)["job_id"]
    assert grid.main(local_grid(tmp_path / "grid")) == 0
    assert f"not started: {folder}: local job {job} owns it" in capsys.readouterr().out
    wait_for(lambda: jobs.read_job(folder).get("state") in ("finished", "failed"))
    rec = jobs.read_job(folder)
    assert (rec["state"], rec["job_id"], rec["requeues"], len(rec["starts"])) == ("finished", job, 1, 2), rec
    assert "resumed from" in open(os.path.join(folder, "log.txt")).read()
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    assert same_weights(weights(tmp_path / "whole" / "last.pt"), weights(os.path.join(folder, "last.pt")))
    status = local_grid(tmp_path / "grid")
    status[status.index("--run")] = "--status"
    assert grid.main(status) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 runs: 1 finished"


@pytest.mark.slow
def test_a_failed_run_is_not_requeued_and_status_says_why(tmp_path, capsys):
    pytest.importorskip("submitit")
    argv = local_grid(tmp_path, "--wait", extra=["--cam-layer", "nope"])
    assert grid.main(argv) == 1
    folder = str(tmp_path / "synthetic-resnet18" / "AT-seed1")
    rec = jobs.read_job(folder)
    assert (rec["state"], rec["exit_code"], rec["requeues"], len(rec["starts"])) == ("failed", 2, 0, 1), rec
    assert "'nope'" in rec["error"] and rec["error"].startswith("error:")
    argv[argv.index("--run")] = "--status"
    argv.remove("--wait")
    capsys.readouterr()
    assert grid.main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("failed ") and "exit 2: error:" in line and "'nope'" in line
