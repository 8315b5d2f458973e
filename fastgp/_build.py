"""How the CUDA extension is compiled: shared by setup.py (AOT) and fastgp._cuda (JIT).

Imports neither torch nor the rest of fastgp, so setup.py can load it by path before anything is built.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The extension's module name under fastgp (AOT) and the library name of the JIT build.
AOT_NAME = "fastgp._C"
JIT_NAME = "fastgp_cuda_C"

SOURCES = (
    "fastgp_api.cpp",
    "interpolate_fwd.cu",
    "interpolate_bwd.cu",
    "penalty_fwd.cu",
    "penalty_bwd.cu",
    "normalize_fwd.cu",
    "normalize_bwd.cu",
)


def cxx_std(torch_version: str) -> str:
    """torch >= 2.14 headers need C++20; older ones are C++17 code bases."""
    major, minor = (int(p) for p in torch_version.split("+")[0].split(".")[:2])
    return "-std=c++20" if (major, minor) >= (2, 14) else "-std=c++17"


def cxx_flags(torch_version: str) -> list[str]:
    return ["-O3", cxx_std(torch_version)]


def nvcc_flags(torch_version: str) -> list[str]:
    # PyTorch adds --expt-relaxed-constexpr and the __CUDA_NO_HALF_* defines itself.
    return ["-O3", cxx_std(torch_version)]


def source_dir() -> Path | None:
    """csrc/: inside the installed package (copied there by setup.py's build_py) or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / SOURCES[0]).is_file():
            return candidate
    return None


def nvcc_path() -> str | None:
    """nvcc from CUDA_HOME / CUDA_PATH, else PATH, else /usr/local/cuda, as torch.utils.cpp_extension looks."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def cuda_home() -> str | None:
    """The CUDA toolkit's root: CUDA_HOME, CUDA_PATH, /usr/local/cuda or nvcc's grandparent, whichever has headers."""
    nvcc = nvcc_path()
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    homes += [str(Path(nvcc).resolve().parent.parent)] if nvcc else []
    for home in homes:
        if home and (Path(home) / "include" / "crt" / "host_defines.h").is_file():
            return home
    return None


def pin_cuda_home() -> None:
    """Sets CUDA_HOME for torch.utils.cpp_extension, which must not be imported before this.

    Without CUDA_HOME, torch takes nvcc's grandparent, which misses the toolkit (its lib64/libcudart, its
    headers) when nvcc on PATH is a wrapper script such as /usr/local/bin/nvcc.
    """
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        home = cuda_home()
        if home:
            os.environ["CUDA_HOME"] = home


def extra_include_dirs() -> list[str]:
    """The CUDA toolkit's headers, then those of pip-installed CUDA libraries (nvidia/cu*/include).

    A CUDA torch wheel depends on the nvidia-* wheels, whose headers (cuSPARSE, cuBLAS, ...) the ATen
    headers include; a bare toolkit may lack them. The toolkit's own directory goes first because the
    wheels' cuda_runtime_api.h needs the toolkit's crt/ headers.
    """
    home = cuda_home()
    dirs = [str(Path(home) / "include")] if home else []
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return dirs
    for root in getattr(nvidia, "__path__", []):
        dirs += sorted(str(p) for p in Path(root).glob("cu*/include") if p.is_dir())
    return dirs
