"""fastgp's cached launches pick exactly the kernel Triton would, without a GPU (`python tests/triton_host_launch.py`).

Runs every fused op, forward and backward, on host-only launches for sm_90 (`fastgp._hosttime`):
Triton binds, specialises, compiles and caches for real, only the driver's launch is skipped. Every
launch is recorded; afterwards each one's cached `CompiledKernel` must be the very object Triton's
own binder selects for the same arguments, over inputs that move every specialisation (dtypes,
16-byte aligned or not, rows of one entry, integers equal to 1 or divisible by 16, seeds of every
width). Then: repeated calls launch through the cache (Triton's generic path not run at all), and a
registered launch hook sends launches back through Triton's path, which calls it.

Must run without TRITON_INTERPRET set by the caller (`_hosttime.enable` pins the interpreter off).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from fastgp import _hosttime

_hosttime.enable()

import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import fastgp.ops  # noqa: E402
from fastgp.ops import _launch  # noqa: E402

LAUNCHES: list[tuple[_launch.Launcher, tuple, _launch.Meta]] = []
_launch_once = _launch.Launcher.__call__


def _recording(self: _launch.Launcher, grid: int, meta: _launch.Meta, *args: Any) -> None:
    LAUNCHES.append((self, args, meta))
    _launch_once(self, grid, meta, *args)


def inputs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(label, grad-like tensor, scores) over the specialisations a launch can take."""
    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        out.append((f"{dtype} 4x3x5", torch.randn(4, 3, 5, dtype=dtype), torch.randn(4, dtype=dtype)))
    base = torch.randn(4 * 32 + 1)
    out.append(("misaligned 4x32", base[1:].view(4, 32), torch.randn(5)[1:]))  # 4-byte offsets
    out.append(("rows of one entry", torch.randn(6, 1), torch.randn(6)))
    out.append(("one row", torch.randn(1, 48), torch.randn(1)))
    out.append(("channels_last", torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last), torch.randn(2)))
    return out


def run_ops(x: torch.Tensor, s: torch.Tensor, seed: int | None) -> None:
    g = x.detach().requires_grad_()
    f = s.detach().requires_grad_()
    p, _ = fastgp.ops.penalty_from_grad(g, scores=f, output_weight=0.5)
    torch.autograd.grad(p, (g, f))
    scale = torch.tensor([0.5, 0.25])[1:]  # an AMP scale at a 4-byte offset
    p, _ = fastgp.ops.penalty_from_grad(g, norm="linf", reduction="max", grad_scale=scale)
    torch.autograd.grad(p, (g,))
    for norm in ("l2", "linf"):
        torch.autograd.grad(fastgp.ops.normalize(f, g, norm=norm).sum(), (f, g))
    fake = torch.randn_like(x).requires_grad_()
    x_hat, _ = fastgp.ops.interpolate(g, fake, seed=seed)
    torch.autograd.grad(x_hat.sum(), (g, fake))
    x_hat, _ = fastgp.ops.interpolate(g, None, "dragan", seed=seed)
    torch.autograd.grad(x_hat.sum(), (g,))


def check(name: str, ok: bool, detail: Callable[[], str] = lambda: "") -> int:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail()}")
    return 0 if ok else 1


def main() -> int:
    modules = [sys.modules[f"fastgp.ops.{name}"] for name in ("interpolate", "penalty", "normalize")]
    launchers = [v for m in modules for v in vars(m).values() if isinstance(v, _launch.Launcher)]
    failed = check("every launcher wraps a JIT kernel", all(isinstance(k.kernel, JITFunction) for k in launchers))
    failed += check(f"launches are cached on triton {triton.__version__}", all(k.cached for k in launchers))

    _launch.Launcher.__call__ = _recording
    seeds = (None, 7, 2**31, 2**63 + 5, -1)
    for i, (label, x, s) in enumerate(inputs()):
        run_ops(x, s, seeds[i % len(seeds)])
        print(f"ran  {label}")
    _launch.Launcher.__call__ = _launch_once
    wrong = []
    for launcher, args, meta in LAUNCHES:
        ours = launcher.compiled(meta, *args)
        theirs = launcher.kernel.run(*args, grid=(1,), warmup=True, **meta.kwargs)
        if ours is not theirs:
            wrong.append(f"{launcher.kernel.__name__} {meta}")
    failed += check(f"{len(LAUNCHES)} launches use Triton's own kernel", not wrong, lambda: "; ".join(wrong[:5]))

    generic: list[str] = []
    triton_run = JITFunction.run

    def counted(self: JITFunction, *args: Any, **kwargs: Any) -> Any:
        generic.append(self.__name__)
        return triton_run(self, *args, **kwargs)

    JITFunction.run = counted
    x, s = inputs()[0][1:]
    run_ops(x, s, None)
    failed += check("repeated calls skip Triton's generic path", not generic, lambda: ", ".join(generic))

    generic.clear()
    heard: list[Any] = []
    hooks = triton.knobs.runtime
    if hasattr(hooks.launch_enter_hook, "add"):  # a HookChain (triton >= 3.9)
        hooks.launch_enter_hook.add(heard.append)
    else:
        hooks.launch_enter_hook = heard.append
    run_ops(x, s, None)
    failed += check("a launch hook sends launches through Triton's path", len(heard) == len(generic) > 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
