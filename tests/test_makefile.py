"""The Makefile finds a Python 3.11 (PY=..., else python3.11, else python3 when it is 3.11) or stops with one
line saying which version to install and how to point make at it. `make -n` only: nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")
assert sys.version_info[:2] == (3, 11), "the tests run on the Python 3.11 that leukodx needs"


def fake_python(path: Path, version: str = "3.12.7") -> Path:
    """A `python` that answers like another version: `-V` prints it, and the 3.11 check fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\ncase "$1" in -V|--version) echo "Python {version}";; *) exit 1;; esac\n')
    path.chmod(0o755)
    return path


def real_311(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(sys.executable)
    return path


def make(tmp_path: Path, *args: str, path_dirs: list[Path] | None = None) -> subprocess.CompletedProcess:
    """`make -n ARGS` in the repository with the venv under tmp_path; PATH only `path_dirs` when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # not a sub-make
    if path_dirs is not None:
        env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    return subprocess.run([str(MAKE), "-n", f"VENV={tmp_path / 'venv'}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_py_that_is_not_3_11_stops_in_one_line(tmp_path):
    py = fake_python(tmp_path / "bin" / "python3.12")
    line = one_line(make(tmp_path, "run", f"PY={py}"))
    assert f"PY={py} is Python 3.12.7; leukodx needs Python 3.11" in line
    assert "make run PY=/path/to/python3.11" in line and "apt install python3.11-venv" in line
    assert not (tmp_path / "venv").exists()


def test_no_python_3_11_on_the_path_stops_in_one_line(tmp_path):
    bin_ = tmp_path / "bin"
    fake_python(bin_ / "python3", "3.12.7")
    line = one_line(make(tmp_path, "test", path_dirs=[bin_]))
    assert "leukodx needs Python 3.11 and found none (python3 is Python 3.12.7)" in line
    assert "make test PY=/path/to/python3.11" in line


def test_python3_11_then_python3_then_py(tmp_path):
    bin_ = tmp_path / "bin"
    real_311(bin_ / "python3.11")
    fake_python(bin_ / "python3", "3.12.7")
    r = make(tmp_path, "install", path_dirs=[bin_])
    assert r.returncode == 0, r.stderr
    assert f"python3.11 -m venv {tmp_path / 'venv'}" in r.stdout

    only3 = tmp_path / "only3"
    real_311(only3 / "python3")
    r = make(tmp_path, "run", path_dirs=[only3])
    assert r.returncode == 0, r.stderr
    assert f"python3 -m venv {tmp_path / 'venv'}" in r.stdout

    r = make(tmp_path, "install", f"PY={sys.executable}", path_dirs=[bin_])
    assert r.returncode == 0, r.stderr
    assert f"{sys.executable} -m venv {tmp_path / 'venv'}" in r.stdout


def test_a_venv_made_with_another_python_is_named(tmp_path):
    fake_python(tmp_path / "venv" / "bin" / "python", "3.12.7")
    line = one_line(make(tmp_path, "run"))
    assert f"{tmp_path / 'venv'} was made with Python 3.12.7" in line and f"rm -rf {tmp_path / 'venv'}" in line
    # a venv with Python 3.11 is used as it is, whatever PY says
    (tmp_path / "venv" / "bin" / "python").unlink()
    real_311(tmp_path / "venv" / "bin" / "python")
    r = make(tmp_path, "install", f"PY={fake_python(tmp_path / 'x' / 'python3.12')}")
    assert r.returncode == 0, r.stderr
    assert "-m venv" not in r.stdout and "pip install --quiet -e ." in r.stdout
