"""tools/wheelhouse.sh: what it writes appears whole or not at all, it overwrites no file it did not write, and bad
input (a PYTHON without pip, a DIR holding other files) exits 2 with one line. No network: PYTHON is a stand-in
script that answers `-m pip --version` and mimics `-m pip download` by writing files (or fails when told)."""
import os
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "tools", "wheelhouse.sh")
STUB = """#!/bin/sh
[ "$3" = "--version" ] && { echo "pip 24.0"; exit 0; }
while [ "$1" != "--dest" ]; do shift; done
echo "$WHEEL" > "$2/$WHEEL"
[ -z "$SLEEP" ] || sleep "$SLEEP"
[ -z "$FAIL" ] || { echo "ERROR: no matching distribution" >&2; exit 1; }
"""


def wheelhouse(tmp_path, folder, **env):
    stub = tmp_path / "python"
    if not stub.exists():
        stub.write_text(STUB)
        stub.chmod(0o755)
    env = {"PYTHON": str(stub), "WHEEL": "torch-9.9-py3-none-any.whl", **env}
    return subprocess.run([SCRIPT, str(folder)], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def files(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def leftovers(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.name.startswith(".wh.")]


def one_line(proc, code=2):
    err = proc.stderr.strip()
    assert proc.returncode == code and err.startswith("error: ") and "\n" not in err, (proc.returncode, err)
    return err


def test_a_wheelhouse_is_replaced_whole_and_a_failed_run_leaves_it_as_it_was(tmp_path):
    wh = tmp_path / "wh"
    assert wheelhouse(tmp_path, wh).returncode == 0
    first = files(wh)
    assert set(first) == {"requirements.txt", "SHA256SUMS", "torch-9.9-py3-none-any.whl"}
    # a download that fails half way (a file written, then an error): nothing of it appears, the old one stays
    proc = wheelhouse(tmp_path, wh, WHEEL="torch-10.0-py3-none-any.whl", FAIL="1")
    assert proc.returncode == 1 and "left as it was" in proc.stderr
    assert files(wh) == first and leftovers(tmp_path) == []
    # run again over its own wheelhouse: the new one replaces it whole
    assert wheelhouse(tmp_path, wh, WHEEL="torch-10.0-py3-none-any.whl").returncode == 0
    assert set(files(wh)) == {"requirements.txt", "SHA256SUMS", "torch-10.0-py3-none-any.whl"}
    assert "torch-10.0" in files(wh)["SHA256SUMS"] and leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert wheelhouse(tmp_path, empty).returncode == 0 and "SHA256SUMS" in files(empty)


def test_ctrl_c_during_the_download_leaves_the_old_wheelhouse_and_no_temporary_folder(tmp_path):
    import signal
    import time
    wh = tmp_path / "wh"
    assert wheelhouse(tmp_path, wh).returncode == 0
    before = files(wh)
    stub = tmp_path / "python"
    env = {**os.environ, "PYTHON": str(stub), "WHEEL": "torch-10.0-py3-none-any.whl", "SLEEP": "60"}
    proc = subprocess.Popen([SCRIPT, str(wh)], env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any((p / "torch-10.0-py3-none-any.whl").exists() for p in tmp_path.glob(".wh.partial-*")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    assert proc.wait(timeout=60) == 130
    assert files(wh) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("python,word", [("/bin/false", "PYTHON=/bin/false cannot run pip (no output)"),
                                         ("/nonexistent/python3", "PYTHON=/nonexistent/python3 cannot run pip")])
def test_a_python_without_pip_is_one_line_and_touches_nothing(tmp_path, python, word):
    wh = tmp_path / "wh"
    assert wheelhouse(tmp_path, wh).returncode == 0
    before = files(wh)
    err = one_line(wheelhouse(tmp_path, wh, PYTHON=python))
    assert word in err and files(wh) == before and leftovers(tmp_path) == []
    one_line(wheelhouse(tmp_path, tmp_path / "new", PYTHON=python))
    assert not (tmp_path / "new").exists()


def test_a_folder_holding_files_it_did_not_write_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "requirements.txt").write_text("my own pins\n")
    err = one_line(wheelhouse(tmp_path, mine))
    assert "holds files this tool did not write" in err and (mine / "requirements.txt").read_text() == "my own pins\n"
    wh = tmp_path / "wh"
    assert wheelhouse(tmp_path, wh).returncode == 0
    (wh / "notes.txt").write_text("keep me")
    err = one_line(wheelhouse(tmp_path, wh))
    assert "holds notes.txt, which this tool did not write" in err and (wh / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    assert "is not a folder" in one_line(wheelhouse(tmp_path, tmp_path / "afile"))
    assert leftovers(tmp_path) == [] and (tmp_path / "afile").read_text() == "x"
