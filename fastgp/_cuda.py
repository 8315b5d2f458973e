"""The compiled CUDA backend: fastgp's fused ops written in CUDA C++ (csrc/), as ``torch.ops.fastgp_cuda``.

A backend module in the sense of `fastgp.backends`: the functions of `fastgp.reference` with the same
signatures and semantics (SPEC.md), plus `status()`. The extension is the AOT build `fastgp._C` when
``pip install --no-build-isolation .`` found a CUDA torch and nvcc; otherwise the first call compiles it
with ninja into a cache directory (JIT, `torch.utils.cpp_extension.load`). This module owns the Python
side of the ops: fake (meta) implementations and autograd formulas, registered on the C++-defined ops for
torch.compile and opcheck, and called eagerly through plain autograd Functions, one op call each way.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from . import _build, _layout, reference
from .reference import grad_norms

__all__ = ["grad_norms", "interpolate", "normalize", "penalty_from_grad", "status", "why_not"]


def _cache_dir() -> Path:
    """Where the JIT build goes: $FASTGP_CACHE_DIR, else $TORCH_EXTENSIONS_DIR/fastgp, else ~/.cache/fastgp."""
    base = os.environ.get("FASTGP_CACHE_DIR")
    if not base:
        torch_dir = os.environ.get("TORCH_EXTENSIONS_DIR")
        base = os.path.join(torch_dir, "fastgp") if torch_dir else os.path.join("~", ".cache", "fastgp")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-cu{torch.version.cuda}"
    return Path(base).expanduser() / tag.replace("+", "_")


def _aot_built() -> bool:
    try:
        return importlib.util.find_spec(_build.AOT_NAME) is not None
    except (ImportError, ValueError):
        return False


def _why_unavailable() -> str | None:
    """None if the extension can run in this process (built, or buildable now), else why not."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; the CUDA extension needs a CUDA build of torch"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if _aot_built() or _loaded():
        return None
    missing = []
    if _build.source_dir() is None:
        missing.append("its sources (csrc/)")
    if _build.nvcc_path() is None:
        missing.append("nvcc (set CUDA_HOME)")
    if shutil.which("ninja") is None:
        missing.append("ninja (pip install ninja)")
    if missing:
        return (
            "the extension was not built (pip install --no-build-isolation .) and cannot be JIT-compiled: "
            f"missing {', '.join(missing)}"
        )
    return None


def why_not(device: torch.device | None) -> str | None:
    """None if the CUDA backend runs on tensors of `device` (any device if None), else the reason."""
    if device is not None and device.type != "cuda":
        return f"the CUDA extension runs on CUDA tensors, not on {device.type} tensors"
    return _why_unavailable()


def status() -> tuple[bool, str]:
    """``(available, how)``: how says AOT (built by pip), JIT (compiles on first use) or why unavailable."""
    reason = _why_unavailable()
    if reason is not None:
        return False, f"unavailable: {reason}"
    if _loaded():
        return True, _load()
    if _aot_built():
        return True, f"AOT: built by pip install ({_build.AOT_NAME})"
    return True, f"JIT: will compile with ninja into {_cache_dir()} on first use (a minute or two, once)"


# How the extension was loaded, once it is. A plain global rather than functools.cache, so that the
# backend functions' `if _how is None` check is a guard torch.compile can trace (fullgraph=True too).
_how: str | None = None


def _loaded() -> bool:
    return _how is not None


def _load() -> str:
    """Loads the extension (AOT, else JIT), registers its fake and autograd formulas; returns how."""
    global _how
    if _how is not None:
        return _how
    reason = _why_unavailable()
    if reason is not None:
        raise RuntimeError(f"fastgp's CUDA extension is unavailable: {reason}")
    how = None
    if _aot_built():
        try:
            importlib.import_module(_build.AOT_NAME)
            how = f"AOT: built by pip install ({_build.AOT_NAME})"
        except ImportError as err:  # e.g. built against another torch: rebuild it just in time
            print(f"fastgp: the prebuilt CUDA extension does not load ({err}); compiling it instead", file=sys.stderr)
    if how is None:
        how = _jit_build()
    _register()
    _how = how
    return how


def _jit_build() -> str:
    _build.pin_cuda_home()
    from torch.utils import cpp_extension

    src = _build.source_dir()
    if src is None:
        raise RuntimeError("fastgp's CUDA sources (csrc/) are missing; reinstall fastgp")
    build_dir = _cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob(f"{_build.JIT_NAME}*.so")):
        print(
            f"fastgp: compiling the CUDA extension with ninja into {build_dir} (first use only, a minute or two)",
            file=sys.stderr,
            flush=True,
        )
    cpp_extension.load(
        name=_build.JIT_NAME,
        sources=[str(src / s) for s in _build.SOURCES],
        extra_cflags=_build.cxx_flags(torch.__version__),
        extra_cuda_cflags=_build.nvcc_flags(torch.__version__),
        extra_include_paths=_build.extra_include_dirs(),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=os.environ.get("FASTGP_VERBOSE_BUILD") == "1",
    )
    return f"JIT: compiled with ninja into {build_dir}"


# ---------------------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd formulas of the C++ ops. Shape logic only in the fakes.


def _acc(t: Tensor) -> torch.dtype:
    return reference.acc_dtype(t.dtype)


@functools.cache  # once per process: a second registration would be refused
def _register() -> None:
    ops = torch.ops.fastgp_cuda
    lib = "fastgp_cuda::"

    @torch.library.register_fake(lib + "interpolate")
    def _(real, fake, scale, points, seed):
        batch = real.shape[0]
        return torch.empty_like(real), real.new_empty(batch, dtype=_acc(real)), real.new_empty(2, dtype=torch.int64)

    @torch.library.register_fake(lib + "interpolate_bwd")
    def _(grad_out, alpha, rng_state, points):
        if points == "interpolate":
            return torch.empty_like(grad_out), torch.empty_like(grad_out)
        return grad_out.new_empty((), dtype=_acc(grad_out)), grad_out.new_empty(0, dtype=_acc(grad_out))

    @torch.library.register_fake(lib + "penalty_fwd")
    def _(grad, scores, norm, constraint, center, weight, reduction, output_weight, grad_scale=None):
        batch, acc = grad.shape[0], _acc(grad)
        return grad.new_empty((), dtype=acc), *(grad.new_empty(batch, dtype=acc) for _ in range(3))

    @torch.library.register_fake(lib + "penalty_bwd")
    def _(dp, dnorms, grad, scores, norms, coef, factor, norm, output_weight, grad_scale=None):
        return torch.empty_like(grad), (torch.empty_like(scores) if scores is not None else norms.new_empty(0))

    @torch.library.register_fake(lib + "normalize_fwd")
    def _(scores, grad, mode, norm):
        batch, acc = grad.shape[0], _acc(grad)
        return torch.empty_like(scores), grad.new_empty(batch, dtype=acc), grad.new_empty(batch, dtype=acc)

    @torch.library.register_fake(lib + "normalize_bwd")
    def _(dout, scores, grad, norms, factor, mode, norm):
        return torch.empty_like(scores), torch.empty_like(grad)

    torch.library.register_autograd(lib + "interpolate", _interpolate_backward, setup_context=_interpolate_setup)
    torch.library.register_autograd(lib + "penalty_fwd", _penalty_backward, setup_context=_penalty_setup)
    torch.library.register_autograd(lib + "normalize_fwd", _normalize_backward, setup_context=_normalize_setup)
    _EAGER.update(
        interpolate=_eager_function(ops.interpolate.default, _interpolate_setup, _interpolate_backward),
        penalty=_eager_function(ops.penalty_fwd.default, _penalty_setup, _penalty_backward),
        normalize=_eager_function(ops.normalize_fwd.default, _normalize_setup, _normalize_backward),
    )


# Eager calls go through these plain autograd Functions: the op's own formulas (below), with none of the
# per-call cost of the custom-op autograd wrapper; compiled graphs (torch.compile) use the registration.
_EAGER: dict[str, type[torch.autograd.Function]] = {}


def _eager_function(op: Callable, setup: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """An autograd Function that calls `op` once (below the Autograd key) with `setup` and `backward`."""

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            with torch._C._AutoDispatchBelowAutograd():
                output = op(*inputs)
            setup(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Fused.__name__ = Fused.__qualname__ = op.name().replace("fastgp_cuda::", "fastgp_cuda_")
    return Fused


def _fused(name: str, op: Callable) -> Callable:
    """The eager Function of op `name`, or the op itself while torch.compile traces."""
    return op if torch.compiler.is_compiling() else _EAGER[name].apply


# interpolate: ∂x̂/∂real = α, ∂x̂/∂fake = 1 - α; dragan: ∂x̂/∂real = I, ∂x̂/∂scale = α·u (u replayed
# from the saved Philox state), and autograd takes ∂/∂scale on through torch's std().
def _interpolate_setup(ctx, inputs, output):
    ctx.points = inputs[3]
    if ctx.points == "dragan":  # u is replayed by storage position in real's layout: read the gradient in it
        ctx.layout = torch.empty_like(inputs[0], device="meta")
    ctx.save_for_backward(output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _interpolate_backward(ctx, grad_x_hat, _grad_alpha, _grad_rng):
    alpha, rng_state = ctx.saved_tensors
    bwd = torch.ops.fastgp_cuda.interpolate_bwd.default
    if ctx.points == "dragan":
        grad_scale, _ = bwd(_layout.like(grad_x_hat, ctx.layout), alpha, rng_state, "dragan")
        return grad_x_hat, None, grad_scale, None, None
    if torch.is_grad_enabled():  # create_graph=True: stay differentiable
        a = alpha.view(-1, *([1] * (grad_x_hat.dim() - 1)))
        return (a * grad_x_hat).to(grad_x_hat.dtype), ((1 - a) * grad_x_hat).to(grad_x_hat.dtype), None, None, None
    grad_real, grad_fake = bwd(_layout.as_rows(grad_x_hat), alpha, rng_state, "interpolate")
    return grad_real, grad_fake, None, None, None


# ∂P/∂g_i = s·(λ/B)·h'(n_i)·∂n_i/∂g_i at s·g_i (or λ/k on the k maxima), ∂P/∂f_i = (2ε/B)·f_i: SPEC.md §3,
# with s = grad_scale (1 when None).
def _penalty_setup(ctx, inputs, output):
    grad, scores, norm, constraint, center, weight, reduction, output_weight, *grad_scale = inputs
    _, norms, coef, factor = output
    ctx.args = (norm, constraint, center, weight, reduction, output_weight)
    ctx.save_for_backward(grad, scores, norms, coef, factor, grad_scale[0] if grad_scale else None)
    ctx.mark_non_differentiable(coef, factor)


def _penalty_backward(ctx, dp, dnorms, _dcoef, _dfactor):
    grad, scores, norms, coef, factor, grad_scale = ctx.saved_tensors
    norm, constraint, center, weight, reduction, output_weight = ctx.args
    if torch.is_grad_enabled():  # create_graph=True: differentiate the reference formulas instead

        def fn(g, s):
            kw = dict(norm=norm, constraint=constraint, center=center, weight=weight, reduction=reduction)
            if grad_scale is not None:
                g = g.to(norms.dtype) * grad_scale.reshape(())
            return reference.penalty_from_grad(g, scores=s, output_weight=output_weight, **kw)

        return (*reference.vjp(fn, (grad, scores), (dp, dnorms)), *([None] * 7))
    if dp is None:
        dp = norms.new_zeros(())
    elif dp.dtype != norms.dtype:
        dp = dp.to(norms.dtype)
    if dnorms is not None and not dnorms.is_contiguous():
        dnorms = dnorms.contiguous()
    dgrad, dscores = torch.ops.fastgp_cuda.penalty_bwd.default(
        dp, dnorms, grad, scores, norms, coef, factor, norm, output_weight, grad_scale
    )
    return dgrad, (dscores if scores is not None else None), *([None] * 7)


# ∂f̂/∂f = s·n/q², ∂f̂/∂g = -(u/q²)·∂n/∂g: SPEC.md §4.
def _normalize_setup(ctx, inputs, output):
    scores, grad, mode, norm = inputs
    ctx.args = (mode, norm)
    ctx.save_for_backward(scores, grad, output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _normalize_backward(ctx, dout, _dnorms, _dfactor):
    scores, grad, norms, factor = ctx.saved_tensors
    mode, norm = ctx.args
    if torch.is_grad_enabled():

        def fn(s, g):
            return reference.normalize(s, g, mode, norm)

        return (*reference.vjp(fn, (scores, grad), (dout,)), None, None)
    dscores, dgrad = torch.ops.fastgp_cuda.normalize_bwd.default(
        dout.contiguous(), scores, grad, norms, factor, mode, norm
    )
    return dscores, dgrad, None, None


# ---------------------------------------------------------------------------------------------------------
# The backend functions (fastgp.reference's signatures). Arguments arrive validated by fastgp.api.


def _rows(t: Tensor) -> Tensor:
    """`t` read as rows (`fastgp._layout`), with the common contiguous case first."""
    return t if t.is_contiguous() else _layout.as_rows(t)


def _seed(seed: int | None) -> int | None:
    """A Python seed as the int64 the op schema carries (two's complement of the 64-bit value)."""
    if seed is None:
        return None
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def interpolate(
    real: Tensor | None, fake: Tensor | None, points: str = "interpolate", seed: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The points where the penalty is evaluated (SPEC.md §2); returns `(x_hat, alpha)`.

    interpolate: ``x̂_i = α_i x_i + (1-α_i) y_i`` (WGAN-GP, Gulrajani et al. 2017); dragan:
    ``x̂_i = x_i + α_i · 0.5 · std(x) · u_i`` (Kodali et al. 2017); real/fake: the batch itself.
    ``α_i``, ``u_ij ~ U[0,1)`` come from Philox keyed by `seed` (offset 0), or by the seed and offset of
    PyTorch's CUDA generator when `seed` is None (torch.manual_seed reproduces a run; each CUDA-graph
    replay draws fresh numbers). One kernel; α is float32 (float64 for float64).
    """
    if points == "real":
        return real, None
    if points == "fake":
        return fake, None
    if _how is None:
        _load()
    assert real is not None
    x = _rows(real)
    op = _fused("interpolate", torch.ops.fastgp_cuda.interpolate.default)
    if points == "interpolate":
        assert fake is not None
        y = _layout.like(fake, x)
        x_hat, alpha, _ = op(x, y, None, "interpolate", _seed(seed))
    else:
        # std over the whole real batch, unbiased (DRAGAN's reference code); autograd differentiates it.
        scale = 0.5 * real.to(_acc(real)).std()
        x_hat, alpha, _ = op(x, None, scale, "dragan", _seed(seed))
    return x_hat, alpha


def penalty_from_grad(
    grad: Tensor,
    *,
    norm: str = "l2",
    constraint: str = "ls",
    center: float = 1.0,
    weight: float = 10.0,
    reduction: str = "mean",
    scores: Tensor | None = None,
    output_weight: float = 0.0,
    grad_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``P = λ · R_i h(n_i) + ε · mean_i f_i²`` (SPEC.md §3) in one kernel; returns `(P, norms)`.

    Per-chunk partial norms are combined in a fixed order by the last block (deterministic); L∞ keeps
    the count of tied maxima so that ties share the gradient. The backward is one kernel too.
    `grad_scale`, a one-element float32 tensor on grad's device (AMP: ``1 / scaler.get_scale()`` kept as a
    tensor), makes it ``P(grad_scale · grad)`` with the factor in the gradient, read in-kernel (no host sync,
    no extra pass over grad).
    """
    f = None
    if output_weight != 0.0 and scores is not None:
        f = reference.score_sums(scores, grad.dtype).to(_acc(grad)).contiguous()  # f_i, the kernel's dtype
    if _how is None:
        _load()
    op = _fused("penalty", torch.ops.fastgp_cuda.penalty_fwd.default)
    penalty, norms, _, _ = op(
        _rows(grad), f, norm, constraint, float(center), float(weight), reduction, float(output_weight), grad_scale
    )
    return penalty, norms


def normalize(scores: Tensor, grad: Tensor, mode: str = "gn", norm: str = "l2") -> Tensor:
    """GN ``f̂ = f / (‖g‖ + |f|)`` (Wu et al. 2021) and PGN ``f̂ = (1-f) / (‖1-g‖ + |1-f|)`` (Xia), fused.

    ``f̂ = 0`` with zero gradients where the denominator is 0; NaN stays NaN (SPEC.md §4). Returns the
    shape and dtype of `scores`.
    """
    acc = reference.acc_dtype(scores.dtype, grad.dtype)
    g = grad.to(acc) if acc == torch.float64 else grad
    # The op reads one score per sample in storage order, whatever the shape ((B,) or (B, 1)), and returns
    # f̂ in that shape: no reshape (and no autograd node) in the common float32 case.
    f = scores if scores.dtype == acc and scores.is_contiguous() else scores.to(acc).contiguous()
    if _how is None:
        _load()
    out, _, _ = _fused("normalize", torch.ops.fastgp_cuda.normalize_fwd.default)(f, _rows(g), mode, norm)
    return out if out.dtype == scores.dtype else out.to(scores.dtype)
