"""The shortcuts every training step takes, against the general code they stand in for: layouts read in
one call, the real/fake pair checked in one expression, settings and backends answered from caches.
Each shortcut must give exactly what the general path gives, and refuse exactly what it refuses."""

import gc
import sys
import weakref

import pytest
import torch

import fastgp
from fastgp import _layout, api, validation

backends = sys.modules["fastgp.backends"]  # `fastgp.backends` is also the name of a function


def _layouts() -> list[torch.Tensor]:
    base = torch.randn(4, 3, 5, 6)
    odd = torch.randn(4, 1, 30).as_strided((4, 1, 30), (30, 999, 1))  # a size-1 dimension's stride is free
    return [
        base,
        base.to(memory_format=torch.channels_last),
        base.transpose(0, 1),
        base[:, :, 1:],
        base[:1],
        base[:1].transpose(2, 3),
        odd,
        torch.randn(7, 1),
    ]


@pytest.mark.parametrize("t", _layouts(), ids=range(len(_layouts())))
def test_rows_is_as_rows_with_its_sizes(t):
    rows, B, d, stride = _layout.rows(t)
    want = _layout.as_rows(t)
    assert rows.data_ptr() == want.data_ptr() or torch.equal(rows, want)
    assert (B, d, stride) == (want.shape[0], want.numel() // want.shape[0], _layout.row_stride(want))


@pytest.mark.parametrize("t", _layouts(), ids=range(len(_layouts())))
def test_rows_out_matches_the_general_layout_helpers(t):
    out, target, src, B, d, stride = _layout.rows_out(t)
    want_target = _layout.rows_target(torch.empty_like(t))
    assert out.shape == t.shape and out.stride() == torch.empty_like(t).stride()
    assert target.stride() == want_target.stride() and (target is out) == (want_target.stride() == out.stride())
    assert torch.equal(src, t) and _layout.same_layout(src, target)
    assert (B, d, stride) == (src.shape[0], src.numel() // src.shape[0], _layout.row_stride(src))


PAIRS = [
    (torch.randn(3, 2), torch.randn(3, 2)),
    (torch.randn(3, 2), torch.randn(3, 2, dtype=torch.float64)),
    (torch.randn(3, 2), torch.randn(2, 3)),
    (torch.randn(3, 2), None),
    (torch.randn(3, 2), "fake"),
    (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64)),
    (torch.randn(()), torch.randn(())),
    (torch.randn(0, 2), torch.randn(0, 2)),
    (torch.randn(3, 0), torch.randn(3, 0)),
    (torch.randn(3, 2).to_sparse(), torch.randn(3, 2).to_sparse()),
    (torch.randn(3, 2), torch.randn(3, 2).to_sparse()),
    (torch.nn.Parameter(torch.randn(3, 2)), torch.randn(3, 2)),
]


def _general_points(real, fake):
    """`validation.points` for interpolation, without its shortcut."""
    for name, t in (("real", real), ("fake", fake)):
        if t is None:
            raise ValueError(f"points='interpolate' needs {name}, got None")
    validation.tensor("real", real)
    validation.tensor("fake", fake)
    validation.same_tensors(real, fake)
    return real.device


@pytest.mark.parametrize("pair", PAIRS, ids=range(len(PAIRS)))
def test_the_pair_shortcut_accepts_and_refuses_as_the_checks_do(pair):
    def outcome(check):
        try:
            return check(*pair)
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)

    assert outcome(lambda r, f: validation.points("interpolate", r, f)) == outcome(_general_points)


def test_memoized_checks_answer_unhashable_arguments_and_raise_their_own_type_errors():
    calls = []

    @validation.memoized
    def check(x):
        calls.append(x)
        if x == "bad":
            raise TypeError("x is bad")
        return len(x)

    assert check("ab") == check("ab") == 2 and calls == ["ab"]  # the second answer came from the cache
    assert check(["a", "b", "c"]) == 3  # unhashable: asked every time
    with pytest.raises(TypeError, match="x is bad"):
        check("bad")
    with pytest.raises(TypeError, match="x is bad"):
        check("bad")  # a refusal is never cached
    assert calls.count("bad") == 2


def _resolved_cache():
    # `validation.memoized` keeps an lru_cache of the check in the wrapper's closure.
    return next(c.cell_contents for c in api._resolved.__closure__ if hasattr(c.cell_contents, "cache_info"))


def test_gradient_penalty_settings_are_resolved_once_per_set_of_arguments():
    D = torch.nn.Linear(2, 1)
    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    fastgp.gradient_penalty(D, real, fake, preset="wgan-gp", seed=0)
    misses = _resolved_cache().cache_info().misses
    fastgp.gradient_penalty(D, real * 2, fake, preset="wgan-gp", seed=1)
    assert _resolved_cache().cache_info().misses == misses
    fastgp.gradient_penalty(D, real, fake, preset="wgan-gp", weight=5.0)
    assert _resolved_cache().cache_info().misses == misses + 1


def test_points_passed_as_a_tensor_are_not_kept_by_the_cache():
    D = torch.nn.Linear(2, 1)
    points = torch.randn(4, 2)
    alive = weakref.ref(points)
    fastgp.gradient_penalty(D, None, points=points, center=0.0)
    del points
    gc.collect()
    assert alive() is None


def test_backends_named_for_cpu_tensors_follow_the_environment(monkeypatch):
    cpu = torch.device("cpu")
    assert backends.select("torch", cpu) is backends.select("torch", cpu)
    monkeypatch.setenv("FASTGP_BACKEND", "torch")
    assert backends.select("auto", cpu).__name__ == "fastgp.reference"
    monkeypatch.setenv("FASTGP_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTGP_BACKEND"):
        backends.select("auto", cpu)


def test_odd_arguments_get_the_general_refusals():
    np = pytest.importorskip("numpy")
    D = torch.nn.Linear(2, 1)
    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(TypeError, match="d_args must be a tuple"):
        fastgp.gradient_penalty(D, real, fake, d_args=torch.zeros(0))
    with pytest.raises(TypeError, match="points must be a str"):
        validation.points(np.array(["interpolate"]), real, fake)
    misses = _resolved_cache().cache_info().misses
    sigma = torch.tensor(0.01)
    with pytest.raises(TypeError, match="sigma must be a real number"):
        fastgp.gradient_penalty(D, real, preset="ar1", sigma=sigma)
    assert _resolved_cache().cache_info().misses == misses + 1 and _resolved_cache().cache_info().currsize <= 256
    alive = weakref.ref(sigma)
    del sigma
    gc.collect()
    assert alive() is None  # a refusal is not cached, nor is what it refused


class _Unhashable:
    def __hash__(self):
        raise TypeError("no hash here")


def test_memoized_checks_take_arguments_that_cannot_be_hashed_in_any_way():
    @validation.memoized
    def check(x):
        return "checked"

    assert check(_Unhashable()) == "checked"


def test_a_refusal_of_an_unhashable_setting_reads_as_itself():
    with pytest.raises(TypeError, match="norm must be a str") as caught:
        fastgp.penalty_from_grad(torch.randn(2, 3), norm=["l2"])
    assert caught.value.__context__ is None  # not "during handling of: unhashable type"
