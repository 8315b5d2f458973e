"""Cases: what is timed, on which shapes, and the GPU targets each case is held to."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp64": torch.float64,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
OPS = ("penalty", "interpolate", "normalize", "wgan_step", "r1")
# The ops fastgp fuses: each has a mandatory traffic (roofline), a torch.compile baseline and GPU targets.
FUSED_OPS = ("penalty", "interpolate", "normalize")
# Passes over the (B, d) tensor that no implementation can avoid. penalty fwd+bwd: read g (fwd), read g and
# write ∂P/∂g (bwd). interpolate (fwd): read real and fake, write x̂. normalize fwd+bwd: as the penalty.
PASSES = {"penalty": 3, "interpolate": 3, "normalize": 3}

TRAFFIC_TARGET_BYTES = 2**28  # "≥ 256 MB of traffic": the roofline target applies from here on
LAUNCH_BOUND_NUMEL = 2**20  # B·d at or under this is launch-bound
ROOFLINE_TARGET = 0.90
LAUNCH_BOUND_SPEEDUP = 3.0
PENALTY_LAUNCHES = 2
# Measured-win targets on (64, 3, 256, 256) fp32 for the penalty head, per norm.
MID_SHAPE = (64, 3, 256, 256)
MID_SPEEDUP = {"linf": 2.5, "l1": 1.5, "l2": 1.1}


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration.

    `shape` is the shape of the big tensor: ``g`` for penalty/normalize, ``real``/``fake`` for interpolate and
    the two discriminator steps. `variant` is the normalize mode (``gn``/``pgn``) or the critic (``dcgan``,
    ``mlp``) of a step; `width` the critic's width.
    """

    op: str
    shape: tuple[int, ...]
    dtype: str = "fp32"
    norm: str = "l2"
    variant: str = ""
    width: int = 0

    @property
    def id(self) -> str:
        """Stable name used by ``--cases``, pytest ids and the JSON, e.g. ``penalty/linf/bf16/64x3x32x32``."""
        dims = "x".join(map(str, self.shape))
        if self.op == "penalty":
            what = self.norm
        elif self.op == "normalize":
            what = f"{self.variant}-{self.norm}"
        elif self.op in ("wgan_step", "r1", "gradient_penalty"):
            what = f"{self.variant}{self.width}"
        else:
            return f"{self.op}/{self.dtype}/{dims}"
        return f"{self.op}/{what}/{self.dtype}/{dims}"

    def __str__(self) -> str:
        return self.id

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def traffic_bytes(self) -> int | None:
        """Mandatory device-memory traffic of a fused op (None for the whole steps)."""
        if self.op not in PASSES:
            return None
        return PASSES[self.op] * self.numel * self.torch_dtype.itemsize

    @property
    def launch_bound(self) -> bool:
        return self.numel <= LAUNCH_BOUND_NUMEL


def default_device() -> torch.device:
    """`FASTGP_BENCH_DEVICE` if set, else CUDA when there is a device, else the CPU."""
    name = os.environ.get("FASTGP_BENCH_DEVICE", "").strip()
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def default_compile(device: torch.device | str, *, quick: bool = False) -> str:
    """The torch.compile policy: every case on CUDA, `COMPILE_SAMPLE` only on a CPU, none for --quick."""
    if quick:
        return "none"
    return "all" if torch.device(device).type == "cuda" else "one"


def default_cases(device: torch.device | str, *, quick: bool = False) -> list[Case]:
    """The case list for `device`: the full shapes on CUDA, small ones on the CPU, a tiny set for --quick.

    The big shapes run only on CUDA: on the CPU (2 shared cores in CI) they would take minutes per case and
    say nothing about the GPU kernels.
    """
    device = torch.device(device)
    norms = ("l2", "l1", "linf")
    if quick:
        small, tabular = (64, 3, 32, 32), (256, 2)
        return [
            *(Case("penalty", s, "fp32", n) for s in (small, tabular) for n in norms),
            Case("interpolate", small, "fp32"),
            *(Case("normalize", small, "fp32", "l2", m) for m in ("gn", "pgn")),
            Case("wgan_step", (256, 2), "fp32", variant="mlp", width=128),
            Case("r1", (256, 2), "fp32", variant="mlp", width=128),
        ]
    if device.type == "cuda":
        shapes = [(64, 3, 32, 32), MID_SHAPE, (256, 2), (8, 3, 1024, 1024)]
        dtypes = ("fp32", "bf16", "fp16")
        dcgan, mlp = 128, 512
    else:
        shapes = [(64, 3, 32, 32), (256, 2)]
        dtypes = ("fp32", "bf16")
        dcgan, mlp = 16, 128
    return [
        *(Case("penalty", s, d, n) for s in shapes for n in norms for d in dtypes),
        *(Case("interpolate", s, d) for s in shapes for d in dtypes),
        *(Case("normalize", s, d, "l2", m) for s in shapes for m in ("gn", "pgn") for d in dtypes),
        Case("wgan_step", (64, 3, 32, 32), "fp32", variant="dcgan", width=dcgan),
        Case("wgan_step", (256, 2), "fp32", variant="mlp", width=mlp),
        Case("r1", (64, 3, 32, 32), "fp32", variant="dcgan", width=dcgan),
        Case("r1", (256, 2), "fp32", variant="mlp", width=mlp),
    ]


def op_cases(op: str, device: torch.device | str | None = None) -> list[Case]:
    """The default cases of one op on `device` (`default_device()` when None): one pytest file's parameters."""
    return [c for c in default_cases(default_device() if device is None else device) if c.op == op]


def select_cases(cases: Iterable[Case], patterns: str | Sequence[str] | None) -> list[Case]:
    """Cases whose id matches any of the comma-separated `patterns` (a glob, or a substring of the id)."""
    if not patterns:
        return list(cases)
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) or p in c.id for p in patterns)]


# The one case whose torch.compile provider runs under compile="one": compiling takes 10-60 s per case on a
# CPU, so CPU runs compile this one and report the others as skipped.
COMPILE_SAMPLE = Case("penalty", (64, 3, 32, 32), "fp32", "l2")
