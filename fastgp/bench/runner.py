"""The runner: check every provider against eager once, time the ones that agree, evaluate the targets."""

from __future__ import annotations

import itertools
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import fastgp
from fastgp.bench.cases import (
    LAUNCH_BOUND_SPEEDUP,
    MID_SHAPE,
    MID_SPEEDUP,
    PENALTY_LAUNCHES,
    ROOFLINE_TARGET,
    TRAFFIC_TARGET_BYTES,
    Case,
)
from fastgp.bench.measure import (
    copy_bandwidth,
    count_launches,
    measure,
    measure_cpu,
    measure_cpu_interleaved,
    measure_host,
    synchronize,
)
from fastgp.bench.providers import Prepared, Skip, is_fused, prepare, provider_names


@dataclass
class Row:
    """One provider on one case: status ``ok``, ``skipped``, ``wrong`` or ``error``, and what was measured."""

    case: str
    op: str
    provider: str
    status: str
    reason: str = ""
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    time_ms: float | None = None
    time_p20_ms: float | None = None
    time_p80_ms: float | None = None
    reps: int | None = None
    timer: str = ""
    host_us: float | None = None
    wall_ms: float | None = None
    traffic_bytes: int | None = None
    bytes_per_s: float | None = None
    roofline_fraction: float | None = None
    launches: int | None = None
    kernels: list[str] | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    speedup_vs_eager_host: float | None = None
    saved_vs_eager: float | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)


def check_provider(
    case: Case, provider: str, device: torch.device | str, *, compile: str = "all"
) -> tuple[Row, Prepared | None]:
    """Build `provider` on `case` and check it against eager: the row (``ok`` or why not) and, if ``ok``, the
    prepared provider to time. A wrong provider is never timed."""
    device = torch.device(device)
    row = Row(
        case.id, case.op, provider, "ok", shape=list(case.shape), dtype=case.dtype, traffic_bytes=case.traffic_bytes
    )
    try:
        prepared = prepare(case, provider, device, compile=compile)
    except Skip as exc:
        row.status, row.reason = "skipped", str(exc)
        return row, None
    try:
        problem = prepared.check()
        synchronize(device)
    except Exception as exc:
        row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"
        return row, None
    if problem is not None:
        row.status, row.reason = "wrong", problem
        return row, None
    return row, prepared


def time_providers(
    case: Case,
    ready: dict[str, Prepared],
    rows: dict[str, Row],
    device: torch.device | str,
    *,
    roofline: float | None = None,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
) -> None:
    """Time the checked providers of one case into their rows; on CUDA also the host time and the launches."""
    device = torch.device(device)
    if not ready:
        return
    if device.type == "cuda":
        timings = {name: measure(p.run, device, warmup_ms=warmup_ms, rep_ms=rep_ms) for name, p in ready.items()}
        # What issuing one call costs the CPU: on launch-bound sizes, the step's time.
        host = measure_host({name: p.run for name, p in ready.items()}, device, warmup_ms=warmup_ms, rep_ms=rep_ms)
    else:
        timings = measure_cpu_interleaved({name: p.run for name, p in ready.items()}, warmup_ms, rep_ms)
    for name, prepared in ready.items():
        row, timing = rows[name], timings[name]
        row.time_ms, row.time_p20_ms, row.time_p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
        row.reps, row.timer = timing.reps, timing.timer
        if case.traffic_bytes is not None:
            row.bytes_per_s = case.traffic_bytes / (timing.median_ms / 1e3)
            if roofline:
                row.roofline_fraction = row.bytes_per_s / roofline
        if device.type != "cuda":
            continue
        row.host_us = statistics.median(host[name]) * 1e3

        # Events time the device; do_bench's L2 flush before each run also lets the host queue launches ahead,
        # hiding launch overhead. The wall clock per call with a synchronize is what a loop that waits sees.
        def synced(run: Callable[[], Any] = prepared.run) -> None:
            run()
            torch.cuda.synchronize()

        row.wall_ms = measure_cpu(synced, warmup_ms, rep_ms).median_ms
        launches = count_launches(prepared.run, device, fastgp_only=is_fused(name))
        if launches is not None:
            row.launches, row.kernels = launches


def run_provider(
    case: Case,
    provider: str,
    device: torch.device | str,
    *,
    compile: str = "all",
    roofline: float | None = None,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
) -> Row:
    """Check one provider against eager on `case`, then time it (alone; `run` interleaves a case's providers)."""
    row, prepared = check_provider(case, provider, device, compile=compile)
    if prepared is not None:
        time_providers(
            case, {provider: prepared}, {provider: row}, device, roofline=roofline, warmup_ms=warmup_ms, rep_ms=rep_ms
        )
    return row


def _target(name: str, want: str, got: float | int | None, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "want": want, "got": got, "pass": ok}


def evaluate_targets(case: Case, row: Row, device: torch.device) -> list[dict[str, Any]]:
    """The GPU targets for a fused provider's row (recorded, never asserted)."""
    if row.status != "ok" or not is_fused(row.provider) or row.provider.endswith("-shared"):
        return []
    out = []
    evaluated = device.type == "cuda"

    def add(name: str, want: str, got: float | int | None, ok: bool) -> None:
        out.append(_target(name, want, got, ok if evaluated and got is not None else None))

    if case.traffic_bytes is not None and case.traffic_bytes >= TRAFFIC_TARGET_BYTES:
        frac = row.roofline_fraction
        ok = frac is not None and frac >= ROOFLINE_TARGET
        add("roofline", f">= {ROOFLINE_TARGET:.0%} of copy bandwidth", frac, ok)
    if case.op == "penalty":
        add("launches", f"== {PENALTY_LAUNCHES}", row.launches, row.launches == PENALTY_LAUNCHES)
        if case.launch_bound:
            s = row.speedup_vs_eager
            add(
                "launch-bound speed-up",
                f">= {LAUNCH_BOUND_SPEEDUP}x eager",
                s,
                s is not None and s >= LAUNCH_BOUND_SPEEDUP,
            )
        if case.shape == MID_SHAPE and case.dtype == "fp32":
            s, want = row.speedup_vs_eager, MID_SPEEDUP[case.norm]
            add(
                f"{case.norm} speed-up on {'x'.join(map(str, MID_SHAPE))} fp32",
                f">= {want}x eager",
                s,
                s is not None and s >= want,
            )
    add(
        "not slower than eager",
        ">= 1x eager",
        row.speedup_vs_eager,
        row.speedup_vs_eager is not None and row.speedup_vs_eager >= 1.0,
    )
    if row.speedup_vs_compile is not None:
        add("not slower than compile", ">= 1x compile", row.speedup_vs_compile, row.speedup_vs_compile >= 1.0)
    return out


def finish_case(case: Case, rows: list[Row], device: torch.device | str) -> list[Row]:
    """Fill in the speed-ups against the case's eager and compile rows, and the targets."""
    device = torch.device(device)
    by_name = {r.provider: r for r in rows if r.status == "ok"}
    eager, compiled = by_name.get("eager"), by_name.get("compile")
    for row in rows:
        if row.status != "ok" or row.time_ms is None:
            continue
        if eager is not None:
            row.speedup_vs_eager = eager.time_ms / row.time_ms
            row.saved_vs_eager = 1.0 - row.time_ms / eager.time_ms
        if compiled is not None:
            row.speedup_vs_compile = compiled.time_ms / row.time_ms
        if eager is not None and eager.host_us is not None and row.host_us is not None:
            row.speedup_vs_eager_host = eager.host_us / row.host_us
        row.targets = evaluate_targets(case, row, device)
    return rows


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str) -> dict[str, Any]:
    """What the numbers were measured on: device name, versions, date, backends."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}",
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "fastgp": fastgp.__version__,
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backends": {s.name: {"available": s.available, "detail": s.detail} for s in fastgp.backends().values()},
    }


def run(
    cases: Sequence[Case],
    device: torch.device | str,
    *,
    compile: str = "all",
    providers: Sequence[str] | None = None,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Run every case × provider on `device`; returns the JSON-ready results (environment, roofline, rows).

    `providers` keeps only those names; `progress` wraps the (case, provider) iterator (a tqdm bar).
    """
    device = torch.device(device)
    env = environment(device)
    bandwidth = copy_bandwidth(device)
    todo = [(c, p) for c in cases for p in provider_names(c.op) if providers is None or p in providers]
    rows: dict[Case, list[Row]] = {c: [] for c in cases}
    # Check every provider of a case first, then time them together (interleaved on a CPU); the progress bar
    # advances as providers are checked.
    for case, group in itertools.groupby(progress(todo) if progress else todo, key=lambda item: item[0]):
        ready: dict[str, Prepared] = {}
        for _, provider in group:
            row, prepared = check_provider(case, provider, device, compile=compile)
            rows[case].append(row)
            if prepared is not None:
                ready[provider] = prepared
        time_providers(
            case,
            ready,
            {r.provider: r for r in rows[case]},
            device,
            roofline=bandwidth["bytes_per_s"],
            warmup_ms=warmup_ms,
            rep_ms=rep_ms,
        )
        del ready
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = [r for c in cases for r in finish_case(c, rows[c], device)]
    return {
        "schema": 1,
        "environment": env,
        "settings": {
            "quick": quick,
            "compile": compile,
            "compile_mode": "default, dynamic=False",
            "warmup_ms": warmup_ms,
            "rep_ms": rep_ms,
        },
        "roofline": bandwidth,
        "targets_evaluated": device.type == "cuda",
        "rows": [asdict(r) for r in out],
    }
