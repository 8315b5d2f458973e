"""The compiled CUDA backend (fastgp._cuda, csrc/) against fastgp.reference, the oracle.

Without a GPU: the compile check of csrc/ (when nvcc is present), backend selection and its messages, and
setup.py's decision to build or not. With one: every op against the reference for every norm × constraint
× reduction × mode and dtype on awkward shapes, SPEC.md's corner cases, opcheck, CUDA-graph replay and
torch.manual_seed reproducibility.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgp import _build, _cuda, _layout, reference

# `fastgp.backends` is also the name of a public function, which shadows the module as an attribute.
backends = importlib.import_module("fastgp.backends")

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


# --------------------------------------------------------------------------------------------------------
# Without a GPU


def _run_compile_check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CSRC / "compile_check.sh")],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


needs_nvcc = pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc on PATH")


@needs_nvcc
def test_compile_check_standalone_one_arch():
    done = _run_compile_check(FASTGP_CHECK_MODE="standalone", FASTGP_CHECK_ARCHS="90")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compile_check: passed" in done.stdout


@needs_nvcc
@pytest.mark.slow
def test_compile_check_full():
    """sm_80 and sm_90, against torch's headers when this Python's torch has CUDA (about a minute or more)."""
    done = _run_compile_check()
    assert done.returncode == 0, done.stdout + done.stderr


def test_kernel_rules_on_the_host(tmp_path):
    """csrc/kernels/rules.cuh compiled for the CPU: a NaN norm has a NaN slope under every constraint (so a
    NaN row's gradient is all NaN, hinge included), and linf tie counts add up past 2^31."""
    cxx, home = shutil.which(os.environ.get("CXX", "g++")), _build.cuda_home()
    if cxx is None or home is None:
        pytest.skip("needs a C++ compiler and the CUDA headers")
    exe = tmp_path / "rules_check"
    compile_cmd = [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(Path(home) / "include")]
    subprocess.run([*compile_cmd, str(CSRC / "tests" / "rules_check.cpp"), "-o", str(exe)], check=True, timeout=300)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "rules_check: ok", done.stdout


def test_backends_reports_cuda_and_why_not():
    status = backends.backends()["cuda"]
    if not torch.cuda.is_available():
        assert not status.available
        assert "CPU-only" in status.detail or "no CUDA device" in status.detail
    assert status.detail


def test_cuda_backend_on_cpu_tensors_raises_with_the_reason():
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run here: .*CUDA tensors, not on cpu"):
        backends.select("cuda", torch.device("cpu"))


def test_cuda_backend_through_the_public_api_on_cpu_raises():
    if importlib.util.find_spec("fastgp.api") is None:
        pytest.skip("fastgp.api is not on this branch")
    import fastgp

    grad = torch.randn(4, 3)
    with pytest.raises(ValueError, match="cuda"):
        fastgp.penalty_from_grad(grad, backend="cuda")


@pytest.fixture
def fake_cuda_torch(monkeypatch):
    """Pretend this torch has CUDA and a device; the tests then steer what is installed."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_cuda, "_loaded", lambda: False)
    monkeypatch.setattr(_cuda, "_aot_built", lambda: False)
    return monkeypatch


def test_status_cpu_only_torch(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    available, how = _cuda.status()
    assert not available and how.startswith("unavailable:") and "CPU-only" in how


def test_status_no_device(fake_cuda_torch):
    fake_cuda_torch.setattr(torch.cuda, "is_available", lambda: False)
    assert _cuda.status() == (False, "unavailable: torch sees no CUDA device")


def test_status_aot(fake_cuda_torch):
    fake_cuda_torch.setattr(_cuda, "_aot_built", lambda: True)
    available, how = _cuda.status()
    assert available and how.startswith("AOT:")


def test_status_jit(fake_cuda_torch, tmp_path):
    fake_cuda_torch.setattr(_build, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    fake_cuda_torch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    fake_cuda_torch.setenv("FASTGP_CACHE_DIR", str(tmp_path))
    available, how = _cuda.status()
    assert available and how.startswith("JIT: will compile with ninja into " + str(tmp_path))


def test_status_cannot_jit(fake_cuda_torch):
    fake_cuda_torch.setattr(_build, "nvcc_path", lambda: None)
    fake_cuda_torch.setattr(shutil, "which", lambda name: None)
    available, how = _cuda.status()
    assert not available
    assert "not built (pip install --no-build-isolation .)" in how and "nvcc" in how and "ninja" in how
    assert _cuda.why_not(torch.device("cuda")) == how.removeprefix("unavailable: ")
    assert "not on cpu" in _cuda.why_not(torch.device("cpu"))


def test_sources_are_found_and_shipped():
    assert _build.source_dir() == CSRC
    for name in _build.SOURCES:
        assert (CSRC / name).is_file(), name
    setup = _load_setup()
    shipped = {p for pattern in setup.CSRC_PATTERNS for p in CSRC.glob(pattern)}
    needed = {p for p in CSRC.rglob("*") if p.suffix in {".cpp", ".cu", ".h", ".cuh"} and "tests" not in p.parts}
    assert needed <= shipped, sorted(map(str, needed - shipped))


def _load_setup():
    spec = importlib.util.spec_from_file_location("fastgp_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only under __main__
    return module


def test_setup_decides_not_to_build_without_cuda(monkeypatch):
    setup = _load_setup()
    assert setup.cuda_build_decision({"FASTGP_SKIP_CUDA_BUILD": "1"}) == (False, "FASTGP_SKIP_CUDA_BUILD=1")
    monkeypatch.setattr(torch.version, "cuda", None)
    build, why = setup.cuda_build_decision({})
    assert not build and "CPU-only" in why
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(setup._build, "nvcc_path", lambda: None)
    build, why = setup.cuda_build_decision({})
    assert not build and "nvcc" in why
    monkeypatch.setattr(setup._build, "nvcc_path", lambda: "/usr/local/cuda/bin/nvcc")
    assert setup.cuda_build_decision({})[0]
    assert setup.cuda_build_decision({"FASTGP_SKIP_CUDA_BUILD": "1"})[0] is False


def test_setup_without_cuda_builds_no_extension(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    kwargs = _load_setup()._extension_kwargs()
    assert "ext_modules" not in kwargs and "build_py" in kwargs["cmdclass"]


def test_layouts_are_read_in_place_and_size_one_strides_ignored():
    x = torch.randn(4, 3, 5, 6)
    assert _layout.as_rows(x) is x
    cl = x.to(memory_format=torch.channels_last)
    assert _layout.as_rows(cl) is cl
    assert _layout.as_rows(x.transpose(0, 1)).is_contiguous()
    # (B, 1, H, W) from a DataLoader and from a channels_last generator: the same layout.
    real = torch.randn(2, 1, 4, 4)
    fake = torch.randn(2, 1, 4, 4).to(memory_format=torch.channels_last)
    assert real.stride() != fake.stride() and _layout.like(fake, real) is fake
    assert _layout.like(cl, x).is_contiguous() and torch.equal(_layout.like(cl, x), cl)


def test_seed_as_int64():
    assert _cuda._seed(None) is None
    assert _cuda._seed(5) == 5
    assert _cuda._seed(2**64 - 1) == -1
    assert _cuda._seed(2**63) == -(2**63)


def test_cxx_standard_follows_torch():
    assert _build.cxx_std("2.14.1+cu130") == "-std=c++20"
    assert _build.cxx_std("2.13.0+cpu") == "-std=c++17"


def _aot_extension_importable() -> bool:
    return torch.version.cuda is not None and importlib.util.find_spec(_build.AOT_NAME) is not None


@pytest.mark.skipif(not _aot_extension_importable(), reason="needs a CUDA torch and the built extension (fastgp._C)")
def test_python_glue_on_meta_tensors(monkeypatch):
    """Schemas, fake impls and autograd formulas, run on meta tensors: needs the built .so, not a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _cuda._load()
    for dtype in (torch.float16, torch.float32, torch.float64):
        acc = reference.acc_dtype(dtype)
        g = torch.empty(4, 3, 8, 8, device="meta", dtype=dtype, requires_grad=True)
        s = torch.empty(4, 2, device="meta", dtype=dtype, requires_grad=True)
        penalty, norms = _cuda.penalty_from_grad(g, scores=s, output_weight=0.1, norm="linf", reduction="max")
        assert penalty.shape == () and penalty.dtype == acc and norms.shape == (4,) and norms.dtype == acc
        (penalty + norms.sum()).backward()
        assert g.grad.shape == g.shape and g.grad.dtype == dtype and s.grad.dtype == dtype
        f = torch.empty(4, 1, device="meta", requires_grad=True)
        g.grad = None
        out = _cuda.normalize(f, g, "pgn", "l1")
        out.sum().backward()
        assert out.shape == f.shape and out.dtype == f.dtype and g.grad.dtype == dtype
        real = torch.empty(4, 3, 8, 8, device="meta", dtype=dtype, requires_grad=True)
        fake = torch.empty_like(real, requires_grad=True)
        for points in ("interpolate", "dragan"):
            x_hat, alpha = _cuda.interpolate(real, fake if points == "interpolate" else None, points, None)
            assert x_hat.dtype == dtype and alpha.shape == (4,) and alpha.dtype == acc
            x_hat.sum().backward()
            assert real.grad.dtype == dtype
        # create_graph=True: the backward falls back to the reference formulas and stays differentiable.
        (gg,) = torch.autograd.grad(_cuda.penalty_from_grad(g)[0], g, create_graph=True)
        assert gg.requires_grad
        inv_scale = torch.empty(1, device="meta")
        (gg,) = torch.autograd.grad(_cuda.penalty_from_grad(g, grad_scale=inv_scale)[0], g)
        assert gg.shape == g.shape and gg.dtype == dtype
    # opcheck on meta tensors: schema, fake impls, autograd registration and AOT dispatch, without a GPU.
    ops = torch.ops.fastgp_cuda
    grad = torch.randn(3, 5, 7, device="meta", requires_grad=True)
    scores = torch.randn(3, device="meta", requires_grad=True)
    scale = torch.tensor(0.3, device="meta", requires_grad=True)
    for op, args in [
        (ops.penalty_fwd, (grad, scores, "linf", "ls", 1.0, 10.0, "mean", 0.1)),
        (ops.penalty_fwd, (grad, None, "l2", "hinge", 1.0, 10.0, "max", 0.0)),
        (ops.penalty_fwd, (grad, None, "l1", "ls", 1.0, 10.0, "mean", 0.0, torch.ones(1, device="meta"))),
        (ops.normalize_fwd, (scores, grad, "pgn", "l1")),
        (ops.interpolate, (grad, torch.randn_like(grad, requires_grad=True), None, "interpolate", 5)),
        (ops.interpolate, (grad, None, scale, "dragan", 5)),
    ]:
        torch.library.opcheck(op.default, args)


# --------------------------------------------------------------------------------------------------------
# With a GPU

gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def ext():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    available, how = _cuda.status()
    if not available:
        pytest.fail(f"a CUDA device is present but the extension is not: {how}")
    _cuda._load()
    return torch.ops.fastgp_cuda


DTYPES = [  # (dtype, atol, rtol) for values and gradients against the fp32/fp64 reference
    (torch.float64, 1e-12, 1e-10),
    (torch.float32, 1e-5, 1e-5),
    (torch.float16, 2e-3, 1e-2),
    (torch.bfloat16, 1e-2, 2e-2),
]
SHAPES = [(1, 1), (3, 7, 256), (5, 1023), (2, 3, 33, 33), (2, 70001)]  # the last spans several blocks per row


def _close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(
        actual, expected, atol=atol, rtol=rtol, equal_nan=True, check_dtype=True, msg=lambda m: f"{what}: {m}"
    )


def _penalty_both(grad, scores, **kw):
    """(P, norms, dP/dgrad, dP/dscores) from the CUDA backend and from the reference."""
    out = []
    for backend in (_cuda, reference):
        g = grad.detach().clone().requires_grad_()
        s = None if scores is None else scores.detach().clone().requires_grad_()
        penalty, norms = backend.penalty_from_grad(g, scores=s, **kw)
        penalty.backward()
        out.append((penalty.detach(), norms.detach(), g.grad, None if s is None else s.grad))
    return out


@gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", reference.NORMS)
@pytest.mark.parametrize("constraint", reference.CONSTRAINTS)
@pytest.mark.parametrize("reduction", reference.REDUCTIONS)
def test_penalty_matches_reference(ext, dtype, atol, rtol, shape, norm, constraint, reduction):
    torch.manual_seed(0)
    grad = (torch.randn(shape, device="cuda") * 0.05).to(dtype)
    scores = torch.randn(shape[0], 2, device="cuda", dtype=reference.acc_dtype(dtype))
    kw = dict(norm=norm, constraint=constraint, center=0.7, weight=3.0, reduction=reduction, output_weight=0.1)
    (p, n, gg, gs), (rp, rn, rgg, rgs) = _penalty_both(grad, scores, **kw)
    _close(p, rp, atol, rtol, "penalty")
    _close(n, rn, atol, rtol, "norms")
    _close(gg, rgg, atol, rtol, "d/dgrad")
    _close(gs, rgs, atol, rtol, "d/dscores")


@gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("norm", reference.NORMS)
@pytest.mark.parametrize("mode", reference.MODES)
def test_normalize_matches_reference(ext, dtype, atol, rtol, shape, norm, mode):
    torch.manual_seed(0)
    grad = (torch.randn(shape, device="cuda") * 0.05).to(dtype)
    scores = torch.randn(shape[0], 1, device="cuda", dtype=dtype)
    outs = []
    for backend in (_cuda, reference):
        g, s = grad.clone().requires_grad_(), scores.clone().requires_grad_()
        out = backend.normalize(s, g, mode, norm)
        out.backward(torch.linspace(-1, 2, out.numel(), device="cuda").view_as(out).to(out.dtype))
        outs.append((out.detach(), s.grad, g.grad))
    for a, e, what in zip(outs[0], outs[1], ("f̂", "d/dscores", "d/dgrad"), strict=True):
        _close(a, e, atol, rtol, what)


@gpu
def test_penalty_corner_cases(ext):
    """n = 0 → zero gradient; hinge at n = c → 0; linf ties share; max-reduction ties share; NaN propagates."""
    g = torch.zeros(6, 4, device="cuda", dtype=torch.float64)
    g[1] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # n = c = 1 for every norm
    g[2] = torch.tensor([2.0, -2.0, 1.0, 2.0])  # linf: three tied maxima
    g[3] = g[2]  # max reduction: two tied samples
    g[4] = torch.tensor([0.5, 0.1, 0.2, 0.3])
    g[5] = torch.tensor([0.3, 0.1, 0.1, 0.1])
    for norm in reference.NORMS:
        for constraint in reference.CONSTRAINTS:
            for reduction in reference.REDUCTIONS:
                kw = dict(norm=norm, constraint=constraint, center=1.0, weight=2.0, reduction=reduction)
                (p, n, gg, _), (rp, rn, rgg, _) = _penalty_both(g, None, **kw)
                what = f"{norm}/{constraint}/{reduction}"
                _close(p, rp, 1e-12, 1e-10, what)
                _close(n, rn, 1e-12, 1e-10, what)
                _close(gg, rgg, 1e-12, 1e-10, what)
                assert torch.all(gg[0] == 0), what
    nan = g.clone()
    nan[4, 2] = float("nan")
    p, norms = _cuda.penalty_from_grad(nan.float())
    assert torch.isnan(p) and torch.isnan(norms[4]) and not torch.isnan(norms[5])


@gpu
@pytest.mark.parametrize("norm", reference.NORMS)
@pytest.mark.parametrize("constraint", reference.CONSTRAINTS)
@pytest.mark.parametrize("reduction", reference.REDUCTIONS)
def test_nan_row_has_an_all_nan_gradient(ext, norm, constraint, reduction):
    """SPEC.md §3, NaN in, NaN out: the hinge's slope of a NaN norm is NaN, not 1 (nor 0 off the linf maxima)."""
    grad = torch.tensor([[0.5, float("nan"), 2.0], [3.0, 1.0, 0.0]], device="cuda", requires_grad=True)
    penalty, _ = _cuda.penalty_from_grad(grad, norm=norm, constraint=constraint, reduction=reduction)
    penalty.backward()
    assert torch.isnan(penalty)
    assert torch.isnan(grad.grad[0]).all(), grad.grad
    if reduction == "mean":
        assert not torch.isnan(grad.grad[1]).any(), grad.grad


@gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("norm", reference.NORMS)
def test_grad_scale_is_the_penalty_of_the_unscaled_gradient(ext, dtype, atol, rtol, norm):
    """AMP: P(s·g) with ∂/∂g = s·P'(s·g), s read from a device tensor, against the reference formula."""
    torch.manual_seed(0)
    acc = reference.acc_dtype(dtype)
    scaled = (torch.randn(4, 3, 17, 19, device="cuda") * 0.05 * 1024).to(dtype)  # as a GradScaler leaves it
    inv_scale = torch.full((1,), 1 / 1024, device="cuda")
    kw = dict(norm=norm, constraint="ls", center=0.7, weight=3.0)
    g = scaled.clone().requires_grad_()
    penalty, norms = _cuda.penalty_from_grad(g, grad_scale=inv_scale, **kw)
    penalty.backward()
    r = scaled.clone().requires_grad_()
    ref_penalty, ref_norms = reference.penalty_from_grad(r.to(acc) * inv_scale.to(acc).reshape(()), **kw)
    ref_penalty.backward()
    _close(penalty, ref_penalty, atol, rtol, "penalty")
    _close(norms, ref_norms, atol, rtol, "norms")
    _close(g.grad, r.grad, atol, rtol, "d/dgrad")


@gpu
def test_penalty_fp16_large_gradients_do_not_overflow(ext):
    grad = (torch.randn(8, 4096, device="cuda") * 1e3).half()
    penalty, norms = _cuda.penalty_from_grad(grad)
    ref_penalty, ref_norms = reference.penalty_from_grad(grad)
    assert torch.isfinite(penalty) and torch.isfinite(norms).all()
    _close(norms, ref_norms, 1e-2, 1e-4, "norms")
    _close(penalty, ref_penalty, 1e-2, 1e-4, "penalty")


@gpu
def test_normalize_empty_denominator_and_nan(ext):
    scores = torch.tensor([0.0, 1.0, float("nan"), 0.5], device="cuda", requires_grad=True)
    grad = torch.zeros(4, 3, device="cuda")
    grad[1] = 1.0  # pgn: 1 - g = 0 and 1 - f = 0
    grad.requires_grad_()
    gn = _cuda.normalize(scores, grad, "gn")
    assert gn[0] == 0 and torch.isnan(gn[2]) and gn[3] == 1
    pgn = _cuda.normalize(scores, grad, "pgn")
    assert pgn[1] == 0
    # Row 0 (gn, q = 0), row 1 (pgn, q = 0) and row 3 (gn, n = 0): no gradient anywhere.
    (gn[[0, 3]].sum() + pgn[1]).backward()
    rows = [0, 1, 3]
    assert torch.all(scores.grad[rows] == 0) and torch.all(grad.grad[rows] == 0)


@gpu
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7, 256), (4, 3, 33, 33), (2, 70001)])
def test_interpolate_matches_formula_with_its_alpha(ext, dtype, atol, rtol, shape):
    real = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    fake = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
    x_hat, alpha = _cuda.interpolate(real, fake, "interpolate", seed=123)
    acc = reference.acc_dtype(dtype)
    assert alpha.dtype == acc and alpha.shape == (shape[0],)
    assert torch.all((alpha >= 0) & (alpha < 1))
    a = alpha.view(-1, *([1] * (len(shape) - 1)))
    _close(x_hat, (a * real.to(acc) + (1 - a) * fake.to(acc)).to(dtype), atol, rtol, "x̂")
    go = torch.randn_like(x_hat)
    x_hat.backward(go)
    _close(real.grad, (a * go.to(acc)).to(dtype), atol, rtol, "d/dreal")
    _close(fake.grad, ((1 - a) * go.to(acc)).to(dtype), atol, rtol, "d/dfake")
    again, alpha2 = _cuda.interpolate(real, fake, "interpolate", seed=123)
    assert torch.equal(alpha, alpha2) and torch.equal(x_hat, again)
    assert not torch.equal(alpha, _cuda.interpolate(real, fake, "interpolate", seed=124)[1])


@gpu
@pytest.mark.parametrize("shape", [(5, 3), (3, 7, 257), (2, 70001)])
def test_dragan_matches_formula_and_gradient(ext, shape):
    real = torch.randn(shape, device="cuda", dtype=torch.float64, requires_grad=True)
    x_hat, alpha = _cuda.interpolate(real, None, "dragan", seed=7)
    a = alpha.view(-1, *([1] * (len(shape) - 1)))
    scale = 0.5 * real.detach().std()
    u = (x_hat.detach() - real.detach()) / (a * scale)  # recovers the noise the kernel drew
    assert torch.all((u > -1e-9) & (u < 1 + 1e-9))
    go = torch.randn_like(x_hat)
    x_hat.backward(go)
    r = real.detach().clone().requires_grad_()
    (r + a * (0.5 * r.std() * u)).backward(go)
    _close(real.grad, r.grad, 1e-9, 1e-7, "d/dreal through std")


@gpu
def test_channels_last_is_processed_in_place(ext):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9, 9, device="cuda")
    cl = x.to(memory_format=torch.channels_last).requires_grad_()
    p_cl, n_cl = _cuda.penalty_from_grad(cl, norm="linf", constraint="hinge", center=0.5)
    p, n = _cuda.penalty_from_grad(x, norm="linf", constraint="hinge", center=0.5)
    _close(p_cl, p, 1e-6, 1e-6, "penalty")
    _close(n_cl, n, 0, 0, "norms")
    p_cl.backward()
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)
    y = torch.randn_like(x).to(memory_format=torch.channels_last)
    x_hat, _ = _cuda.interpolate(cl.detach(), y, seed=3)
    assert x_hat.is_contiguous(memory_format=torch.channels_last)


def _offset_view(shape, dtype, offset):
    """A dense tensor whose data starts `offset` elements into its storage: 16-byte alignment broken."""
    numel = torch.Size(shape).numel()
    return torch.randn(numel + offset, device="cuda").to(dtype)[offset:].view(shape)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_misaligned_storage_matches_aligned(ext, dtype):
    """Rows off a 16-byte boundary (scalar head), and inputs misaligned with each other (scalar path)."""
    shape = (3, 4099)
    for offset in (1, 3):
        grad = _offset_view(shape, dtype, offset)
        assert grad.data_ptr() % 16 != 0
        aligned = grad.clone()
        for norm in reference.NORMS:
            (p, n, gg, _), (rp, rn, rgg, _) = _penalty_both(grad, None, norm=norm, center=0.5)
            _close(n, rn, 1e-2, 2e-2, f"norms {norm}")
            if norm == "linf":  # a maximum does not depend on the order the elements were visited in
                assert torch.equal(n, _cuda.penalty_from_grad(aligned, norm=norm, center=0.5)[1])
            _close(p, rp, 1e-2, 2e-2, f"penalty {norm}")
            _close(gg, rgg, 1e-2, 2e-2, f"d/dgrad {norm}")
        fake = torch.randn(shape, device="cuda").to(dtype)  # aligned while real is not
        for real in (grad, aligned):
            x_hat, alpha = _cuda.interpolate(real, fake, "interpolate", seed=9)
            a = alpha.view(-1, 1)
            acc = reference.acc_dtype(dtype)
            _close(x_hat, (a * real.to(acc) + (1 - a) * fake.to(acc)).to(dtype), 1e-2, 2e-2, "x̂")
        # DRAGAN's noise depends on (seed, row, element) only, never on which path drew it.
        x_mis, _ = _cuda.interpolate(grad, None, "dragan", seed=4)
        x_al, _ = _cuda.interpolate(aligned, None, "dragan", seed=4)
        assert torch.equal(x_mis, x_al)


@gpu
def test_manual_seed_reproduces_alpha(ext):
    real, fake = torch.randn(64, 10, device="cuda"), torch.randn(64, 10, device="cuda")
    torch.manual_seed(1234)
    a1 = _cuda.interpolate(real, fake)[1]
    a2 = _cuda.interpolate(real, fake)[1]
    torch.manual_seed(1234)
    assert torch.equal(_cuda.interpolate(real, fake)[1], a1)
    assert not torch.equal(a1, a2)


@gpu
def test_cuda_graph_replay_draws_fresh_alpha(ext):
    real, fake = torch.randn(64, 10, device="cuda"), torch.randn(64, 10, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _cuda.interpolate(real, fake)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, alpha = _cuda.interpolate(real, fake)
    graph.replay()
    first = alpha.clone()
    graph.replay()
    assert not torch.equal(first, alpha)


@gpu
def test_opcheck(ext):
    opcheck = torch.library.opcheck
    for dtype in (torch.float32, torch.float64, torch.float16):
        acc = reference.acc_dtype(dtype)
        grad = torch.randn(3, 5, 7, device="cuda", dtype=dtype, requires_grad=True)
        scores = torch.randn(3, device="cuda", dtype=acc, requires_grad=True)  # one f_i per sample
        for norm in reference.NORMS:
            opcheck(ext.penalty_fwd.default, (grad, scores, norm, "ls", 1.0, 10.0, "mean", 0.1))
            opcheck(ext.penalty_fwd.default, (grad, None, norm, "hinge", 1.0, 10.0, "max", 0.0))
            for mode in reference.MODES:
                opcheck(ext.normalize_fwd.default, (scores, grad, mode, norm))
        real = torch.randn(3, 5, 7, device="cuda", dtype=dtype, requires_grad=True)
        fake = torch.randn(3, 5, 7, device="cuda", dtype=dtype, requires_grad=True)
        scale = (0.5 * real.detach().to(acc).std()).requires_grad_()
        opcheck(ext.interpolate.default, (real, fake, None, "interpolate", 5))
        opcheck(ext.interpolate.default, (real, None, scale, "dragan", 5))
