"""Builds fastgp's CUDA extension (fastgp._C, sources in csrc/) when it can; metadata is in pyproject.toml.

The extension is built when torch is importable with CUDA and nvcc is found, unless
FASTGP_SKIP_CUDA_BUILD=1. Since pyproject's build requirements deliberately leave torch out, the build
sees the installed torch only without isolation:

    pip install --no-build-isolation .          # AOT: compiles csrc/ now (honours TORCH_CUDA_ARCH_LIST, MAX_JOBS)
    pip install .                               # pure Python; backend="cuda" JIT-compiles on first use

Either way the CUDA sources are copied into the package (fastgp/csrc/), so the JIT build also works
from an installed wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC_PATTERNS = ("*.cpp", "*.cu", "*.h", "kernels/*.cuh")


def _load_build():
    # By path: importing the fastgp package would import torch and all of fastgp.
    spec = importlib.util.spec_from_file_location("_fastgp_build", ROOT / "fastgp" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build()


def cuda_build_decision(env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """``(build?, why)``: whether this environment can build the CUDA extension ahead of time."""
    env = os.environ if env is None else env
    if env.get("FASTGP_SKIP_CUDA_BUILD") == "1":
        return False, "FASTGP_SKIP_CUDA_BUILD=1"
    try:
        import torch
    except ImportError:
        return (
            False,
            "torch is not importable (to build against the installed torch: pip install --no-build-isolation .)",
        )
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    nvcc = _build.nvcc_path()
    if nvcc is None:
        return False, "no CUDA toolchain (nvcc not found; set CUDA_HOME)"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), {nvcc}"


class BuildPyWithSources(build_py):
    """Also copies csrc/ into the package as fastgp/csrc, for the JIT build of an installed wheel."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "fastgp" / "csrc"
        for pattern in CSRC_PATTERNS:
            for src in (ROOT / "csrc").glob(pattern):
                dest = target / src.relative_to(ROOT / "csrc")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)


def _extension_kwargs() -> dict:
    build, why = cuda_build_decision()
    if not build:
        print(
            f"fastgp: not building the CUDA extension ({why}); backend='cuda' will JIT-compile if it can",
            file=sys.stderr,
        )
        return {"cmdclass": {"build_py": BuildPyWithSources}}
    import torch

    _build.pin_cuda_home()
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    print(f"fastgp: building the CUDA extension with {why}", file=sys.stderr)
    ext = CUDAExtension(
        name=_build.AOT_NAME,
        sources=[f"csrc/{s}" for s in _build.SOURCES],
        include_dirs=_build.extra_include_dirs(),
        extra_compile_args={"cxx": _build.cxx_flags(torch.__version__), "nvcc": _build.nvcc_flags(torch.__version__)},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension, "build_py": BuildPyWithSources}}


if __name__ == "__main__":
    setup(**_extension_kwargs())
