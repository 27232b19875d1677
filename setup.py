"""Build of the deeprnn_cuda._C extension.

The CUDA kernels are compiled when torch is a CUDA build and a usable CUDA toolkit is found (see
deeprnn_cuda/_build_config.py for where it looks and what it checks); a GPU need not be present. Otherwise the
extension is CPU-only, and the build says why in one line. DEEPRNN_FORCE_CPU=1 skips CUDA; DEEPRNN_REQUIRE_CUDA=1
makes a missing toolkit an error; DEEPRNN_CPU_SIMD=1/0 forces the CPU kernels' AVX2 flags on/off (by default
only in-place and editable builds use SIMD flags: AVX-512 or AVX2, whichever the host has). Under torch's OpenMP
backend the CPU kernels get -fopenmp, so their epilogues run on torch's threads. `deeprnn info` shows what was
decided.
"""
import glob
import importlib.util
import logging
import os
import platform
import sys

import torch
from setuptools import setup

# torch logs its own toolkit guess on import (e.g. /usr/local for a wrapper /usr/local/bin/nvcc); BuildExt checks
# the candidates and prints the toolkit it really uses, so that guess would only mislead. Later warnings stay.
_torch_log = logging.getLogger("torch.utils.cpp_extension")
_torch_log.setLevel(logging.ERROR)
import torch.utils.cpp_extension as cpp_extension  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

_torch_log.setLevel(logging.NOTSET)

ROOT = os.path.dirname(os.path.abspath(__file__))
NAME = "deeprnn_cuda._C"


def _load_build_config():
    """deeprnn_cuda/_build_config.py, by path: the package itself is not importable while it is being built."""
    path = os.path.join(ROOT, "deeprnn_cuda", "_build_config.py")
    spec = importlib.util.spec_from_file_location("_deeprnn_build_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build_config = _load_build_config()


def _sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cpu_sources() -> list:
    return _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")


def _extension(cuda, simd, threads, generated_dir: str):
    """The extension as decided: CUDA or CPU-only, with the SIMD and threading flags and the build-info header's
    folder."""
    cxx = ["-O3", *simd.flags, *threads.flags]  # torch picks the C++ standard its headers need
    link = list(threads.flags)
    if not cuda.use_cuda:
        return CppExtension(NAME, _cpu_sources(), include_dirs=[generated_dir], extra_compile_args={"cxx": cxx},
                            extra_link_args=link, py_limited_api=False)
    # torch's own guess (CUDA_HOME, else the folder above nvcc on PATH) is read at import; use the checked one.
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = cuda.home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # With no visible GPU torch cannot infer the architectures (and crashes trying): Ampere + Hopper.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DDEEPRNN_WITH_CUDA"]
    return CUDAExtension(NAME, _cpu_sources() + _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
                         include_dirs=[generated_dir], extra_link_args=link,
                         extra_compile_args={"cxx": cxx + ["-DDEEPRNN_WITH_CUDA"], "nvcc": nvcc})


class BuildExt(BuildExtension):
    """torch's BuildExtension, deciding CUDA and SIMD when it builds (so sdist and egg_info never probe or fail)."""

    _for_this_host = False

    def run(self):
        # setuptools clears `inplace` before build_extensions runs; editable installs set editable_mode instead.
        self._for_this_host = bool(self.inplace or getattr(self, "editable_mode", False))
        super().run()

    def build_extensions(self):
        try:
            cuda = build_config.decide_cuda(os.environ, torch.version.cuda, getattr(torch.version, "hip", None))
            simd = build_config.decide_cpu_simd(os.environ, self._for_this_host, platform.machine(),
                                                build_config.cpu_simd_level())
            threads = build_config.decide_cpu_threads(
                build_config.torch_parallel_backend(torch.__config__.parallel_info()), platform.system())
        except build_config.BuildConfigError as e:
            raise SystemExit(f"deeprnn_cuda: {e}") from None
        print(f"deeprnn_cuda: {cuda.line()}", flush=True)
        print(f"deeprnn_cuda: {simd.line()}", flush=True)
        print(f"deeprnn_cuda: {threads.line()}", flush=True)
        generated = os.path.abspath(os.path.join(self.build_temp, "deeprnn_generated"))
        _write_if_changed(os.path.join(generated, build_config.BUILD_INFO_HEADER),
                          build_config.build_info_header(build_config.build_info(cuda, simd, threads)))
        # Replace the placeholder's settings in place: build_ext has already annotated that object.
        (ext,) = self.extensions
        decided = _extension(cuda, simd, threads, generated)
        vars(ext).update({k: v for k, v in vars(decided).items() if not k.startswith("_")})
        super().build_extensions()


def _write_if_changed(path: str, text: str) -> None:
    """Write ``text`` unless it is there already (an unchanged header must not trigger a recompile)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


setup(
    # A CPU-only placeholder: BuildExt decides the real sources and flags when it builds.
    ext_modules=[CppExtension(NAME, _cpu_sources(), py_limited_api=False)],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
