"""Smoke tests of the benchmarks: `fastgp bench --quick` writes its JSON and PNG, the table has its columns,
the README table generator reads the JSON, the pytest-benchmark files collect (they are not run here), and
`fastgp bench --host --quick` reports every host goal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastgp
from fastgp import bench
from fastgp.bench import host
from fastgp.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("bench")
    # A narrow slice of --quick keeps this test at a few seconds; the full --quick set is the CLI's job.
    rc = main(
        [
            "bench",
            "--quick",
            "--out",
            str(out),
            "--cases",
            "penalty/l2/fp32/256x2,interpolate,wgan_step",
            "--rep-ms",
            "20",
        ]
    )
    return rc, out


def test_quick_writes_json_and_png(quick_run: tuple[int, Path]) -> None:
    rc, out = quick_run
    assert rc == 0
    (json_path,) = out.glob("*.json")
    (png_path,) = out.glob("*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(json_path.read_text())
    env = results["environment"]
    assert env["device"] == "cpu" and env["device_name"].startswith("CPU")
    assert env["torch"] == torch.__version__ and "date" in env and "cuda" in env and "triton" in env
    assert results["roofline"]["bytes_per_s"] > 0
    assert results["targets_evaluated"] is False
    cases = {r["case"] for r in results["rows"]}
    assert cases == {"penalty/l2/fp32/256x2", "interpolate/fp32/64x3x32x32", "wgan_step/mlp128/fp32/256x2"}
    for r in results["rows"]:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok":
            assert r["time_ms"] > 0 and r["speedup_vs_eager"] > 0
            assert r["launches"] is None  # no launches to count on a CPU
        else:
            assert r["reason"]
    eager = [r for r in results["rows"] if r["provider"] == "eager"]
    assert all(r["status"] == "ok" and r["speedup_vs_eager"] == pytest.approx(1.0) for r in eager)
    compiled = [r for r in results["rows"] if r["provider"] == "compile"]
    assert all(r["status"] == "skipped" for r in compiled)  # --quick skips torch.compile, and says so


def test_table_has_columns(quick_run: tuple[int, Path]) -> None:
    _, out = quick_run
    (json_path,) = out.glob("*.json")
    results = json.loads(json_path.read_text())
    text = bench.format_table(results)
    for column in ("median ms", "× eager", "× compile", "saved", "GB/s", "% roofline", "launches"):
        assert column in text
    assert "host µs" not in text and "wall ms" not in text  # CUDA-only columns
    assert "CPU run" in text and "fastgp-torch" in text
    markdown = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme_table.py"), str(json_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    header = "| " + " | ".join(bench.table_columns(results)) + " |"
    assert header in markdown and "| penalty/l2/fp32/256x2 | eager |" in markdown


def test_wrong_provider_is_reported_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    case = bench.Case("penalty", (8, 5), "fp32", "l2")

    def wrong_head(grad, **kw):  # a "fast" kernel that forgets the weight
        return bench.eager_penalty(grad, kw["norm"], kw["constraint"], kw["center"], 1.0)

    monkeypatch.setattr(fastgp, "penalty_from_grad", lambda g, backend, **kw: wrong_head(g, **kw))
    row = bench.run_provider(case, "fastgp-torch", "cpu", rep_ms=1)
    assert row.status == "wrong" and "relative error" in row.reason and row.time_ms is None


def test_case_selection() -> None:
    cases = bench.default_cases("cuda")
    ids = {c.id for c in cases}
    assert "penalty/linf/bf16/8x3x1024x1024" in ids and "penalty/l2/fp16/256x2" in ids
    assert len(bench.select_cases(cases, "penalty/linf/*")) == 12
    assert all(c.numel <= 64 * 3 * 32 * 32 for c in bench.default_cases("cpu") if c.op in bench.FUSED_OPS)
    big = bench.Case("penalty", (8, 3, 1024, 1024), "fp32")
    assert big.traffic_bytes == 3 * 8 * 3 * 1024 * 1024 * 4 and not big.launch_bound


def test_benchmarks_collect() -> None:
    pytest.importorskip("pytest_benchmark")  # the benchmarks' conftest hooks into it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "FASTGP_BENCH_DEVICE": "cpu"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for op in bench.OPS:
        assert f"test_bench_{op}.py::test_{op}[" in proc.stdout


TINY = [
    bench.Case("penalty", (4, 3, 8, 8), "bf16", "linf"),
    bench.Case("interpolate", (4, 3, 8, 8), "fp16"),
    bench.Case("normalize", (4, 3, 8, 8), "fp32", "l1", "pgn"),
    bench.Case("wgan_step", (8, 2), "fp32", variant="mlp", width=16),
    bench.Case("r1", (8, 2), "fp32", variant="mlp", width=16),
]


@pytest.mark.parametrize("case", TINY, ids=str)
def test_fused_providers_pass_their_check(case: bench.Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's wiring of every fused backend that runs here (on a CPU, Triton through its interpreter)
    agrees with eager, so a GPU run times the right function."""
    # Timings are not taken here, so the interpreter may stand in for the GPU.
    monkeypatch.setattr("fastgp.bench.providers.backend_skip_reason", lambda name, device: None)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = []
    for name in bench.backend_names():
        try:
            fastgp.backend_for(device, name)
        except Exception:
            continue
        names.append(name)
    providers = [p for p in bench.provider_names(case.op) if bench.backend_of(p) in names]
    assert providers
    for provider in providers:
        row, prepared = bench.check_provider(case, provider, device)
        assert row.status == "ok" and prepared is not None, (provider, row.reason)


def test_launches_count_fastgp_kernels_only() -> None:
    triton_kernel = "_penalty_fwd_kernel"
    cuda_kernel = "void fastgp::penalty_fwd_kernel<float, (fastgp::Norm)0>(fastgp::PenaltyFwdParams)"
    seed = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int)"
    assert bench.is_fastgp_kernel(cuda_kernel) and not bench.is_fastgp_kernel(seed)
    assert not bench.is_fastgp_kernel("Memset (Device)") and not bench.is_kernel("Memset (Device)")
    if importlib.util.find_spec("triton") is not None:
        assert bench.is_fastgp_kernel(triton_kernel)
    assert bench.is_kernel(seed) and not bench.is_fastgp_kernel("triton_poi_fused_add_0")


def test_host_mode_reports_every_goal(tmp_path: Path) -> None:
    """In a process of its own: host-only Triton launches must be set up before fastgp.ops is imported."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fastgp", "bench", "--host", "--quick", "--device", "cpu", "--rep-ms", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = tmp_path.glob("*-host-quick.json")
    results = json.loads(json_path.read_text())
    assert results["mode"] == "host"
    goals = {g.name for g in host.GOALS}
    assert {r["goal"] for r in results["rows"]} == goals
    for r in results["rows"]:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok":
            assert r["host_us"] > 0 and r["reps"] >= 5
    judged = [r for r in results["rows"] if r["want"]]
    assert {r["goal"] for r in judged if r["provider"] == "fastgp-torch"} == {
        "D step, MLP critic",
        "D step, conv critic",
    }
    assert all(isinstance(r["met"], bool) and r["ratio_vs_eager"] > 0 for r in judged if r["provider"] != "critic")
    triton = [r for r in results["rows"] if r["provider"] == "fastgp-triton"]
    if results["settings"]["host_only_launches"]:
        assert all(r["status"] == "ok" and "host-only" in r["reason"] for r in triton)
    table = proc.stdout
    assert "host µs" in table and "beyond critic µs" in table and "D step, conv critic" in table
