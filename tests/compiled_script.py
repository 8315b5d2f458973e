"""Run one of the test scripts that lower kernels through Triton's real compiler, in a process
without TRITON_INTERPRET (the interpreter would replace the kernels they compile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: float) -> str:
    """`tests/<script>`'s output; skips the test when this Triton has no ptxas, fails on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 and "ptxas" in out and ("not found" in out or "No such file" in out):
        pytest.skip("this Triton install has no ptxas to lower kernels with")
    assert proc.returncode == 0, out[-4000:]
    return out
