"""Every code block of README.md and docs/ runs as written (issue 26).

The rules a page follows, which this test enforces:

- Every code block is fenced and names its language: ``python``, ``bash`` or ``text`` (output, formulas). An
  indented code block or a fence without one of these fails.
- Every ``python`` block is a whole program: it runs alone in a fresh interpreter, in an empty folder, within
  :data:`PYTHON_SECONDS` and :data:`MEMORY_BYTES` of peak resident memory (its data segment is capped there too,
  so a runaway example fails instead of taking the machine).
- Every command of a ``bash`` block (a line, with its ``\\`` continuations) is run, in an empty folder with the
  running interpreter's ``bin`` first on ``PATH`` (``.venv/bin/`` stands for that folder), and must exit 0
  within :data:`COMMAND_SECONDS`, unless a comment on its line marks it ``# long-running``. A marked command
  that calls the ``deeprnn`` command line is still checked against its argument parser, so its options cannot
  go stale.
"""
from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = ("python", "bash", "text")
LONG_RUNNING = re.compile(r"#\s*long-running\b")
#: what an example may take on the project's 2-core machine
PYTHON_SECONDS = 240
COMMAND_SECONDS = 120
MEMORY_BYTES = 2 * 2**30


class Block(NamedTuple):
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> List[Block]:
    """The fenced blocks of ``page``; raises ``ValueError`` at an indented code block or an unknown language."""
    blocks: List[Block] = []
    lines = page.read_text().splitlines()
    fence, start, body = None, 0, []
    for number, line in enumerate(lines, 1):
        if fence is None:
            match = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)", line)
            if match:
                if match.group(3) not in LANGUAGES:
                    raise ValueError(f"{page.name}:{number}: a code block must say one of {LANGUAGES}, "
                                     f"got {match.group(3)!r}")
                fence, start, body, language = match.group(2), number, [], match.group(3)
                indent = len(match.group(1))
            elif re.match(r"^( {4}|\t)\S", line) and number > 1 and not lines[number - 2].strip():
                raise ValueError(f"{page.name}:{number}: an indented code block; fence it with a language")
        elif line.strip().startswith(fence):
            blocks.append(Block(page, start, language, textwrap.dedent("\n".join(l[indent:] for l in body))))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"{page.name}:{start}: the code block is never closed")
    return blocks


def commands(block: Block) -> List[str]:
    """The commands of a bash block: lines joined at trailing backslashes, comment-only lines dropped."""
    found, pending = [], ""
    for line in block.code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        command = (pending + line.strip()).strip()
        pending = ""
        if command and not command.startswith("#"):
            found.append(command)
    return found


ALL_BLOCKS = [b for page in PAGES for b in read_blocks(page)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language == "python"]
COMMANDS = [(b, c) for b in ALL_BLOCKS if b.language == "bash" for c in commands(b)]
RUN_COMMANDS = [(b, c) for b, c in COMMANDS if not LONG_RUNNING.search(c)]
MARKED_COMMANDS = [(b, c) for b, c in COMMANDS if LONG_RUNNING.search(c)]

# The child measures itself: its peak RSS, printed last, after the block ran as __main__.
_RUNNER = """
import resource, runpy, sys
runpy.run_path(sys.argv[1], run_name="__main__")
print("peak-rss-kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BYTES, MEMORY_BYTES))


def _bin_dir() -> str:
    return str(Path(sys.executable).parent)


def test_pages_have_blocks_of_every_kind():
    """The page list is the README and docs/, and the parser found code in them (not a silently empty test)."""
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/design.md"} <= names
    assert PYTHON_BLOCKS and RUN_COMMANDS and MARKED_COMMANDS


def test_indented_code_and_unlabelled_fences_are_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Text\n\n    deeprnn demo\n")
    with pytest.raises(ValueError, match="indented"):
        read_blocks(page)
    page.write_text("```\ndeeprnn demo\n```\n")
    with pytest.raises(ValueError, match="must say one of"):
        read_blocks(page)
    page.write_text("- item\n\n  ```bash\n  deeprnn a \\\n    --b   # long-running\n  # note\n  deeprnn c\n  ```\n")
    (block,) = read_blocks(page)
    assert commands(block) == ["deeprnn a --b   # long-running", "deeprnn c"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=str)
def test_python_block_runs_alone_within_time_and_memory(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block.code)
    # One intra-op thread, as tests/conftest.py: on a loaded machine, threads fighting other processes make the
    # example's small ops many times slower, which would measure the machine, not the example.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        done = subprocess.run([sys.executable, "-c", _RUNNER, str(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=PYTHON_SECONDS, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block}: took longer than {PYTHON_SECONDS} s")
    assert done.returncode == 0, f"{block} failed:\n{done.stderr[-3000:]}"
    peak = int(done.stdout.split("peak-rss-kib")[-1]) * 1024
    assert peak <= MEMORY_BYTES, f"{block}: peak RSS {peak / 2**30:.2f} GiB"


@pytest.mark.parametrize("block,command", RUN_COMMANDS, ids=[f"{b}:{c[:40]}" for b, c in RUN_COMMANDS])
def test_command_runs(block, command, tmp_path):
    env = dict(os.environ, PATH=_bin_dir() + os.pathsep + os.environ.get("PATH", ""))
    runnable = re.sub(r"(^|[\s;&|(])\.venv/bin/", lambda m: m.group(1) + _bin_dir() + "/", command)
    try:
        done = subprocess.run(["bash", "-c", runnable], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=COMMAND_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block}: `{command}` took longer than {COMMAND_SECONDS} s; mark it # long-running")
    assert done.returncode == 0, f"{block}: `{command}` exited {done.returncode}:\n{done.stderr[-3000:]}"


def _deeprnn_arguments(command: str) -> List[List[str]]:
    """The argument lists a command passes to the ``deeprnn`` command line (``deeprnn ...``,
    ``python -m deeprnn_cuda ...``, ``torchrun ... -m deeprnn_cuda ...``), one per ``&&``-joined part."""
    found = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part, comments=True)
        for i, word in enumerate(words):
            if Path(word).name == "deeprnn":
                found.append(words[i + 1:])
                break
            if word == "-m" and i + 1 < len(words) and words[i + 1] == "deeprnn_cuda":
                found.append(words[i + 2:])
                break
    return found


@pytest.mark.parametrize("block,command", MARKED_COMMANDS, ids=[f"{b}:{c[:40]}" for b, c in MARKED_COMMANDS])
def test_long_running_command_parses(block, command, capsys):
    from deeprnn_cuda.cli import build_parser

    for argv in _deeprnn_arguments(command):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{block}: `{command}` does not parse (exit {e.code}):\n{capsys.readouterr().err}")


# Spelled in two parts so that this file does not match itself.
_OUTSIDE = ("DESIGN" + ".md", "DESIGN" + " section", "../" + "shared")


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_nothing_in_the_project_points_to_the_design_notes_outside_it():
    """The design document is docs/design.md; the handout it came from is not part of a clone."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    offenders = []
    for name in listed:
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        offenders += [f"{name}: {word}" for word in _OUTSIDE if word in text]
    assert not offenders, offenders


def anchors(page: Path) -> set:
    """GitHub's anchors of the headings of ``page`` (outside code blocks)."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def test_page_links_stay_inside_the_repository_and_exist():
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (page.parent / target).resolve() if target else page
            assert ROOT in resolved.parents or resolved == ROOT, f"{page.name}: {target} leaves the repository"
            assert resolved.exists(), f"{page.name}: {target} does not exist"
            if anchor and resolved.suffix == ".md":
                assert anchor in anchors(resolved), f"{page.name}: {target}#{anchor} names no heading"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = [c for b, c in COMMANDS if b.page.name == "README.md"]
    assert any(c.split("#")[0].strip() == ci for c in readme), ci
