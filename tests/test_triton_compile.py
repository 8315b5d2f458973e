"""Every fused Triton kernel compiles for sm_80 and sm_90 (to a cubin, through ptxas) without a GPU,
specialised as a launch on aligned tensors specialises it; the streaming kernels' SASS has 128-bit
loads and no spills (see tests/triton_gpu_compile.py)."""

import pytest

pytest.importorskip("triton")

import compiled_script


def test_every_kernel_compiles_for_ampere_and_hopper_with_wide_loads_and_no_spills():
    out = compiled_script.run("triton_gpu_compile.py", "80", "90", timeout=900)
    lines = out.splitlines()
    assert sum(line.startswith("ok ") for line in lines) >= 150, out[-2000:]
    if "no cuobjdump" not in out:
        assert sum(line.endswith("(SASS: LDG.E.128, no spills)") for line in lines) >= 80, out[-2000:]
