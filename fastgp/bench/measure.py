"""Measurement: timers (CUDA events, CPU clocks), copy bandwidth, launch counts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated runs, in milliseconds; `timer` says how they were taken."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    timer: str


def _summary(times_ms: Sequence[float], timer: str) -> Timing:
    qs = statistics.quantiles(times_ms, n=10, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 9
    return Timing(statistics.median(times_ms), qs[1], qs[7], len(times_ms), timer)


def measure_cpu(
    fn: Callable[[], Any], warmup_ms: float, rep_ms: float, min_reps: int = 5, max_reps: int = 10_000
) -> Timing:
    """Median host time of `fn` by `time.perf_counter`: warm-up for `warmup_ms`, then at least `min_reps`
    repetitions filling `rep_ms`."""
    fn()
    stop = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < stop:
        fn()
    times: list[float] = []
    stop = time.perf_counter() + rep_ms / 1e3
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() < stop):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times, "cpu perf_counter, median")


def _measure_cuda_events(fn: Callable[[], Any], warmup_ms: float, rep_ms: float) -> Timing:
    """`triton.testing.do_bench`'s method, for installs without Triton: events, L2 flushed before each run."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    n = max(10, int(rep_ms / estimate))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends, strict=True):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()  # events are read only after the device has finished them
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)], "cuda events, median")


def measure(
    fn: Callable[[], Any], device: torch.device | str, *, warmup_ms: float = 25.0, rep_ms: float = 100.0
) -> Timing:
    """Median time of `fn` on `device`: CUDA events through `triton.testing.do_bench` (L2 flushed before each
    repetition) on CUDA, `time.perf_counter` on the CPU; warm-up first, then repetitions filling `rep_ms`."""
    device = torch.device(device)
    if device.type != "cuda":
        return measure_cpu(fn, warmup_ms, rep_ms)
    try:
        from triton.testing import do_bench
    except ImportError:
        return _measure_cuda_events(fn, warmup_ms, rep_ms)
    times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    return _summary(times, "cuda events (triton.testing.do_bench), median")


def synchronize(device: torch.device | str) -> None:
    """Wait for `device` to finish, so that a host clock read next covers the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device | str, *, rep_ms: float = 200.0) -> dict[str, Any]:
    """Measured copy bandwidth (bytes read + bytes written per second): the roofline of the fused ops.

    CUDA: a 1 GiB device-to-device copy, far larger than L2. CPU: a 64 MiB `copy_` with the threads
    torch uses; small CPU cases fit in cache and can exceed it.
    """
    device = torch.device(device)
    numel = 2**28 if device.type == "cuda" else 2**24
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, warmup_ms=50.0, rep_ms=rep_ms)
    nbytes = 2 * numel * src.element_size()
    what = (
        f"device-to-device copy of {numel * 4 // 2**20} MiB"
        if device.type == "cuda"
        else f"CPU torch copy_ of {numel * 4 // 2**20} MiB, torch threads: {torch.get_num_threads()}"
    )
    return {"what": what, "bytes_per_s": nbytes / (timing.median_ms / 1e3), "median_ms": timing.median_ms}


def count_launches(fn: Callable[[], Any], device: torch.device | str) -> tuple[int, list[str]] | None:
    """GPU work items (kernels, memcpy, memset) one call of `fn` puts on the device, from torch.profiler.

    None on the CPU, where there are no launches to count.
    """
    if torch.device(device).type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    return len(names), names


def measure_cpu_interleaved(
    fns: dict[str, Callable[[], Any]], warmup_ms: float, rep_ms: float, min_rounds: int = 5
) -> dict[str, Timing]:
    """Round-robin over the providers, one call each per round: on a shared CPU, load that comes and goes then
    falls on every provider alike instead of on whichever happened to be timed at that moment."""
    for fn in fns.values():
        measure_cpu(fn, warmup_ms / len(fns), 0.0, min_reps=1, max_reps=1)
    times: dict[str, list[float]] = {name: [] for name in fns}
    stop = time.perf_counter() + rep_ms * len(fns) / 1e3
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < stop and rounds < 10_000):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: _summary(t, "cpu perf_counter, interleaved rounds, median") for name, t in times.items()}
