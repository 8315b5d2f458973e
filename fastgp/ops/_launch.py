"""Launching a Triton kernel with little host work: its compiled kernel, cached per specialisation.

``kernel[grid](*args, **meta)`` costs the host 7-10 µs in Triton's generic path (binding every
argument, building and hashing its cache key, checking globals, launch metadata), as much as the
whole eager op it replaces on a small input. A `Launcher` keys its own cache on everything Triton
specialises a kernel on, computed directly: the device; each tensor's dtype and its address modulo
16; each integer's value, or its type (i32, i64, u64) for a ``do_not_specialize`` parameter; the
types of floats and bools; the constexprs and options. The first call with a new key goes through
Triton's own path (which compiles if needed) and keeps the `CompiledKernel` it returns; later calls
hand that kernel straight to its launcher, as Triton's path would. Runtime arguments are passed
positionally; the constexprs and options come as one `Meta`, made once per kind of launch
(`Launcher.meta`) and keyed on by identity, so that no launch builds, hashes or binds them
again. tests/triton_host_launch.py checks, on host-only launches for sm_90 (`fastgp._hosttime`),
that every launch of every op uses the very kernel Triton's own binder would pick.

Triton's generic path is used instead where that cannot be done the same way: interpreted kernels
(``TRITON_INTERPRET=1``), Triton releases before 3.3 (a different launcher calling convention),
and launches while a profiler has registered launch hooks or pre-run hooks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import triton
from torch import Tensor
from triton.runtime import driver
from triton.runtime.jit import JITFunction


def _version(text: str) -> tuple[int, int]:
    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:2])
    return major, minor


# From 3.3 on, Triton passes every parameter, constexprs included, to the launcher, and keeps the
# launch hooks in `triton.knobs` (before: the non-constexpr arguments only, hooks on CompiledKernel).
CACHED = _version(triton.__version__) >= (3, 3) and hasattr(triton, "knobs")


def _int_type(x: int) -> int:
    """Triton's type for an integer argument: 0 (i32), 1 (i64) or 2 (u64)."""
    return 0 if -(2**31) <= x < 2**31 else 1 if x < 2**63 else 2


# Entries kept per kernel: one per shape in practice; a process that sees many shapes starts over.
_MAX_ENTRIES = 4096


def _hooked(kernel: JITFunction) -> bool:
    """True when someone listens to launches (a profiler): only Triton's own path tells them."""
    for hook in (_RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # a function, or a non-empty HookChain
            return True
    return bool(kernel.pre_run_hooks)


_RUNTIME = triton.knobs.runtime if CACHED else None


class Meta:
    """The constexprs and options of one kind of launch of a `Launcher` (`Launcher.meta`): one
    object per distinct set, so that launches key on it by identity."""

    __slots__ = ("constexprs", "kwargs")

    def __init__(self, kwargs: dict[str, Any], constexprs: tuple) -> None:
        self.kwargs = kwargs  # by name, for Triton's own path
        self.constexprs = constexprs  # every constexpr in parameter order, for the compiled kernel

    def __repr__(self) -> str:
        return f"Meta({self.kwargs})"


def _generic_key(keyed: tuple[tuple[int, bool], ...], device: int, args: tuple, meta: Meta) -> tuple:
    """`Launcher.key` for any arguments: `keyed` holds (position, specialised) of each keyed one."""
    key: list = [device, meta]
    for i, specialize in keyed:
        a = args[i]
        kind = a.__class__
        if kind is int:
            key.append(a if specialize else _int_type(a))
        elif kind is float or kind is bool:  # typed, never specialised on their value
            key.append(kind)
        elif isinstance(a, Tensor):
            key.append(a.dtype)
            key.append(a.data_ptr() % 16)
        else:
            key.append(a)
    return tuple(key)


def _key_function(keyed: tuple[tuple[int, bool], ...], args: tuple) -> Callable[[int, tuple, Meta], tuple]:
    """`_generic_key` written out for arguments of the kinds of `args` (a plain Tensor, int, float,
    bool or None at each keyed position): the same key, from one tuple expression behind a test of
    each argument's kind, about a quarter cheaper than the loop. Arguments of other kinds take `_generic_key`."""
    tests, parts = [], ["device", "meta"]
    for i, specialize in keyed:
        a, name = args[i], f"args[{i}]"
        kind = a.__class__
        if kind is Tensor:
            tests.append(f"{name}.__class__ is Tensor")
            parts += [f"{name}.dtype", f"{name}.data_ptr() % 16"]
        elif kind is int:
            tests.append(f"{name}.__class__ is int")
            # `_int_type`, inlined
            parts.append(
                name if specialize else f"(0 if -{2**31} <= {name} < {2**31} else 1 if {name} < {2**63} else 2)"
            )
        elif kind is float or kind is bool:
            tests.append(f"{name}.__class__ is {kind.__name__}")
            parts.append(kind.__name__)
        elif a is None:
            tests.append(f"{name} is None")
            parts.append("None")
        else:
            return functools.partial(_generic_key, keyed)
    source = (
        "def key(device, args, meta):\n"
        f"    if {' and '.join(tests) or 'True'}:\n"
        f"        return ({', '.join(parts)})\n"
        "    return generic(keyed, device, args, meta)\n"
    )
    namespace: dict[str, Any] = {"Tensor": Tensor, "generic": _generic_key, "keyed": keyed}
    exec(source, namespace)  # the source holds names and kinds only, never an argument's value
    return namespace["key"]


class Launcher:
    """Launches one Triton kernel on a 1-D grid: ``launcher(grid, meta, *args)``, `meta` from `meta`.

    Runs on the device of the first argument (a tensor), switching the current CUDA device only
    when it differs, and on that device's current stream. `fixed` names the parameters whose
    specialisation never changes from call to call, left out of the key (a few hundred ns each):
    pointers that every call fills with a tensor it has just allocated (16-byte aligned) of a dtype
    that follows from the other arguments, ``do_not_specialize`` integers always in int32 range,
    and parameters that always receive a Python float.
    """

    def __init__(self, kernel: Any, fixed: tuple[str, ...] = ()) -> None:
        self.kernel = kernel
        self.cached = CACHED and isinstance(kernel, JITFunction)
        self._cache: dict[tuple, Any] = {}
        self._metas: dict[tuple, Meta] = {}
        self._constexprs: tuple = ()  # the compiled kernel's, cached launches only
        if self.cached:
            runtime = [p for p in kernel.params if not p.is_constexpr]
            self._constexprs = tuple(p for p in kernel.params if p.is_constexpr)
            # Positional runtime arguments then keyword constexprs map onto the parameters only
            # when every constexpr comes after the runtime parameters.
            if any(p.is_constexpr for p in kernel.params[: len(runtime)]):
                raise TypeError(f"{kernel.__name__}: constexpr parameters must come last")
            unknown = set(fixed) - {p.name for p in runtime}
            if unknown:
                raise TypeError(f"{kernel.__name__} has no parameters {sorted(unknown)}")
            # (position, specialised) of every runtime argument that enters the key.
            self._keyed = tuple((p.num, not p.do_not_specialize) for p in runtime if p.name not in fixed)
            self._fast_key: Callable[[int, tuple, Meta], tuple] | None = None

    def meta(self, **kwargs: Any) -> Meta:
        """The `Meta` of these constexprs and options (``num_warps`` ...): the same object for the
        same values. Ops make theirs once per kind of launch (functools.cache) and pass it on."""
        key = tuple((k, v.__class__, v) for k, v in sorted(kwargs.items()))  # 1, 1.0, True: three keys
        meta = self._metas.get(key)
        if meta is None:
            if len(self._metas) >= _MAX_ENTRIES:
                self._metas.clear()
            constexprs = tuple(kwargs.get(p.name, p.default) for p in self._constexprs)
            meta = self._metas[key] = Meta(kwargs, constexprs)
        return meta

    def __call__(self, grid: int, meta: Meta, *args: Any) -> None:
        device = args[0].get_device()
        if device >= 0 and device != torch.cuda.current_device():
            with torch.cuda.device(device):
                return self(grid, meta, *args)
        # One function, no helpers called on the way: a call costs the host most where its code
        # is not in the CPU's caches, as between the steps of a training loop.
        kernel = self.kernel
        if not self.cached or _hooked(kernel):
            kernel[(grid,)](*args, **meta.kwargs)
            return None
        key = (self._fast_key or self._first_key(args))(device, args, meta)
        compiled = self._cache.get(key)
        if compiled is None:
            self._compile(key, grid, args, meta)
            return None
        active = driver.active
        # CPU tensors reach a compiled kernel only through host-only launches (fastgp._hosttime).
        stream = active.get_current_stream(device if device >= 0 else active.get_current_device())
        compiled.run(
            grid, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None, *args, *meta.constexprs
        )
        return None

    def _first_key(self, args: tuple) -> Callable[[int, tuple, Meta], tuple]:
        self._fast_key = _key_function(self._keyed, args)
        return self._fast_key

    def key(self, device: int, args: tuple, meta: Meta) -> tuple:
        """A key at least as fine as Triton's specialisation of this launch (see the module docstring);
        `device` is the CUDA device index, -1 for CPU tensors.

        Specialised integers enter with their value (one entry per shape, cheaper to build than
        Triton's classes), the others with their type only. The first call writes a function that
        builds the same key for arguments of the kinds it saw, with no loop (`_key_function`).
        """
        return (self._fast_key or self._first_key(args))(device, args, meta)

    def _compile(self, key: tuple, grid: int, args: tuple, meta: Meta) -> None:
        """Triton's own launch, which compiles on first use; keep the kernel it ran."""
        compiled = self.kernel.run(*args, grid=(grid,), warmup=False, **meta.kwargs)
        if compiled is not None and not hasattr(compiled, "result"):  # not a pending async compile
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = compiled

    def compiled(self, meta: Meta, *args: Any) -> Any:
        """The `CompiledKernel` this launcher uses for these arguments (None before their first launch)."""
        return self._cache.get(self.key(args[0].get_device(), args, meta))
