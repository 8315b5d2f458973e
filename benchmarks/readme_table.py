"""Print the Markdown table of a `fastgp bench` results JSON, for the README (generated, never hand-typed).

    python benchmarks/readme_table.py benchmarks/results/bench-<device>-<date>.json [...] [--ops penalty,interpolate]

Several JSONs from one device (a GPU run split by ``fastgp bench --cases``) make one table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# A script in the checkout reads the checkout's fastgp, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastgp import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSONs written by `fastgp bench` on one device")
    parser.add_argument("--ops", default=None, help=f"comma-separated ops to keep ({', '.join(bench.OPS)})")
    args = parser.parse_args(argv)
    results = bench.merge([json.loads(path.read_text()) for path in args.results])
    ops = [o.strip() for o in args.ops.split(",")] if args.ops else None
    sys.stdout.write(bench.format_markdown(results, ops=ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
