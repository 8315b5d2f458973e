"""The host side of the Triton backend: cached launches, the ways into each op (recorded by autograd or
not, compiled), and the random streams of the interpolation kernel, pinned against Philox written out
in Python.

Like test_triton_ops.py, runs on CUDA tensors with a GPU and through the interpreter without one.
"""

import os
import sys

import pytest
import torch

pytest.importorskip("triton")

import compiled_script

from fastgp import ops
from fastgp.ops import _common, _launch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
interpolate_module = sys.modules["fastgp.ops.interpolate"]  # `ops.interpolate` is the function


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(_common, "BLOCK_SIZE", 16)
    monkeypatch.setattr(_common, "TILES_PER_CHUNK", 2)


# ---------------------------------------------------------------------------------------------
# Launches


@pytest.mark.skipif(not _launch.CACHED, reason="cached launches need triton >= 3.3")
def test_host_only_launches_use_the_kernel_triton_would():
    """Every op forward and backward on host-only sm_90 launches; see triton_host_launch.py."""
    out = compiled_script.run("triton_host_launch.py", timeout=1200)
    assert "FAIL" not in out and out.count("ok ") >= 5, out[-2000:]


def test_interpreted_kernels_launch_through_triton():
    launcher = interpolate_module._FWD
    assert launcher.cached == (_launch.CACHED and os.environ.get("TRITON_INTERPRET") != "1")


def test_a_kind_of_launch_has_one_meta():
    launcher = interpolate_module._FWD
    kw = {"DRAGAN": False, "SEED_FROM_PTR": False, "BLOCK_SIZE": 16, "TILES": 1, "ACC": None, "num_warps": 4}
    meta = launcher.meta(**kw)
    assert launcher.meta(**dict(reversed(kw.items()))) is meta  # the order of the keywords does not matter
    assert launcher.meta(**{**kw, "TILES": 2}) is not meta
    assert meta.kwargs == kw
    if launcher.cached:  # the compiled kernel's constexprs, in parameter order
        assert meta.constexprs == tuple(kw[p.name] for p in launcher.kernel.params if p.is_constexpr)


def test_int_types_follow_triton():
    assert [_launch._int_type(x) for x in (0, -(2**31), 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63)] == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
    ]


# ---------------------------------------------------------------------------------------------
# Eager calls: an autograd.Function; torch.compile: the registered custom ops.


def _grad_fn_names(out: torch.Tensor) -> set[str]:
    names, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in names:
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    return names


def test_eager_calls_skip_the_custom_ops():
    g = torch.randn(3, 8, device=DEVICE, requires_grad=True)
    s = torch.randn(3, device=DEVICE, requires_grad=True)
    x_hat, _ = ops.interpolate(g, s[:, None].expand(3, 8))
    p, _ = ops.penalty_from_grad(x_hat)
    names = _grad_fn_names(p + ops.normalize(s, g).sum())
    assert {"_InterpolateBackward", "_PenaltyBackward", "_NormalizeBackward"} <= names, names
    assert not any("fastgp" in n for n in names), names


def test_calls_autograd_does_not_record_run_the_launchers_alone():
    g = torch.randn(3, 8, device=DEVICE)
    s = torch.randn(3, device=DEVICE)
    leaf = g.clone().requires_grad_()
    with torch.no_grad():
        recorded_off = ops.penalty_from_grad(leaf)
    outputs = [*ops.penalty_from_grad(g), *recorded_off, ops.normalize(s, g), *ops.interpolate(g, g.flip(0), seed=3)]
    assert all(t.grad_fn is None and not t.requires_grad for t in outputs)
    torch.testing.assert_close(recorded_off, ops.penalty_from_grad(leaf))


def test_compiled_head_traces_the_custom_ops_and_draws_fresh_alpha():
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def head(real, fake):
        x_hat, alpha = ops.interpolate(real, fake)
        return ops.penalty_from_grad(x_hat)[0], alpha

    real = torch.randn(4, 6, device=DEVICE)
    fake = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    compiled = torch.compile(head, fullgraph=True, backend=backend)
    p, a1 = compiled(real, fake)
    (dfake,) = torch.autograd.grad(p, fake)
    assert "fastgp.interpolate.default" in seen and "fastgp.penalty_fwd.default" in seen, seen
    _, a2 = compiled(real, fake)
    assert not torch.equal(a1, a2), "each call of the compiled head draws fresh alpha"
    # Replaying the α it drew through the eager ops gives the same penalty and gradient.
    x_hat = a1[:, None] * real + (1 - a1[:, None]) * fake
    want = ops.penalty_from_grad(x_hat)[0]
    torch.testing.assert_close(p, want)
    torch.testing.assert_close(dfake, torch.autograd.grad(want, fake)[0])


# ---------------------------------------------------------------------------------------------
# Random streams (interpolate.py's docstring): Philox-4x32-10 keyed by the 64-bit seed, α_i the
# first word of counter (base, i), u_ij word j mod 4 of counter (base + 1, j div 4, i).

M32 = 0xFFFFFFFF


def philox(seed: int, c0: int, c1: int, c2: int, c3: int) -> tuple[int, int, int, int]:
    """Philox-4x32-10 (Salmon et al. 2011), as Triton's `tl.philox` computes it."""
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(10):
        p0, p2 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p2 >> 32) ^ c1 ^ k0, p2 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def uniform(words: list[int]) -> torch.Tensor:
    """Triton's `uint_to_uniform_float`: the word as int32, folded to x ≥ 0, times 2^-31 in float32."""
    x = torch.tensor([w - 2**32 if w >= 2**31 else w for w in words], dtype=torch.int64)
    x = torch.where(x < 0, -x - 1, x).to(torch.float32)
    return x * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def expected_alpha(seed: int, base: int, batch: int) -> torch.Tensor:
    return uniform([philox(seed, base & M32, base >> 32, i & M32, i >> 32)[0] for i in range(batch)])


def expected_u(seed: int, base: int, batch: int, d: int) -> torch.Tensor:
    base += 1
    words = [philox(seed, base & M32, base >> 32, j // 4, i)[j % 4] for i in range(batch) for j in range(d)]
    return uniform(words).view(batch, d)


@pytest.mark.parametrize("seed", [0, 7, 2**32 + 3, 2**63 + 11, -5])
def test_alpha_is_the_documented_philox_stream(seed):
    real, fake = torch.randn(5, 7, device=DEVICE), torch.randn(5, 7, device=DEVICE)
    _, alpha = ops.interpolate(real, fake, seed=seed)
    torch.testing.assert_close(alpha.cpu(), expected_alpha(seed & (2**64 - 1), 0, 5), rtol=0, atol=0)


@pytest.mark.parametrize("chunks", ["default", "small"])
def test_dragan_u_is_the_documented_philox_stream(request, chunks):
    if chunks == "small":
        request.getfixturevalue("small_chunks")
    real = torch.randn(3, 37, dtype=torch.float64, device=DEVICE)  # d not a multiple of 4
    seed = 2**40 + 9
    x_hat, alpha = ops.interpolate(real, None, "dragan", seed=seed)
    a = expected_alpha(seed, 0, 3).double()
    u = expected_u(seed, 0, 3, 37).double()
    torch.testing.assert_close(alpha.cpu(), a, rtol=0, atol=0)
    want = real.cpu() + a[:, None] * (0.5 * real.cpu().std() * u)
    torch.testing.assert_close(x_hat.cpu(), want, rtol=1e-14, atol=1e-14)


def test_host_seed_follows_torch_manual_seed_without_a_launch():
    real, fake = torch.randn(4, 5, device=DEVICE), torch.randn(4, 5, device=DEVICE)
    torch.manual_seed(99)
    rng = interpolate_module.rng_state(None, real.device)
    assert isinstance(rng, tuple), "outside a CUDA-graph capture the key is a host scalar"
    torch.manual_seed(99)
    a1 = ops.interpolate(real, fake)[1]
    torch.testing.assert_close(a1.cpu(), expected_alpha(*rng, 4), rtol=0, atol=0)
    if DEVICE == "cuda":
        gen = torch.cuda.default_generators[real.device.index]
        offset = gen.get_offset()
        ops.interpolate(real, fake)
        assert gen.get_offset() == offset + 8, "one call reserves two Philox counters per subsequence"
