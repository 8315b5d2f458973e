"""What the commands share: argument types and the thread setting they train or time under."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


@dataclass(frozen=True)
class Profiles:
    """A command's settings whose defaults depend on --quick: the full run's values and the quick run's."""

    default: Mapping[str, float]
    quick: Mapping[str, float]

    def add(self, parser: argparse.ArgumentParser, flag: str, kind: Callable[[str], Any], what: str) -> None:
        """An option for one profiled setting, its help saying both defaults."""
        key = flag.lstrip("-").replace("-", "_")
        help_ = f"{what} (default {self.default[key]:g}, --quick {self.quick[key]:g})"
        parser.add_argument(flag, type=kind, default=None, help=help_)

    def resolve(self, args: argparse.Namespace) -> dict[str, Any]:
        """Each profiled setting: the value given on the command line, else the (quick) profile's."""
        profile = self.quick if args.quick else self.default
        return {key: value if getattr(args, key) is None else getattr(args, key) for key, value in profile.items()}


@contextmanager
def threads(n: int | None = 1) -> Iterator[None]:
    """`n` intra-op threads inside the block (None: leave them), restored after it. On small MLPs the threads
    cost more than they give, and on a loaded 2-core machine two threads made a demo step 40x slower (2 s
    instead of 50 ms) and benchmark timings 10-100x noisier in our measurements."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
