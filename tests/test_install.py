"""The install says what it does and stays quiet otherwise; what it leaves behind is where git expects it (issue 26).

scripts/install.sh runs here against a fake ``.venv`` whose ``pip`` and ``python`` only record their calls, so the
order of its steps and what it prints before the long compile are checked without installing anything.
"""
import os
import re
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


def _fake_venv_install(tmp_path: Path, env_extra: dict) -> tuple:
    """Run a copy of scripts/install.sh with a recording .venv; returns (stdout, [pip argument lines])."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "pip_calls.txt"
    # pip echoes a marker where it would build, so the order of the script's messages and the build shows on stdout
    for name, body in {
        "pip": f'echo "$*" >> "{calls}"\ncase "$*" in *" -e "*) echo "<pip builds here>" ;; esac\n',
        "python": 'exit 0\n',
    }.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k not in ("DEEPRNN_FORCE_CPU", "MAX_JOBS")}
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "install.sh")], env={**env, **env_extra},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, calls.read_text().splitlines()


def test_install_script_installs_numpy_before_building_and_says_what_the_build_costs(tmp_path):
    stdout, calls = _fake_venv_install(tmp_path, {"MAX_JOBS": "3"})
    build = next(i for i, c in enumerate(calls) if " -e " in f" {c} ")
    numpy = next(i for i, c in enumerate(calls) if re.search(r"(^| )numpy( |$)", c))
    assert numpy < build, calls
    assert "--no-build-isolation" in calls[build] and "-q" in calls[build].split()
    before_build = stdout.split("<pip builds here>")[0]
    assert "compiling" in before_build and "3 parallel jobs" in before_build
    assert re.search(r"\d+(\.\d+)? on 2 cores", before_build), before_build
    assert "DEEPRNN_FORCE_CPU=1 bash scripts/install.sh" in before_build


def test_install_script_does_not_suggest_skipping_cuda_when_already_skipped(tmp_path):
    stdout, _ = _fake_venv_install(tmp_path, {"DEEPRNN_FORCE_CPU": "1"})
    assert "compiling" in stdout and "DEEPRNN_FORCE_CPU" not in stdout


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_license_is_an_spdx_string_that_the_setuptools_in_use_reads_without_warnings():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    # the first setuptools that takes a license string, in every place that installs setuptools for a build
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
    for script in ("install.sh", "check_oldest_torch.sh"):
        assert '"setuptools>=77"' in (ROOT / "scripts" / script).read_text(), script
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_the_demos_default_output_folder_is_git_ignored():
    from deeprnn_cuda.cli import build_parser

    out = build_parser().parse_args(["demo"]).out
    assert not out.is_absolute(), out
    # the README runs the demo from the repository root
    done = subprocess.run(["git", "check-ignore", "-q", f"{out.as_posix()}/summary.json"], cwd=ROOT)
    assert done.returncode == 0, f"{out}/ is not ignored by .gitignore"
