"""`fastgp info`: versions, devices, and which backends run here (and why not)."""

from __future__ import annotations

import argparse
import platform

import torch

import fastgp


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="versions, devices and available backends")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"fastgp  {fastgp.__version__}")
    print(f"python  {platform.python_version()}")
    print(f"torch   {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    try:
        import triton

        print(f"triton  {triton.__version__}")
    except ImportError:
        print("triton  not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = ".".join(map(str, torch.cuda.get_device_capability(i)))
            print(f"device  cuda:{i} {torch.cuda.get_device_name(i)} (sm_{cap.replace('.', '')})")
    else:
        print("device  cpu only (no CUDA device visible)")
    print("backends:")
    for status in fastgp.backends().values():
        mark = "yes" if status.available else "no "
        print(f"  {status.name:<7} {mark}  {status.detail}")
    return 0
