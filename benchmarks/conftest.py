"""pytest-benchmark harness over `fastgp.bench`: one test per case × provider, checked against eager first.

Run with ``pytest benchmarks/ --benchmark-only`` (the default ``pytest`` run collects only ``tests/``). The
device is CUDA when there is one (``FASTGP_BENCH_DEVICE=cpu|cuda`` overrides); the CPU runs small shapes only,
on one torch thread (``FASTGP_BENCH_THREADS=n`` overrides). On CUDA each test also records, in ``extra_info``,
the CUDA-event median (`triton.testing.do_bench`), GB/s, % of the copy bandwidth measured in the same session
and the launch count; pytest-benchmark's own host timer covers the call plus a synchronize. Every measured
test appends one JSON line, with the device name and versions, to the file named by ``FASTGP_BENCH_DATA``
(nothing is written when it is unset, so a casual run leaves the tree clean).
``FASTGP_BENCH_COMPILE=all|one|none`` picks the cases that time torch.compile (default: all on CUDA, one on a CPU).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fastgp import bench

DEVICE = bench.default_device()
# One CPU thread unless told otherwise: on a shared machine, OpenMP threads that wait on each other turn other
# people's load into 10-100x outliers; one thread measures the code rather than the neighbours.
THREADS = os.environ.get("FASTGP_BENCH_THREADS") or ("1" if DEVICE.type == "cpu" else "")
if THREADS:
    torch.set_num_threads(int(THREADS))
DATA_FILE = os.environ.get("FASTGP_BENCH_DATA", "")
# Host time spent repeating each test: enough rounds for a stable median, few enough for a CPU run in minutes.
ROUNDS_BUDGET_S = 0.25


@pytest.fixture(scope="session")
def environment() -> dict[str, Any]:
    return bench.environment(DEVICE)


@pytest.fixture(scope="session")
def roofline() -> dict[str, Any]:
    """The copy bandwidth, measured once per session on this device."""
    return bench.copy_bandwidth(DEVICE)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    machine_info["fastgp"] = bench.environment(DEVICE)


@pytest.fixture
def bench_case(benchmark: Any, roofline: dict[str, Any], environment: dict[str, Any]) -> Callable[..., None]:
    """``bench_case(case, provider)``: skip with the reason, fail if wrong, else time it."""

    def go(case: bench.Case, provider: str) -> None:
        policy = os.environ.get("FASTGP_BENCH_COMPILE") or bench.default_compile(DEVICE)
        try:
            prepared = bench.prepare(case, provider, DEVICE, compile=policy)
        except bench.Skip as exc:
            pytest.skip(str(exc))
        problem = prepared.check()
        assert problem is None, f"{provider} disagrees with eager on {case.id}: {problem}"

        def timed() -> None:
            prepared.run()
            bench.synchronize(DEVICE)

        info: dict[str, Any] = {"case": case.id, "provider": provider, "device": environment["device_name"]}
        if DEVICE.type == "cuda":
            timing = bench.measure(prepared.run, DEVICE)
            info.update(time_ms=timing.median_ms, timer=timing.timer)
            launches = bench.count_launches(prepared.run, DEVICE, fastgp_only=bench.is_fused(provider))
            if launches is not None:
                info["launches"] = launches[0]
        timed()
        t0 = time.perf_counter()
        timed()
        one = max(time.perf_counter() - t0, 1e-6)
        rounds = int(min(200, max(5, ROUNDS_BUDGET_S / one)))
        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=min(rounds, 3), iterations=1)
        if "time_ms" not in info:
            info.update(time_ms=benchmark.stats.stats.median * 1e3, timer="cpu perf_counter (pytest-benchmark), median")
        if case.traffic_bytes is not None:
            info["bytes_per_s"] = case.traffic_bytes / (info["time_ms"] / 1e3)
            info["roofline_fraction"] = info["bytes_per_s"] / roofline["bytes_per_s"]
            info["roofline"] = roofline["what"]
        benchmark.extra_info.update(info)
        if DATA_FILE:
            Path(DATA_FILE).parent.mkdir(parents=True, exist_ok=True)
            line = {
                **info,
                "environment": {
                    k: environment[k]
                    for k in ("device_name", "torch", "triton", "cuda", "fastgp", "git_commit", "date")
                },
            }
            with open(DATA_FILE, "a") as fh:
                fh.write(json.dumps(line) + "\n")

    return go
