"""Build of the deeprnn_cuda._C extension.

The CUDA kernels are compiled when torch is a CUDA build and a CUDA toolkit is found (CUDA_HOME or nvcc on
PATH); a GPU need not be present. Otherwise the extension is CPU-only. DEEPRNN_FORCE_CPU=1 skips CUDA;
DEEPRNN_CPU_SIMD=0 builds the CPU kernels without AVX2 (for a machine other than the build host).
"""
import glob
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _build_cuda() -> bool:
    if os.environ.get("DEEPRNN_FORCE_CPU") == "1":
        return False
    # Decide from the toolchain, not from torch.cuda.is_available(): CI compiles with no GPU present.
    return torch.version.cuda is not None and CUDA_HOME is not None


def _host_has_avx2() -> bool:
    """AVX2+FMA on the build host (the extension is built where it runs, like -march=native)."""
    if platform.machine() not in ("x86_64", "AMD64") or os.environ.get("DEEPRNN_CPU_SIMD") == "0":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and "fma" in flags


def extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cxx = ["-O3"]  # torch picks the C++ standard its headers need
    if _host_has_avx2():
        cxx += ["-mavx2", "-mfma"]  # the CPU epilogues then use ATen's AVX2 Vectorized<T>
    if not _build_cuda():
        return CppExtension("deeprnn_cuda._C", sources, extra_compile_args={"cxx": cxx}, py_limited_api=False)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # With no visible GPU torch cannot infer the architectures (and crashes trying): Ampere + Hopper.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DDEEPRNN_WITH_CUDA"]
    return CUDAExtension(
        "deeprnn_cuda._C",
        sources + _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
        extra_compile_args={"cxx": cxx + ["-DDEEPRNN_WITH_CUDA"], "nvcc": nvcc},
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
