"""scripts/gpu_session.sh is ready for a short GPU lease: its dry run walks every stage of both parts on this
machine (each pytest selection must collect tests, each benchmark script must start), part 1 fits in 6 minutes
and the outputs fit what the device tool brings back (at most 8 plain files directly under $OUT)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"
STAGE_LINE = re.compile(r"^(\S+)\s+plan\s+(\d+)s\s+limit\s+(\d+)s\s+(\S+)\s+(.*)$")


def dry_run(part: int, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"))
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--part", str(part)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("part", [1, 2])
def test_dry_run_walks_every_stage(part, tmp_path):
    done = dry_run(part, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = [m.groups() for m in map(STAGE_LINE.match, done.stdout.splitlines()) if m]
    names = [s[0] for s in stages]
    assert names[:2] == ["build", "info"], "every part builds first"
    for name, plan, limit, log, check in stages:
        assert int(plan) <= int(limit), name
        assert "FAILED" not in check, f"{name}: {check}"
    if part == 1:
        assert names.index("cuda-tests") < min(names.index(n) for n in names if n.startswith("sanitizer"))
        assert names[-1].startswith("triton"), "Triton comes last in part 1"
        budget = int(re.search(r"budget (\d+)s", done.stdout).group(1))
        assert budget + 15 + 10 <= 360, "part 1 (its budget, a stage's kill grace, the summary) ends within 6 min"
    logs = {s[3] for s in stages}
    tables = set(re.findall(r"\$OUT/([\w.-]+)", SCRIPT.read_text()))
    assert len(logs | tables | {"summary.txt"}) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in logs | tables)


def test_bad_arguments_are_refused(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path))
    for args in (["--part", "3"], ["--bogus"]):
        done = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and "gpu_session.sh:" in done.stderr
