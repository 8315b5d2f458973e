"""Benchmark cases, providers and the runner shared by `benchmarks/` (pytest-benchmark) and `fastgp bench`.

Each module reads on its own, in this order: `cases` (what is timed, on which shapes, the GPU targets),
`baselines` (eager PyTorch written as a careful user would, built on `fastgp.reference`, the oracle of the
tests), `providers` (eager, `torch.compile` of the eager head, and `fastgp-<backend>` for every name in
`fastgp.backends.NAMES`, so new backends appear without edits), `measure` (timers, copy bandwidth, launch
counts), `runner` (checks every provider against eager once before timing it), `host` (host CPU time per
call against the host-overhead goals, `fastgp bench --host`) and `report` (table, JSON, PNG).

Honesty rules kept here, once: every provider of a case gets the same inputs; a provider whose output does
not match eager is reported as ``wrong`` and never timed; a provider that cannot run says why (``skipped``);
GPU times come from CUDA events (`triton.testing.do_bench`: warm-up, L2 flushed before each repetition,
median of many), CPU times from `time.perf_counter` after a warm-up, median of many; host times are the
process's CPU time per call, never waiting for the device inside the timing.
"""

from fastgp.bench.baselines import (
    eager_interpolate,
    eager_normalize,
    eager_penalty,
    eager_r1,
    eager_wgan_gp,
    make_critic,
)
from fastgp.bench.cases import (
    COMPILE_SAMPLE,
    DTYPES,
    FUSED_OPS,
    OPS,
    Case,
    default_cases,
    default_compile,
    default_device,
    op_cases,
    select_cases,
)
from fastgp.bench.measure import (
    Timing,
    copy_bandwidth,
    count_launches,
    is_fastgp_kernel,
    is_kernel,
    measure,
    measure_host,
    synchronize,
)
from fastgp.bench.providers import (
    Prepared,
    Skip,
    backend_names,
    backend_of,
    is_fused,
    prepare,
    provider_names,
)
from fastgp.bench.report import (
    format_markdown,
    format_table,
    merge,
    output_stem,
    plot,
    table_columns,
    write_json,
)
from fastgp.bench.runner import Row, check_provider, environment, run, run_provider

__all__ = [
    "COMPILE_SAMPLE",
    "DTYPES",
    "FUSED_OPS",
    "OPS",
    "Case",
    "Prepared",
    "Row",
    "Skip",
    "Timing",
    "backend_names",
    "backend_of",
    "check_provider",
    "copy_bandwidth",
    "count_launches",
    "default_cases",
    "default_compile",
    "default_device",
    "eager_interpolate",
    "eager_normalize",
    "eager_penalty",
    "eager_r1",
    "eager_wgan_gp",
    "environment",
    "format_markdown",
    "format_table",
    "is_fastgp_kernel",
    "is_fused",
    "is_kernel",
    "make_critic",
    "measure",
    "measure_host",
    "merge",
    "op_cases",
    "output_stem",
    "plot",
    "prepare",
    "provider_names",
    "run",
    "run_provider",
    "select_cases",
    "synchronize",
    "table_columns",
    "write_json",
]
