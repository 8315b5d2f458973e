"""`fastgp <command>`: each command is a module here with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "margins", "bench", "info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgp", description="Fused gradient penalties for GANs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        importlib.import_module(f"fastgp.cli.{name}").register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
