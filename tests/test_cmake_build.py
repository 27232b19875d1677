"""The CMake build for C++ users (CMakeLists.txt) compiles and its library's ops compute a CBM step."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ops(tmp_path):
    env = dict(os.environ, PY=sys.executable, BUILD_DIR=str(tmp_path / "build"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check_cmake.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cmake build ok" in proc.stdout
