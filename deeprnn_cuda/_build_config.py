"""Build-time decisions of setup.py: which CUDA toolkit (if any) compiles the kernels, which CPU SIMD flags, and
how the CPU kernels reach torch's thread pool.

setup.py loads this file by path, before the package (or anything but the standard library) is importable,
so it imports nothing else. Both decisions are functions of the environment variables, the file system and
what ``nvcc`` prints, so tests run them on fake toolkit layouts.

The toolkit rule: a candidate root is usable when ``bin/nvcc`` runs, ``include/cuda_runtime.h`` exists (the
header torch's build includes from ``<root>/include``) and nvcc's major version equals torch's CUDA major
version (torch's build refuses a mismatch). Candidates, first usable wins: ``CUDA_HOME``, ``CUDA_PATH``,
the root above ``nvcc`` on ``PATH`` (torch's own guess), the root above nvcc's resolved path (a symlink),
the root nvcc itself reports running from (a wrapper script), ``/usr/local/cuda``, ``/usr/local/cuda-*``.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

FORCE_CPU = "DEEPRNN_FORCE_CPU"
REQUIRE_CUDA = "DEEPRNN_REQUIRE_CUDA"
CPU_SIMD = "DEEPRNN_CPU_SIMD"

SEARCH_ROOTS = ("/usr/local/cuda", "/usr/local/cuda-*")
"""The usual install places, tried after the environment and ``nvcc`` on ``PATH``."""

AVX2_FLAGS = ("-mavx2", "-mfma")
AVX512_FLAGS = AVX2_FLAGS + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq")
"""ATen's 512-bit ``Vectorized`` needs these four AVX-512 subsets (csrc/cpu/epilogue.h picks it by them)."""

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_NVCC_TIMEOUT_S = 30


class BuildConfigError(ValueError):
    """A build that must not go on: a malformed variable, or CUDA required and not usable."""


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off/unset; anything else is an error."""
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BuildConfigError(f"{name}={env[name]!r}: expected 1 or 0")


@dataclass(frozen=True)
class CudaDecision:
    """Whether to compile the CUDA kernels, with which toolkit, and a one-line reason either way."""

    home: Optional[str]
    """The toolkit root to build with; None builds the CPU-only extension."""
    reason: str
    nvcc_version: Optional[str] = None
    skipped: Tuple[Tuple[str, str], ...] = field(default=())
    """(root, why not) for each candidate tried before the decision."""

    @property
    def use_cuda(self) -> bool:
        return self.home is not None

    def line(self) -> str:
        """The one line setup.py prints and ``deeprnn info`` shows."""
        if self.use_cuda:
            return f"CUDA kernels compiled with the CUDA {self.nvcc_version} toolkit at {self.home} ({self.reason})"
        return f"CUDA kernels not compiled: {self.reason}"


def nvcc_release(nvcc: str) -> Optional[str]:
    """The ``major.minor`` release that ``nvcc --version`` prints, or None when it does not run or say."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=_NVCC_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def nvcc_run_dir(nvcc: str) -> Optional[str]:
    """The directory nvcc really runs from (``_HERE_`` of a dry run), which a wrapper script hides."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=_NVCC_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return found.group(1).strip() if found else None


def check_toolkit(root: str, torch_cuda: str) -> Tuple[Optional[str], str]:
    """``(nvcc version, "")`` when ``root`` is a usable toolkit for torch's CUDA ``torch_cuda``, else
    ``(None, why not)``."""
    nvcc = os.path.join(root, "bin", "nvcc")
    if not os.path.isdir(root):
        return None, "not a directory"
    if not (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)):
        return None, "no bin/nvcc"
    if not os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
        return None, "no include/cuda_runtime.h"
    version = nvcc_release(nvcc)
    if version is None:
        return None, "bin/nvcc --version printed no release"
    if version.split(".")[0] != torch_cuda.split(".")[0]:
        return None, f"nvcc {version} does not match torch's CUDA {torch_cuda} (the major versions must agree)"
    return version, ""


def _version_key(root: str) -> Tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", os.path.basename(root)))


def _search_roots(patterns: Sequence[str], torch_cuda: str) -> List[str]:
    """The install places, a glob's matches ordered torch's exact version first, then newest first."""
    roots = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern), key=_version_key, reverse=True)
        exact = [m for m in matches if os.path.basename(m).endswith(f"-{torch_cuda}")]
        roots += exact + [m for m in matches if m not in exact]
    return roots


def candidates(env: Mapping[str, str], torch_cuda: str,
               search_roots: Sequence[str] = SEARCH_ROOTS) -> Iterator[Tuple[str, str]]:
    """``(root, how it was found)`` in the order they are tried (a root may come twice; it is tried once)."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(name):
            yield env[name], name
    nvcc = shutil.which("nvcc", path=env.get("PATH", ""))
    if nvcc:
        yield os.path.dirname(os.path.dirname(nvcc)), f"nvcc on PATH ({nvcc})"
        resolved = os.path.realpath(nvcc)
        yield os.path.dirname(os.path.dirname(resolved)), f"nvcc on PATH resolved to {resolved}"
        run_dir = nvcc_run_dir(nvcc)
        if run_dir:
            yield os.path.dirname(os.path.normpath(run_dir)), f"nvcc on PATH runs from {run_dir}"
    for root in _search_roots(search_roots, torch_cuda):
        yield root, "the usual install places"


def decide_cuda(env: Mapping[str, str], torch_cuda: Optional[str], torch_hip: Optional[str] = None,
                search_roots: Sequence[str] = SEARCH_ROOTS) -> CudaDecision:
    """Which toolkit compiles the CUDA kernels, for torch's CUDA version ``torch_cuda`` (None: a CPU-only torch).

    ``DEEPRNN_FORCE_CPU=1`` never compiles them; ``DEEPRNN_REQUIRE_CUDA=1`` raises :class:`BuildConfigError`
    instead of falling back to the CPU-only extension.
    """
    force_cpu, require = env_flag(env, FORCE_CPU), env_flag(env, REQUIRE_CUDA)
    if force_cpu and require:
        raise BuildConfigError(f"{FORCE_CPU}=1 and {REQUIRE_CUDA}=1 contradict each other; unset one")
    decision = _decide(env, torch_cuda, torch_hip, force_cpu, search_roots)
    if require and not decision.use_cuda:
        raise BuildConfigError(f"{REQUIRE_CUDA}=1, but the CUDA kernels cannot be compiled: {decision.reason}")
    return decision


def _decide(env: Mapping[str, str], torch_cuda: Optional[str], torch_hip: Optional[str], force_cpu: bool,
            search_roots: Sequence[str]) -> CudaDecision:
    if force_cpu:
        return CudaDecision(None, f"{FORCE_CPU}=1 (CPU-only build requested)")
    if torch_hip is not None:
        return CudaDecision(None, f"torch is a ROCm build (HIP {torch_hip}); the GPU kernels are CUDA-only")
    if torch_cuda is None:
        return CudaDecision(None, "torch is a CPU-only build; install a CUDA build of torch and rebuild")
    skipped: List[Tuple[str, str]] = []
    seen = set()
    for root, how in candidates(env, torch_cuda, search_roots):
        key = os.path.realpath(root)
        if key in seen:
            continue
        seen.add(key)
        version, why_not = check_toolkit(root, torch_cuda)
        if version is not None:
            return CudaDecision(os.path.normpath(root), _found_via(how, skipped), version, tuple(skipped))
        skipped.append((root, why_not))
    tried = ("; ".join(f"{root}: {why}" for root, why in skipped)
             or f"CUDA_HOME unset, no nvcc on PATH, nothing at {', '.join(search_roots)}")
    return CudaDecision(None, f"no usable CUDA {torch_cuda} toolkit ({tried}); to compile them, rebuild with "
                              f"CUDA_HOME=/path/to/cuda-{torch_cuda.split('.')[0]}.x (which has bin/nvcc and "
                              f"include/cuda_runtime.h)", None, tuple(skipped))


def _found_via(how: str, skipped: Sequence[Tuple[str, str]]) -> str:
    if not skipped:
        return f"found via {how}"
    return f"found via {how}; skipped " + "; ".join(f"{root}: {why}" for root, why in skipped)


@dataclass(frozen=True)
class SimdDecision:
    """The CPU kernels' extra compiler flags and why."""

    flags: Tuple[str, ...]
    reason: str

    def line(self) -> str:
        if "-mavx512f" in self.flags:
            kind = "AVX-512+AVX2+FMA"
        else:
            kind = "AVX2+FMA" if self.flags else "portable (no AVX2 flags)"
        return f"CPU kernels {kind}: {self.reason}"


def cpu_simd_level(cpuinfo: str = "/proc/cpuinfo") -> str:
    """What this CPU advertises (Linux ``/proc/cpuinfo``): ``"avx512"`` (AVX2, FMA and AVX-512 F, BW, VL, DQ),
    ``"avx2"`` (AVX2 and FMA) or ``""`` (neither, or it cannot tell)."""
    try:
        with open(cpuinfo) as f:
            flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return ""
    if not {"avx2", "fma"} <= flags:
        return ""
    return "avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else "avx2"


def decide_cpu_simd(env: Mapping[str, str], for_this_host: bool, machine: str, host_level: str) -> SimdDecision:
    """SIMD flags for the CPU kernels only where the binary cannot reach another CPU.

    ``for_this_host`` is an in-place or editable build, whose library stays in the source tree of the machine
    that built it: it gets the best the host has (``host_level``, :func:`cpu_simd_level`: AVX-512 or AVX2+FMA).
    A wheel (``pip wheel``, ``python -m build``, and ``pip install .``, which builds a wheel that pip may cache
    and reuse) gets portable code unless ``DEEPRNN_CPU_SIMD=1`` says its CPUs have AVX2 (then AVX2+FMA);
    ``DEEPRNN_CPU_SIMD=0`` turns the flags off everywhere.
    """
    x86 = machine.lower() in ("x86_64", "amd64")
    if CPU_SIMD in env and env[CPU_SIMD].strip() != "":
        if not env_flag(env, CPU_SIMD):
            return SimdDecision((), f"{CPU_SIMD}=0")
        if not x86:
            raise BuildConfigError(f"{CPU_SIMD}=1 asks for AVX2, which {machine} CPUs do not have")
        return SimdDecision(AVX2_FLAGS, f"{CPU_SIMD}=1 (the target CPUs must have AVX2 and FMA)")
    if not for_this_host:
        return SimdDecision((), f"a wheel may run on any x86-64 CPU (set {CPU_SIMD}=1 to build for AVX2 CPUs)"
                            if x86 else f"{machine} build")
    here = "in-place or editable build for this host"
    if x86 and host_level == "avx512":
        return SimdDecision(AVX512_FLAGS, f"{here}, which has AVX-512 (F, BW, VL, DQ), AVX2 and FMA")
    if x86 and host_level == "avx2":
        return SimdDecision(AVX2_FLAGS, f"{here}, which has AVX2 and FMA")
    return SimdDecision((), f"{here}, which lacks AVX2/FMA" if x86 else f"{machine} build")


@dataclass(frozen=True)
class ThreadsDecision:
    """The compile and link flags that let the CPU kernels' ``at::parallel_for`` use torch's threads, and why."""

    flags: Tuple[str, ...]
    parallel: bool
    reason: str

    def line(self) -> str:
        return f"CPU epilogues {'multithreaded' if self.parallel else 'single-threaded'}: {self.reason}"


def torch_parallel_backend(parallel_info: str) -> str:
    """The intra-op backend named by ``torch.__config__.parallel_info()`` ("OpenMP", "native thread pool", ...);
    ``""`` when it names none."""
    found = re.search(r"^ATen parallel backend:\s*(.+?)\s*$", parallel_info, re.MULTILINE)
    return found.group(1) if found else ""


def decide_cpu_threads(backend: str, system: str) -> ThreadsDecision:
    """``at::parallel_for`` is a header template. Under torch's OpenMP backend its parallel branch exists only in
    code compiled with OpenMP: without ``-fopenmp`` every epilogue silently runs on one thread (measured: 2x
    slower on 2 cores). The flag makes the library use the OpenMP runtime torch has already loaded (same soname,
    one thread pool). Torch's native thread pool is compiled into libtorch and needs nothing."""
    if backend != "OpenMP":
        return ThreadsDecision((), True, f"torch's intra-op backend is {backend or 'unnamed'}, which needs no flags")
    if system == "Darwin":
        return ThreadsDecision((), False, "torch's OpenMP backend needs -fopenmp, which Apple clang lacks")
    return ThreadsDecision(("-fopenmp",), True, "-fopenmp, for torch's OpenMP intra-op backend (its threads)")


BUILD_INFO_HEADER = "deeprnn_build_info.h"
"""Generated into the build folder and included by csrc/ops.cpp, which serves it as ``deeprnn::build_info()``."""


def build_info(cuda: CudaDecision, simd: SimdDecision, threads: ThreadsDecision) -> dict:
    """What ``deeprnn info`` reports about the build, recorded in the extension itself."""
    return {"cuda_compiled": cuda.use_cuda, "cuda": cuda.line(), "cpu": simd.line(), "threads": threads.line()}


def build_info_header(info: dict) -> str:
    """A C++ header defining ``DEEPRNN_BUILD_INFO``, the JSON of ``info`` as a string literal."""
    text = json.dumps(info, sort_keys=True)
    # Octal escapes for everything but plain printable ASCII: valid in any C++ string literal, never ambiguous.
    literal = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else f"\\{b:03o}" for b in text.encode())
    return f'// Generated by setup.py: the build decisions.\n#define DEEPRNN_BUILD_INFO "{literal}"\n'
