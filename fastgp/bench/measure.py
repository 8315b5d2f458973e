"""Measurement: timers (CUDA events, CPU clocks), copy bandwidth, launch counts."""

from __future__ import annotations

import functools
import gc
import random
import statistics
import sys
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


def summary(times_ms: Sequence[float], timer: str) -> Timing:
    """Median and 20th/80th percentiles of repeated timings (ms)."""
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
    return summary(times, "cpu perf_counter, median")


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
    return summary([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)], "cuda events, median")


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
    return summary(times, "cuda events (triton.testing.do_bench), median")


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


def count_launches(
    fn: Callable[[], Any], device: torch.device | str, *, fastgp_only: bool = False
) -> tuple[int, list[str]] | None:
    """Kernel launches of one call of `fn`, and the names of all the device work it queued (kernels, memcpy,
    memset), from torch.profiler. With `fastgp_only`, only fastgp's own kernels count (not autograd's
    ``ones_like`` seed of a backward, nor a memset), so that "2 launches" is a statement about fastgp.

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
    counted = [n for n in names if is_fastgp_kernel(n)] if fastgp_only else [n for n in names if is_kernel(n)]
    return len(counted), names


def is_kernel(name: str) -> bool:
    """Whether a profiler's device event is a kernel launch (not a memcpy or memset)."""
    return not name.lower().startswith(("memcpy", "memset"))


def is_fastgp_kernel(name: str) -> bool:
    """Whether a kernel is fastgp's: in the CUDA extension's ``fastgp::`` namespace, or one of the Triton
    kernels of `fastgp.ops` (named after their Python function)."""
    return "fastgp::" in name or name in _triton_kernel_names()


@functools.cache
def _triton_kernel_names() -> frozenset[str]:
    try:
        from triton.runtime.jit import KernelInterface  # a JIT function, or an interpreted one

        import fastgp.ops  # noqa: F401  (imports every op module)
    except ImportError:
        return frozenset()
    modules = [m for name, m in sys.modules.items() if name.startswith("fastgp.ops.")]
    return frozenset(obj.fn.__name__ for m in modules for obj in vars(m).values() if isinstance(obj, KernelInterface))


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
    return {name: summary(t, "cpu perf_counter, interleaved rounds, median") for name, t in times.items()}


HOST_TIMER = "host CPU time per call (process_time, interleaved shuffled rounds), median"


def measure_host(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    *,
    warmup_ms: float = 50.0,
    rep_ms: float = 200.0,
    min_rounds: int = 5,
) -> dict[str, list[float]]:
    """Host CPU time (ms) of one call of each of `fns` in every round: rounds of one call each, interleaved,
    so that round k's samples were taken within moments of one another (`summary` makes them a `Timing`).
    At least `min_rounds` rounds, more while the rounds have taken less than `rep_ms` per function.

    The order is shuffled every round and the garbage collector paused, so that neither a position in
    the round nor a collection lands on one provider; the cost of reading the clock is subtracted. On
    CUDA the device is synchronised between rounds, outside the timing, so no call waits for a full queue.
    """
    for fn in fns.values():
        stop = time.perf_counter() + warmup_ms / 1e3 / len(fns)
        fn()
        while time.perf_counter() < stop:
            fn()
    synchronize(device)
    clock = _clock_cost_ns()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    shuffle = random.Random(0).shuffle
    stop = time.perf_counter() + rep_ms * len(fns) / 1e3
    rounds = 0
    gc.collect()
    gc.disable()
    try:
        while rounds < min_rounds or (time.perf_counter() < stop and rounds < 20_000):
            shuffle(order)
            for name, fn in order:
                t0 = time.process_time_ns()
                fn()
                times[name].append(max(time.process_time_ns() - t0 - clock, 0) / 1e6)
            synchronize(device)
            rounds += 1
    finally:
        gc.enable()
    return times


def _clock_cost_ns(reps: int = 2000) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.process_time_ns()
        samples.append(time.process_time_ns() - t0)
    return statistics.median(samples)
