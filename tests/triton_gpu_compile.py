"""Compile every fused Triton kernel as a real launch would, for sm_80 and sm_90, without a GPU
(`python tests/triton_gpu_compile.py [80 90]`).

The kernels are reached through fastgp's own ops, forward and backward, on CPU tensors of real
shapes, with Triton's `JITFunction.run` replaced by a recorder: what it records is what a launch
passes (arguments, constexprs, num_warps). Each recorded launch is then specialised by Triton's
own binder, as on a GPU (16-byte-aligned pointers and integers divisible by 16 get
``tt.divisibility=16``, which is what lets the compiler emit 16-byte loads; integers equal to 1
become constants), and lowered through Triton's real pipeline (TTIR -> PTX -> cubin with ptxas).

On the streaming kernels (every kernel that reads a whole gradient), at large aligned shapes, in
float32 and bfloat16, the SASS (``cuobjdump -sass``) must show 128-bit global loads
(``LDG.E.128``) and no local memory (``STL``/``LDL``: register spills). Must run without
TRITON_INTERPRET (kernels are then JIT functions, not interpreted ones).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from fastgp import ops

# (shape, dtypes, settings): rows split over programs (64×3×64×64) in every dtype and setting;
# whole rows of 4096 per program, and four rows of 256 per program, in the dtypes whose SASS is
# checked; rows of 2 (no 16-byte row to load: compiled, not checked).
SPLIT, WHOLE, SHORT, TINY = (64, 3, 64, 64), (1024, 4096), (4096, 256), (4096, 2)
VECTOR_DTYPES = (torch.float32, torch.bfloat16)  # where the SASS of the streaming kernels is checked
# norm, constraint, reduction, mode; l2 with scores and the norms' gradient, l1 with an AMP scale.
SETTINGS = (("l2", "ls", "mean", "gn"), ("l1", "hinge", "max", "pgn"), ("linf", "squared_hinge", "max", "gn"))
PLAN = (
    (SPLIT, (torch.float32, torch.bfloat16, torch.float16, torch.float64), SETTINGS),
    (WHOLE, VECTOR_DTYPES, SETTINGS[:1]),
    (SHORT, VECTOR_DTYPES, SETTINGS[:1]),
    (TINY, (torch.float32,), SETTINGS),
)


def record(step: Callable[[], object]) -> list[tuple[JITFunction, tuple, dict]]:
    """The launches `step` makes, recorded instead of run."""
    launches = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    with mock.patch.object(JITFunction, "run", run):
        step()
    return launches


def penalty_step(grad: torch.Tensor, setting: tuple[str, str, str, str]) -> Callable[[], object]:
    norm, constraint, reduction, _ = setting
    scores = torch.empty(grad.shape[0], dtype=grad.dtype) if norm != "l1" else None
    scale = torch.full((), 0.5) if norm == "l1" else None

    def step():
        g = grad.detach().requires_grad_()
        s = scores.requires_grad_() if scores is not None else None
        p, norms = ops.penalty_from_grad(
            g, norm=norm, constraint=constraint, reduction=reduction, scores=s,
            output_weight=0.1 if s is not None else 0.0, grad_scale=scale,
        )  # fmt: skip
        (p + norms.sum() if norm == "l2" else p).backward()

    return step


def normalize_step(grad: torch.Tensor, setting: tuple[str, str, str, str]) -> Callable[[], object]:
    def step():
        s, g = torch.empty(grad.shape[0], dtype=grad.dtype, requires_grad=True), grad.detach().requires_grad_()
        ops.normalize(s, g, mode=setting[3], norm=setting[0]).sum().backward()

    return step


def interpolate_step(real: torch.Tensor, points: str) -> Callable[[], object]:
    def step():
        x, y = real.detach().requires_grad_(), torch.empty_like(real, requires_grad=True)
        ops.interpolate(x, y if points == "interpolate" else None, points, seed=1)[0].sum().backward()

    return step


def cases() -> Iterator[tuple[str, bool, Callable[[], object]]]:
    """``(label, check the SASS, step)`` for every op, dtype, cut of the rows, and setting."""
    for shape, dtypes, settings in PLAN:
        for dtype in dtypes:
            grad = torch.empty(shape, dtype=dtype)
            check = shape != TINY and dtype in VECTOR_DTYPES
            for setting in settings:
                label = f"{shape} {str(dtype)[6:]} {'/'.join(setting)}"
                yield f"penalty {label}", check, penalty_step(grad, setting)
                yield f"normalize {label}", check, normalize_step(grad, setting)
            if shape == SPLIT:
                for points in ("interpolate", "dragan"):
                    yield f"{points} {shape} {str(dtype)[6:]}", check, interpolate_step(grad, points)


def specialise(kernel: JITFunction, args: tuple, kwargs: dict, target: GPUTarget) -> tuple:
    """``(signature, constexprs, attrs, options)``: what `JITFunction.run` compiles this launch
    with, from Triton's own binder."""
    backend = make_backend(target)
    kwargs = {**kwargs, "debug": kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug}
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def build(kernel: JITFunction, specialised: tuple, target: GPUTarget, aligned: bool = True) -> bytes:
    """The cubin; ``aligned=False`` drops the alignment attributes (a launch never does)."""
    signature, constexprs, attrs, options = specialised
    source = ASTSource(kernel, signature, constexprs, attrs if aligned else {})
    return triton.compile(source, target=target, options=options.__dict__).asm["cubin"]


def cuobjdump() -> str | None:
    """Triton's own cuobjdump (it matches its ptxas), else one on PATH or in /usr/local/cuda."""
    shipped = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    found = [str(shipped)] if shipped.exists() else []
    found += [p for p in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump") if p and Path(p).exists()]
    return found[0] if found else None


def sass_problems(cubin: bytes, tool: str) -> list[str]:
    """What the SASS of a streaming kernel lacks or has that it must not."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    problems = []
    if not re.search(r"\bLDG\.E\.128\b", sass):
        problems.append("no 128-bit global load (LDG.E.128)")
    spills = re.findall(r"\b(?:STL|LDL)\b", sass)
    if spills:
        problems.append(f"{len(spills)} local-memory instructions (STL/LDL: spills)")
    return problems


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles", file=sys.stderr)
        return 2
    archs = [int(a) for a in (sys.argv[1:] or ["80", "90"])]
    tool = cuobjdump()
    if tool is None:
        print("no cuobjdump: the SASS is not checked")
    failed, seen = 0, set()
    if tool is not None:
        # The check can fail: the first streaming kernel compiled from its bare signature, without
        # the alignment attributes a launch adds, has no 128-bit load.
        _, check, step = next(cases())
        kernel, args, kwargs = record(step)[0]
        target = GPUTarget("cuda", archs[-1], 32)
        if not check or not sass_problems(build(kernel, specialise(kernel, args, kwargs, target), target, False), tool):
            print("FAIL the SASS check finds nothing wrong with an unaligned compile")
            failed += 1
    for (label, check, step), arch in itertools.product(list(cases()), archs):
        for kernel, args, kwargs in record(step):
            target = GPUTarget("cuda", arch, 32)
            what = f"sm_{arch} {kernel.__name__} {label}"
            try:
                specialised = specialise(kernel, args, kwargs, target)
                key = (arch, kernel.__name__, *map(str, specialised))
                if key in seen:
                    continue
                seen.add(key)
                cubin = build(kernel, specialised, target)
                assert cubin, "no cubin"
                problems = sass_problems(cubin, tool) if check and tool else []
                assert not problems, "; ".join(problems)
            except Exception as exc:  # report every failure, not only the first
                failed += 1
                print(f"FAIL {what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            else:
                print(f"ok   {what}{' (SASS: LDG.E.128, no spills)' if check and tool else ''}")
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
