"""The GPU benchmark scripts still run: ``--quick`` (a tiny shape, on the CPU here) must print its table."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module,marker", [("benchmarks.native_paths", "| loop ms |"),
                                           ("benchmarks.gpu", "geomean fwd+bwd vs eager:")])
def test_quick_run_prints_the_table(module, marker, tmp_path):
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, "-m", module, "--quick", "--repeats", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker in done.stdout and marker in out.read_text()
