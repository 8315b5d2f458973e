"""`fastgp bench`: every backend side by side on the cases of `fastgp.bench`; a table, a JSON and a PNG."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from fastgp import bench
from fastgp.cli._args import threads


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="speed of every backend side by side",
        description="Time fastgp's backends against eager PyTorch and torch.compile on the penalty head, the "
        "interpolation, GN/PGN, a whole WGAN-GP discriminator step and R1 with a shared forward. Every provider "
        "is checked against eager before it is timed. Prints a table and writes a JSON and a PNG into --out. "
        "The header names the device, the versions (fastgp's with its git commit, '?' when fastgp does not run "
        "from a git checkout) and the date.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny CPU set that runs in under a minute (no torch.compile)"
    )
    parser.add_argument(
        "--cases",
        default=None,
        metavar="PATTERNS",
        help="comma-separated globs or substrings of case ids, e.g. 'penalty/linf/*,interpolate' (see --list)",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one; cpu with --quick)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("fastgp-bench"),
        help="folder for the JSON and PNG (default: ./fastgp-bench)",
    )
    parser.add_argument(
        "--compile",
        choices=("all", "one", "none"),
        default=None,
        help="which cases time torch.compile: all (default on CUDA), one (default on CPU: "
        f"{bench.COMPILE_SAMPLE.id}), none (default with --quick)",
    )
    parser.add_argument(
        "--providers",
        default=None,
        metavar="NAMES",
        help="comma-separated providers to keep, e.g. 'eager,fastgp-triton' (default: all)",
    )
    parser.add_argument(
        "--rep-ms",
        type=float,
        default=None,
        help="time spent repeating each provider (default 100 ms; 200 with --quick; --host: 300, 50 with --quick)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default on a CPU: 1, steadier on a shared machine; on CUDA: torch's)",
    )
    parser.add_argument(
        "--host",
        action="store_true",
        help="host time instead: CPU µs per call of fastgp and of the eager code it replaces, against the host "
        "goals (without a GPU, Triton runs host-only launches for sm_90)",
    )
    parser.add_argument("--list", action="store_true", help="print the selected case ids and exit")
    parser.set_defaults(func=run)


def _progress(items: Iterable[tuple[bench.Case, str]]) -> Iterator[tuple[bench.Case, str]]:
    from tqdm import tqdm

    items = list(items)
    with tqdm(items, unit="run", file=sys.stderr, dynamic_ncols=True, desc="fastgp bench") as bar:
        for case, provider in bar:
            bar.set_postfix_str(f"{case.id} {provider}", refresh=True)
            yield case, provider


def run(args: argparse.Namespace) -> int:
    if args.host:
        return _run_host(args)
    device = torch.device(args.device or ("cpu" if args.quick else bench.default_device()))
    cases = bench.select_cases(bench.default_cases(device, quick=args.quick), args.cases)
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fastgp bench: --device cuda, but no CUDA device is visible (try --device cpu)", file=sys.stderr)
        return 2
    if not cases:
        print(f"fastgp bench: no case matches --cases {args.cases!r} (see --list)", file=sys.stderr)
        return 2
    providers = [p.strip() for p in args.providers.split(",")] if args.providers else None
    compile_policy = args.compile or bench.default_compile(device, quick=args.quick)
    rep_ms = args.rep_ms or (200.0 if args.quick else 100.0)
    # On a shared CPU, OpenMP threads waiting on each other turn other people's load into 10-100x outliers.
    with threads(args.threads or (1 if device.type == "cpu" else None)):
        results: dict[str, Any] = bench.run(
            cases,
            device,
            compile=compile_policy,
            providers=providers,
            rep_ms=rep_ms,
            progress=_progress,
            quick=args.quick,
        )
    lines = bench.format_table(results).splitlines()
    # The header prints fastgp's version with its git commit, or "(?)" without one: say so beneath it.
    unknown = [i for i, line in enumerate(lines) if "fastgp" in line and "(?)" in line]
    if unknown:
        lines.insert(unknown[0] + 1, "(?): fastgp's git commit is unknown (it does not run from a git checkout)")
    print("\n".join(lines))
    stem = bench.output_stem(results)
    json_path = bench.write_json(results, args.out / f"{stem}.json")
    png_path = bench.plot(results, args.out / f"{stem}.png")
    print(f"\nwrote {json_path} and {png_path}")
    return _exit_status(results)


def _exit_status(results: dict[str, Any]) -> int:
    """1 if any provider was wrong or failed (reported on stderr), else 0; missed targets are not failures."""
    bad = [r for r in results["rows"] if r["status"] in ("wrong", "error")]
    for r in bad:
        print(f"{r['status'].upper()}: {r['case']} {r['provider']}: {r['reason']}", file=sys.stderr)
    return 1 if bad else 0


def _run_host(args: argparse.Namespace) -> int:
    from fastgp import _hosttime
    from fastgp.bench import host

    device = torch.device(args.device or bench.default_device())
    goals = [g for g in host.GOALS if not args.cases or any(p.strip() in f"{g.name} {g.case.id}" for p in
                                                            args.cases.split(","))]  # fmt: skip
    if args.list:
        print("\n".join(f"{g.name}: {g.case.id}" for g in goals))
        return 0
    if not goals:
        print(f"fastgp bench --host: no goal matches --cases {args.cases!r} (see --list)", file=sys.stderr)
        return 2
    if device.type != "cuda":
        try:
            _hosttime.enable()
        except (ImportError, RuntimeError) as exc:  # the Triton rows then say why they are missing
            print(f"fastgp bench --host: no host-only Triton launches: {exc}", file=sys.stderr)
    rep_ms = args.rep_ms or (50.0 if args.quick else 300.0)
    with threads(args.threads or (1 if device.type == "cpu" else None)):
        # The D steps take milliseconds: enough rounds that a 2% goal is not decided by a few noisy ones.
        results = host.run(device, goals=goals, rep_ms=rep_ms, min_rounds=5 if args.quick else 60, quick=args.quick)
    print(bench.format_table(results))
    json_path = bench.write_json(results, args.out / f"{bench.output_stem(results)}.json")
    print(f"\nwrote {json_path}")
    return _exit_status(results)
