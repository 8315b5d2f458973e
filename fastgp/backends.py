"""The one place a backend is chosen: by device, by `FASTGP_BACKEND`, and by what is installed.

Every backend is a module with the functions of `fastgp.reference` (`interpolate`,
`grad_norms`, `penalty_from_grad`, `normalize`) and the same signatures.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from fastgp import reference

NAMES = ("torch", "triton", "cuda")
ENV_VAR = "FASTGP_BACKEND"

_MODULES = {"torch": "fastgp.reference", "triton": "fastgp.ops", "cuda": "fastgp._cuda"}
# Tried in this order for `auto` on CUDA tensors.
_AUTO_ON_CUDA = ("triton", "cuda")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run in this process and, if not, why not."""

    name: str
    available: bool
    detail: str


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _why_not(name: str, device: torch.device | None) -> str | None:
    """None if backend `name` runs on tensors of `device` (any device if None), else the reason."""
    if name == "torch":
        return None
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (pip install 'fastgp[triton]')"
        if device is None:
            if torch.cuda.is_available() or _triton_interpreted():
                return None
            return "no CUDA device, and TRITON_INTERPRET=1 is not set"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and _triton_interpreted():
            return None
        return f"Triton kernels run on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), not on {device.type}"
    if name == "cuda":
        from fastgp import _cuda  # imports torch only; the extension itself loads on first use

        return _cuda.why_not(device)
    raise AssertionError(name)


def backends() -> dict[str, BackendStatus]:
    """Which of the backends can run here, and why not: ``{name: BackendStatus}``."""
    out = {}
    for name in NAMES:
        reason = _why_not(name, None)
        if reason is None:
            detail = {"torch": lambda: "runs on any device", "triton": _triton_detail, "cuda": _cuda_detail}[name]()
            out[name] = BackendStatus(name, True, detail)
        else:
            out[name] = BackendStatus(name, False, reason)
    return out


def _triton_detail() -> str:
    import triton

    where = "CUDA tensors" if torch.cuda.is_available() else "CPU tensors through the interpreter"
    return f"triton {triton.__version__}, on {where}"


def _cuda_detail() -> str:
    from fastgp import _cuda

    return _cuda.status()[1]


def requested(backend: str) -> str:
    """`backend`, with `auto` replaced by `FASTGP_BACKEND` when that is set."""
    if backend != "auto":
        return backend
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env not in (*NAMES, "auto"):
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(map(repr, (*NAMES, 'auto')))}, got {env!r}")
    return env or "auto"


def backend_for(device: torch.device | str, backend: str = "auto") -> str:
    """The name of the backend that `backend` (default ``"auto"``) runs on tensors of `device`.

    ``auto`` is `FASTGP_BACKEND` when set, else the first of triton, cuda that runs on CUDA tensors,
    else torch. Raises ValueError if the backend cannot run there, saying why.
    """
    device = device if isinstance(device, torch.device) else torch.device(device)
    name = requested(backend)
    if torch.compiler.is_compiling() or not isinstance(name, str):
        return _resolve(device, name)
    # Every call of the public functions asks this; past the environment, the answer depends only on
    # what is installed, which does not change while the process runs.
    key = (device, name, _triton_interpreted() if name == "triton" and device.type != "cuda" else None)
    chosen = _chosen.get(key)
    if chosen is None:
        chosen = _chosen[key] = _resolve(device, name)
    return chosen


# Backends chosen so far, by (device, backend asked for after FASTGP_BACKEND, TRITON_INTERPRET where
# it matters). Only answers, not refusals: a refusal is explained again on the next call.
_chosen: dict[tuple[torch.device, str, bool | None], str] = {}


def _resolve(device: torch.device, name: str) -> str:
    if name not in (*NAMES, "auto"):
        raise ValueError(f"backend must be one of {', '.join(map(repr, (*NAMES, 'auto')))}, got {name!r}")
    if name == "auto":
        name = "torch"
        if device.type == "cuda":
            name = next((n for n in _AUTO_ON_CUDA if _why_not(n, device) is None), "torch")
    reason = _why_not(name, device)
    if reason is not None:
        raise ValueError(f"backend={name!r} cannot run here: {reason}")
    return name


def select(backend: str, device: torch.device) -> ModuleType:
    """The backend module for tensors on `device`; raises ValueError if `backend` cannot run there."""
    name = backend_for(device, backend)
    return _loaded.get(name) or _load(name)


# importlib is opaque to torch.compile (a graph break, an error under fullgraph=True), so a backend is
# imported once and then read from this dict; the reference is always there.
_loaded: dict[str, ModuleType] = {"torch": reference}


def _load(name: str) -> ModuleType:
    _loaded[name] = importlib.import_module(_MODULES[name])
    return _loaded[name]
