"""Host-only Triton launches: what a launch costs the CPU, measured on a machine without a GPU.

On small inputs a GPU finishes each kernel before the CPU has issued the next one, so a call costs
what its host side costs: argument binding, specialisation, the kernel-cache lookup, allocations and
Python glue. `enable` makes this process run that host side exactly as it would for an sm_90 GPU
(device 0, stream 0) on CPU tensors: every ``kernel[grid](...)`` binds and specialises its arguments
(pointer alignment included), compiles on first use for ``GPUTarget("cuda", arch, 32)`` through
ptxas, looks the kernel up in Triton's cache and calls its launcher, which does nothing. Only the
driver's own launch call (``cuLaunchKernelEx``, a few µs on real hardware) is left out, for the fused
ops and the eager code they are compared with alike (eager PyTorch runs its CPU kernels instead).

The kernels must be Triton JIT functions, not interpreted ones, while `fastgp.backends` must still
accept CPU tensors for the Triton backend: `enable` pins ``triton.knobs.runtime.interpret = False``
and then sets ``TRITON_INTERPRET=1``, so it must run before `fastgp.ops` is imported. It changes the
process for good (there is no GPU to hand back to); run it in a process of its own::

    from fastgp import _hosttime
    _hosttime.enable()
    import fastgp.ops  # kernels are JIT functions; calls on CPU tensors run their host side only

Needs Triton >= 3.3 (``triton.knobs``) and its bundled ptxas.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def _driver_class(arch: int) -> type:
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver

    class HostDriver(CudaDriver):
        """A CUDA driver for a device that is not there: target sm_`arch`, device 0, stream 0."""

        def __init__(self) -> None:
            # CudaDriver's own __init__ builds its C utilities against libcuda, which needs a GPU.
            self.utils = _HostUtils()
            self.launcher_cls = _NoLaunch

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self) -> int:
            return 0

        def set_current_device(self, device: int) -> None:
            pass

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
            return divmod(arch, 10)

    return HostDriver


class _HostUtils:
    """What `CompiledKernel` asks the driver for when it loads a kernel: H100-sized limits, no module."""

    def get_device_properties(self, device: int) -> dict[str, int]:
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32}

    def load_binary(self, name: str, kernel: bytes, shared: int, device: int) -> tuple[Any, int, int, int, int]:
        # (module, function, n_regs, n_spills, n_max_threads); a module of None is never unloaded.
        return None, 0, 0, 0, 1024

    def unload_module(self, module: Any) -> None:
        pass


class _NoLaunch:
    """A kernel's launcher that calls the launch hooks, as Triton's does, and launches nothing."""

    def __init__(self, src: Any, metadata: Any) -> None:
        pass

    def __call__(self, grid_x: int, grid_y: int, grid_z: int, stream: int, function: Any, *args: Any) -> None:
        _, launch_metadata, enter_hook, exit_hook = args[:4]
        if enter_hook is not None:
            enter_hook(launch_metadata)
        if exit_hook is not None:
            exit_hook(launch_metadata)


_ENABLED: list[int] = []


def enable(arch: int = 90) -> None:
    """Run every Triton launch of this process on the host only, as for an sm_`arch` GPU (see above).

    Raises RuntimeError if `fastgp.ops` was already imported (its kernels would be interpreted ones)
    or if Triton is too old to pin its interpreter switch.
    """
    if _ENABLED:
        if _ENABLED[0] != arch:
            raise RuntimeError(f"host-only launches are already enabled for sm_{_ENABLED[0]}")
        return
    if "fastgp.ops" in sys.modules:
        raise RuntimeError("enable host-only launches before fastgp.ops is imported")
    import triton
    from triton.runtime import driver

    if not hasattr(triton, "knobs"):
        raise RuntimeError(f"host-only launches need triton >= 3.3, not {triton.__version__}")
    triton.knobs.runtime.interpret = False
    os.environ["TRITON_INTERPRET"] = "1"
    driver.set_active(_driver_class(arch)())
    _ENABLED.append(arch)


def enabled() -> bool:
    """True once `enable` has run in this process."""
    return bool(_ENABLED)
