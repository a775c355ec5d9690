"""Build of diffdet's compiled ops (``diffdet._C``).

The C++ CPU ops are always built. The CUDA ops are built when nvcc and a CUDA build of torch are
both present; ``DIFFDET_CUDA=1`` requires them (a missing toolkit is an error), ``DIFFDET_CUDA=0``
skips them. ``TORCH_CUDA_ARCH_LIST`` is honoured and defaults to A100 and H100 (8.0;9.0).

Triton kernels live in ``kernels/`` and install as ``diffdet.kernels``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil

import torch
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _locate_cuda_home() -> None:
    """Point CUDA_HOME at a full toolkit when it is unset.

    torch guesses CUDA_HOME from the nvcc on PATH, which goes wrong when that nvcc is a wrapper
    script outside the toolkit (e.g. /usr/local/bin/nvcc): the guess then lacks lib64 and include.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


_locate_cuda_home()
from torch.utils.cpp_extension import (  # noqa: E402  (reads CUDA_HOME at import)
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def _cuda_requested() -> bool:
    """Whether to build the CUDA ops, from DIFFDET_CUDA and what is installed."""
    flag = os.environ.get("DIFFDET_CUDA", "").strip()
    have_nvcc = CUDA_HOME is not None and (
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None
    )
    have_torch_cuda = torch.version.cuda is not None
    if flag == "0":
        return False
    if flag == "1":
        if not (have_nvcc and have_torch_cuda):
            raise RuntimeError(
                f"DIFFDET_CUDA=1 but the CUDA ops cannot be built: nvcc found={have_nvcc} "
                f"(CUDA_HOME={CUDA_HOME}), torch CUDA build={torch.version.cuda}"
            )
        return True
    if flag:
        raise RuntimeError(f"DIFFDET_CUDA must be 0 or 1, got {flag!r}")
    return have_nvcc and have_torch_cuda


def _pip_cuda_include_dirs() -> list[str]:
    """CUDA library headers shipped in the ``nvidia`` pip packages (cuBLAS, cuSPARSE, ...).

    torch's CUDA headers include them, and a system toolkit with only nvcc and the runtime lacks them.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        dirs += sorted(d for d in glob.glob(os.path.join(base, "*", "include")) if os.path.isdir(d))
    return dirs


def _extension():
    sources = [os.path.join("csrc", "ops.cpp"), os.path.join("csrc", "python_module.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not _cuda_requested():
        return CppExtension(
            "diffdet._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # Appended after the toolkit's own include dir (CUDAExtension adds that first), so the toolkit's
    # headers win and the pip packages only fill in the libraries the toolkit lacks.
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    nvcc_flags += [f"-I{d}" for d in _pip_cuda_include_dirs()]
    cxx_cuda = cxx_flags + ["-DWITH_CUDA"] + [f"-idirafter{d}" for d in _pip_cuda_include_dirs()]
    return CUDAExtension(
        "diffdet._C",
        sources,
        include_dirs=include_dirs,
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_cuda, "nvcc": [*nvcc_flags, "-DWITH_CUDA"]},
        extra_link_args=link_flags,
    )


setup(
    # kernels/ and configs/ sit at the top level of the repository (DESIGN.md) but install inside the
    # package, so site-packages never gains a top-level `kernels` or `configs`.
    packages=[*find_packages(include=["diffdet", "diffdet.*"]), "diffdet.kernels", "diffdet.configs"],
    package_dir={"diffdet.kernels": "kernels", "diffdet.configs": "configs"},
    package_data={"diffdet.configs": ["*.yaml"], "diffdet.metadata": ["*.json"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
