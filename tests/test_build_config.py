"""setup.py's build decisions (deeprnn_cuda/_build_config.py) on fake toolkit layouts in tmp_path.

A fake toolkit is a folder with ``bin/nvcc`` (a shell script printing a release line, and a ``_HERE_`` line on a
dry run like the real one) and optionally ``include/cuda_runtime.h``.
"""
import json
import os
import re
import stat

import pytest

from deeprnn_cuda import _build_config as bc


def _script(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def toolkit(root, version="13.0", headers=True, dryrun=True):
    """A fake CUDA toolkit at ``root`` whose nvcc reports ``version``."""
    here = f"echo '#$ _HERE_={root}/bin'" if dryrun else "exit 1"
    release = f'echo "Cuda compilation tools, release {version}, V{version}.1"'
    _script(root / "bin" / "nvcc", f'case "$*" in *--dryrun*) {here} ;; *) {release} ;; esac\n')
    if headers:
        (root / "include").mkdir(parents=True, exist_ok=True)
        (root / "include" / "cuda_runtime.h").write_text("")
    return root


def wrapper(bin_dir, target):
    """A ``bin_dir/nvcc`` script that execs ``target`` (the layout of the issue: /usr/local/bin/nvcc)."""
    return _script(bin_dir / "nvcc", f'exec "{target}" "$@"\n')


def decide(env, torch_cuda="13.0", search=(), **kw):
    return bc.decide_cuda({"PATH": "", **env}, torch_cuda, search_roots=search, **kw)


def test_wrapper_script_on_path_finds_the_toolkit_it_runs(tmp_path):
    real = toolkit(tmp_path / "opt" / "cuda-13.0")
    wrapper(tmp_path / "usr" / "local" / "bin", real / "bin" / "nvcc")
    d = decide({"PATH": str(tmp_path / "usr" / "local" / "bin")})
    assert d.use_cuda and d.home == str(real) and d.nvcc_version == "13.0"
    # torch's guess, the folder above the wrapper, was tried first and rejected for its missing headers.
    assert d.skipped == ((str(tmp_path / "usr" / "local"), "no include/cuda_runtime.h"),)
    assert "runs from" in d.line() and str(real) in d.line()


def test_wrapper_without_dry_run_falls_back_to_the_usual_places(tmp_path):
    real = toolkit(tmp_path / "usr" / "local" / "cuda-13.0", dryrun=False)
    wrapper(tmp_path / "usr" / "local" / "bin", real / "bin" / "nvcc")
    d = decide({"PATH": str(tmp_path / "usr" / "local" / "bin")}, search=[str(tmp_path / "usr" / "local" / "cuda-*")])
    assert d.home == str(real) and "usual install places" in d.reason


def test_symlinked_nvcc_resolves_to_its_toolkit(tmp_path):
    real = toolkit(tmp_path / "cuda", dryrun=False)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").symlink_to(real / "bin" / "nvcc")
    d = decide({"PATH": str(tmp_path / "bin")})
    assert d.home == str(real) and "resolved to" in d.reason


def test_missing_headers_build_cpu_only_and_say_how_to_get_cuda(tmp_path):
    toolkit(tmp_path / "cuda", headers=False)
    d = decide({"CUDA_HOME": str(tmp_path / "cuda")})
    assert not d.use_cuda and d.home is None
    line = d.line()
    assert line.startswith("CUDA kernels not compiled: no usable CUDA 13.0 toolkit")
    assert f"{tmp_path / 'cuda'}: no include/cuda_runtime.h" in line and "CUDA_HOME=/path/to/cuda-13.x" in line
    assert "\n" not in line


def test_major_version_mismatch_is_skipped_for_a_matching_toolkit(tmp_path):
    old = toolkit(tmp_path / "cuda-12.4", version="12.4")
    d = decide({"CUDA_HOME": str(old)})
    assert not d.use_cuda and "nvcc 12.4 does not match torch's CUDA 13.0" in d.reason
    good = toolkit(tmp_path / "cuda-13.0")
    d = decide({"CUDA_HOME": str(old)}, search=[str(tmp_path / "cuda-*")])
    assert d.home == str(good) and "nvcc 12.4 does not match" in d.reason


def test_minor_version_mismatch_is_accepted_as_torch_does(tmp_path):
    root = toolkit(tmp_path / "cuda", version="13.1")
    d = decide({"CUDA_HOME": str(root)})
    assert d.home == str(root) and d.nvcc_version == "13.1"


def test_versioned_folders_prefer_torchs_version_then_the_newest(tmp_path):
    for v in ("12.8", "13.0", "13.2"):
        toolkit(tmp_path / f"cuda-{v}", version=v)
    pattern = [str(tmp_path / "cuda-*")]
    assert decide({}, "13.0", pattern).home == str(tmp_path / "cuda-13.0")
    assert decide({}, "13.1", pattern).home == str(tmp_path / "cuda-13.2")
    assert decide({}, "12.6", pattern).home == str(tmp_path / "cuda-12.8")


def test_cuda_home_pointing_at_a_wrong_place_is_reported_and_skipped(tmp_path):
    real = toolkit(tmp_path / "cuda")
    d = decide({"CUDA_HOME": str(tmp_path / "nope")}, search=[str(real)])
    assert d.home == str(real) and f"{tmp_path / 'nope'}: not a directory" in d.reason
    (tmp_path / "empty").mkdir()
    d = decide({"CUDA_HOME": str(tmp_path / "empty")})
    assert not d.use_cuda and f"{tmp_path / 'empty'}: no bin/nvcc" in d.reason


def test_nvcc_that_prints_no_release_is_not_used(tmp_path):
    root = tmp_path / "cuda"
    _script(root / "bin" / "nvcc", "echo oops; exit 1\n")
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    assert "printed no release" in decide({"CUDA_HOME": str(root)}).reason


def test_nothing_found(tmp_path):
    d = decide({}, search=[str(tmp_path / "cuda")])
    assert not d.use_cuda and d.skipped == ()
    assert "CUDA_HOME unset, no nvcc on PATH" in d.reason and str(tmp_path / "cuda") in d.reason


def test_each_root_is_tried_once(tmp_path):
    real = toolkit(tmp_path / "cuda-13.0", headers=False)
    (tmp_path / "cuda").symlink_to(real)
    d = decide({"CUDA_HOME": str(real)}, search=[str(tmp_path / "cuda"), str(tmp_path / "cuda-*")])
    assert [root for root, _ in d.skipped] == [str(real)]


def test_force_cpu_wins_over_a_usable_toolkit(tmp_path):
    root = toolkit(tmp_path / "cuda")
    d = decide({"CUDA_HOME": str(root), "DEEPRNN_FORCE_CPU": "1"})
    assert not d.use_cuda and "DEEPRNN_FORCE_CPU=1" in d.reason
    assert decide({"CUDA_HOME": str(root), "DEEPRNN_FORCE_CPU": "0"}).use_cuda


def test_require_cuda_makes_a_missing_toolkit_an_error(tmp_path):
    with pytest.raises(bc.BuildConfigError, match="REQUIRE_CUDA=1, but the CUDA kernels cannot be compiled: no usable"):
        decide({"DEEPRNN_REQUIRE_CUDA": "1"}, search=[str(tmp_path / "cuda")])
    with pytest.raises(bc.BuildConfigError, match="torch is a CPU-only build"):
        decide({"DEEPRNN_REQUIRE_CUDA": "1"}, torch_cuda=None)
    root = toolkit(tmp_path / "cuda")
    assert decide({"CUDA_HOME": str(root), "DEEPRNN_REQUIRE_CUDA": "1"}).home == str(root)


def test_contradictory_or_malformed_variables_are_errors():
    with pytest.raises(bc.BuildConfigError, match="contradict"):
        decide({"DEEPRNN_FORCE_CPU": "1", "DEEPRNN_REQUIRE_CUDA": "1"})
    with pytest.raises(bc.BuildConfigError, match="DEEPRNN_FORCE_CPU='maybe': expected 1 or 0"):
        decide({"DEEPRNN_FORCE_CPU": "maybe"})


def test_cpu_only_and_rocm_torch_build_cpu_only(tmp_path):
    root = toolkit(tmp_path / "cuda")
    assert "torch is a CPU-only build" in decide({"CUDA_HOME": str(root)}, torch_cuda=None).reason
    d = decide({"CUDA_HOME": str(root)}, torch_cuda=None, torch_hip="6.2")
    assert not d.use_cuda and "ROCm" in d.reason


def test_this_machines_wrapper_layout(tmp_path):
    """The issue's layout with the real toolkit: a wrapper nvcc on PATH, CUDA_HOME unset."""
    real_nvcc = "/usr/local/cuda/bin/nvcc"
    if not os.access(real_nvcc, os.X_OK):
        pytest.skip("no CUDA toolkit at /usr/local/cuda on this machine")
    wrapper(tmp_path / "usr" / "local" / "bin", real_nvcc)
    d = decide({"PATH": str(tmp_path / "usr" / "local" / "bin")}, torch_cuda=bc.nvcc_release(real_nvcc))
    assert d.use_cuda and os.path.realpath(d.home) == os.path.realpath("/usr/local/cuda")
    assert os.path.isfile(os.path.join(d.home, "include", "cuda_runtime.h"))


@pytest.mark.parametrize("env, for_host, machine, level, flags, says", [
    ({}, True, "x86_64", "avx2", bc.AVX2_FLAGS, "CPU kernels AVX2+FMA: in-place or editable build for this host, which has"),
    ({}, True, "x86_64", "avx512", bc.AVX512_FLAGS, "CPU kernels AVX-512+AVX2+FMA: in-place or editable build"),
    ({}, True, "x86_64", "", (), "lacks AVX2"),
    ({}, False, "x86_64", "avx512", (), "a wheel may run on any x86-64 CPU"),
    ({"DEEPRNN_CPU_SIMD": "1"}, False, "x86_64", "", bc.AVX2_FLAGS, "DEEPRNN_CPU_SIMD=1"),
    ({"DEEPRNN_CPU_SIMD": "1"}, True, "x86_64", "avx512", bc.AVX2_FLAGS, "DEEPRNN_CPU_SIMD=1"),
    ({"DEEPRNN_CPU_SIMD": "0"}, True, "x86_64", "avx512", (), "DEEPRNN_CPU_SIMD=0"),
    ({"DEEPRNN_CPU_SIMD": ""}, True, "AMD64", "avx2", bc.AVX2_FLAGS, "in-place"),
    ({}, True, "aarch64", "", (), "aarch64 build"),
])
def test_cpu_simd_flags_only_where_the_binary_stays_on_its_host(env, for_host, machine, level, flags, says):
    d = bc.decide_cpu_simd(env, for_host, machine, level)
    assert d.flags == flags and says in d.line()


def test_cpu_simd_errors():
    with pytest.raises(bc.BuildConfigError, match="aarch64"):
        bc.decide_cpu_simd({"DEEPRNN_CPU_SIMD": "1"}, True, "aarch64", "")
    with pytest.raises(bc.BuildConfigError, match="DEEPRNN_CPU_SIMD='avx512'"):
        bc.decide_cpu_simd({"DEEPRNN_CPU_SIMD": "avx512"}, True, "x86_64", "avx512")


@pytest.mark.parametrize("flags, level", [
    ("fpu sse2 avx avx2 fma", "avx2"),
    ("fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd", "avx512"),
    ("fpu sse2 avx avx2 fma avx512f avx512cd", "avx2"),  # no BW/VL/DQ: ATen's 512-bit vectors need them
    ("fpu sse2 avx avx512f avx512bw avx512vl avx512dq", ""),  # no AVX2/FMA flags: trust nothing
    ("fpu sse2 avx", ""),
])
def test_cpuinfo_flags(tmp_path, flags, level):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert bc.cpu_simd_level(str(info)) == level


@pytest.mark.parametrize("backend, system, flags, parallel, says", [
    ("OpenMP", "Linux", ("-fopenmp",), True, "CPU epilogues multithreaded: -fopenmp"),
    ("OpenMP", "Darwin", (), False, "CPU epilogues single-threaded: torch's OpenMP backend needs -fopenmp"),
    ("native thread pool", "Linux", (), True, "multithreaded: torch's intra-op backend is native thread pool"),
    ("", "Linux", (), True, "is unnamed"),
])
def test_cpu_threads_flags_follow_torchs_parallel_backend(backend, system, flags, parallel, says):
    d = bc.decide_cpu_threads(backend, system)
    assert (d.flags, d.parallel) == (flags, parallel) and says in d.line()


def test_torch_parallel_backend_is_read_from_parallel_info():
    info = "ATen/Parallel:\n\tat::get_num_threads() : 2\nOpenMP 201511 (a.k.a. OpenMP 4.5)\n" \
           "Environment variables:\n\tOMP_NUM_THREADS : [not set]\nATen parallel backend: OpenMP\n"
    assert bc.torch_parallel_backend(info) == "OpenMP"
    assert bc.torch_parallel_backend("ATen parallel backend: native thread pool  \n") == "native thread pool"
    assert bc.torch_parallel_backend("no backend line") == ""


def test_cpuinfo_missing(tmp_path):
    assert bc.cpu_simd_level(str(tmp_path / "missing")) == ""


def test_build_info_header_is_a_c_string_of_the_json(tmp_path):
    cuda = bc.CudaDecision(None, 'CUDA_HOME="/op\\t?/é" odd')
    simd = bc.SimdDecision((), "portable")
    threads = bc.ThreadsDecision(("-fopenmp",), True, "OpenMP")
    info = bc.build_info(cuda, simd, threads)
    header = bc.build_info_header(info)
    literal = re.search(r'^#define DEEPRNN_BUILD_INFO "(.*)"$', header, re.MULTILINE).group(1)
    assert '"' not in literal and "\\" not in re.sub(r"\\[0-7]{3}", "", literal)
    # Undo C's octal escapes independently of the writer, then read the JSON back.
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), literal.encode("ascii"))
    assert json.loads(raw.decode()) == {"cuda_compiled": False, "cuda": cuda.line(), "cpu": simd.line(),
                                        "threads": threads.line()}
