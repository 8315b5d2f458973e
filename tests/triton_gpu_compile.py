"""Compile every fused Triton kernel for sm_80 and sm_90 without a GPU (`python tests/triton_gpu_compile.py`).

The interpreter that runs the kernels on CPU in the tests is lenient about types and layouts; the GPU
compiler is not. This lowers each kernel through Triton's real pipeline (TTIR -> PTX -> cubin with
ptxas) for the dtypes and switches the launchers use, so a kernel that would not compile on a GPU fails
here. Must run without TRITON_INTERPRET (kernels are then JIT functions, not interpreted ones).
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

DTYPES = {"fp16": "fp32", "bf16": "fp32", "fp32": "fp32", "fp64": "fp64"}  # data dtype -> accumulation dtype
TL_ACC = {"fp32": tl.float32, "fp64": tl.float64}
DATA = {
    "real_ptr",
    "fake_ptr",
    "x_hat_ptr",
    "dx_hat_ptr",
    "dreal_ptr",
    "dfake_ptr",
    "g_ptr",
    "dg_ptr",
    "f_ptr",
    "out_ptr",
    "df_ptr",
    "dout_ptr",
}
ACC = {
    "alpha_ptr",
    "std_ptr",
    "dstd_part_ptr",
    "part_ptr",
    "penalty_ptr",
    "norms_ptr",
    "coef_ptr",
    "factor_ptr",
    "dp_ptr",
    "dnorms_ptr",
}
INT = {"count_ptr": "*i32", "counter_ptr": "*i32", "seed_ptr": "*i64"}


def signature(kernel: triton.JITFunction, data: str, acc: str, index: str) -> dict[str, str]:
    sig = {}
    for name, param in zip(kernel.arg_names, kernel.params, strict=True):
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in DATA:
            sig[name] = "*" + data
        elif name in ACC:
            sig[name] = "*" + acc
        elif name in INT:
            sig[name] = INT[name]
        elif name.endswith(("_hi", "_lo")):
            sig[name] = "fp32"  # float scalars travel as two float32 halves
        else:
            sig[name] = index  # strides and sizes: i32, or i64 for tensors past 2^31 elements
    return sig


def cases():
    ops = {name: importlib.import_module(f"fastgp.ops.{name}") for name in ("interpolate", "penalty", "normalize")}
    for (data, acc), index in itertools.product(DTYPES.items(), ("i32", "i64")):
        base = {"BLOCK_SIZE": 1024, "TILES": 8, "ACC": TL_ACC[acc]}
        for dragan in (False, True):
            yield ops["interpolate"]._interpolate_fwd_kernel, data, acc, index, {**base, "DRAGAN": dragan}
            yield (
                ops["interpolate"]._interpolate_bwd_kernel,
                data,
                acc,
                index,
                {**base, "DRAGAN": dragan, "HAS_DREAL": not dragan, "HAS_DFAKE": not dragan},
            )
        # The two cuts of `_common.plan`: split rows (one per program), and many short rows per program.
        for split, norm in itertools.product((True, False), (0, 1, 2)):
            tile = {"ROWS": 1, "BLOCK": 1024, "TILES": 8} if split else {"ROWS": 512, "BLOCK": 2, "TILES": 1}
            reduce = {**tile, "FROWS": 2, "FCHUNKS": 512, "SPLIT": split, "ACC": TL_ACC[acc]}
            yield (
                ops["penalty"]._penalty_fwd_kernel,
                data,
                acc,
                index,
                {
                    **reduce,
                    "NORM": norm,
                    "CONSTRAINT": norm,
                    "MAX": norm == 2,
                    "HAS_SCORES": norm != 1,
                    "FINISH": 1024,
                    "ARRIVE": True,
                },
            )
            yield (
                ops["penalty"]._penalty_bwd_kernel,
                data,
                acc,
                index,
                {**tile, "NORM": norm, "HAS_DNORMS": norm == 0, "HAS_SCORES": norm != 1, "ACC": TL_ACC[acc]},
            )
            yield ops["normalize"]._normalize_fwd_kernel, data, acc, index, {**reduce, "NORM": norm, "PGN": norm != 0}
            yield (
                ops["normalize"]._normalize_bwd_kernel,
                data,
                acc,
                index,
                {**tile, "NORM": norm, "PGN": norm != 0, "ACC": TL_ACC[acc]},
            )


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles", file=sys.stderr)
        return 2
    archs = [int(a) for a in (sys.argv[1:] or ["80", "90"])]
    failed = 0
    for (kernel, data, acc, index, constexprs), arch in itertools.product(list(cases()), archs):
        label = f"sm_{arch} {kernel.__name__} {data} {index} {constexprs}"
        try:
            compiled = triton.compile(
                ASTSource(kernel, signature(kernel, data, acc, index), constexprs=constexprs),
                target=GPUTarget("cuda", arch, 32),
            )
            assert compiled.asm.get("cubin"), "no cubin"
        except Exception as exc:  # report every failure, not only the first
            failed += 1
            print(f"FAIL {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        else:
            print(f"ok   {label}")
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
