"""What the fused ops share: reading a (B, *S) tensor as B rows, cutting rows into chunks, and the
per-row norm pieces of SPEC.md §3 that `penalty.py` and `normalize.py` both reduce.

Layout: see `fastgp._layout` (shared with the CUDA backend).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastgp.reference import acc_dtype as acc_dtype  # one rule for every backend

# Defaults for H100, read at call time (tests shrink them to exercise many chunks per row).
# A program reads CHUNK = BLOCK_SIZE * TILES_PER_CHUNK = 8192 entries of one row: the partials
# workspace is then under 0.05% of the traffic, and a 64×3×256×256 gradient (d = 196608) still
# spreads over 64·24 = 1536 programs, ~12 per SM on 132 SMs, instead of 64. BLOCK_SIZE 1024 on
# 4 warps is 8 entries per thread: two 16-byte loads in fp32, one in fp16/bf16.
BLOCK_SIZE = 1024
TILES_PER_CHUNK = 8
NUM_WARPS = 4
# Rows the finishing program (the last one to arrive) reduces per step; it walks B in such steps.
ROWS_PER_STEP = 128

NORM_IDS = {"l2": 0, "l1": 1, "linf": 2}

_TL_ACC = {torch.float64: tl.float64, torch.float32: tl.float32}


class _Counters(threading.local):
    """Each thread's arrival counters, by (device, stream id)."""

    def __init__(self) -> None:
        self.by_stream: dict[tuple[torch.device, int], Tensor] = {}


_COUNTERS = _Counters()


def stream_id(device: torch.device) -> int:
    """The stream a launch on `device` goes to (0 on the CPU, where the interpreter runs it)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


@contextlib.contextmanager
def arrival_counter(device: torch.device) -> Iterator[Tensor]:
    """The int32 counter a one-launch reduction's programs arrive at, held for one launch.

    The counter is zero on entry and the last program to arrive resets it, so no zero-fill
    kernel runs per call. That is sound only if no two launches ever count on it at once, and
    only if every launch that starts counting finishes:

    - Launches that share a counter come from one thread onto one stream (one per thread,
      device and stream), so the stream orders them. Threads, and streams, never share one.
    - Under CUDA-graph capture the launch gets a counter of its own, allocated from the graph's
      private pool and zeroed by a fill captured just before it. A graph may be replayed on any
      stream, concurrently with other graphs captured on the same stream: no replay shares its
      counter with any other graph or with eager launches, and each replay starts from zero.
    - A launch that raised part-way (the interpreter runs programs one after another in
      Python, so an exception or a signal can stop it with some programs arrived) may have left
      the count non-zero: its counter is dropped and the next launch makes a fresh one. On a GPU
      a kernel that started runs to completion unless the context dies with it.

    A fresh zero-filled counter per call would be just as safe and cost a fill launch per call;
    a counter never reset, with tickets compared modulo the grid, is not safe in either case
    above (an interleaved or interrupted launch shifts every later ticket).
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        yield torch.zeros(1, dtype=torch.int32, device=device)
        return
    counters = _COUNTERS.by_stream
    key = (device, stream_id(device))
    counter = counters.get(key)
    if counter is None:
        counter = counters[key] = torch.zeros(1, dtype=torch.int32, device=device)
    try:
        yield counter
    except BaseException:
        counters.pop(key, None)
        raise


def on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device, not the tensor's: make them the same."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def tl_acc(dtype: torch.dtype) -> tl.dtype:
    """The Triton accumulation type for a torch accumulation dtype."""
    return _TL_ACC[dtype]


def chunking(d: int) -> tuple[int, int, int]:
    """``(block, tiles, n_chunks)``: a program reads ``tiles`` blocks of ``block`` entries of a row.

    Short rows get one program each (block shrinks to the row); long rows are split.
    """
    block = max(16, min(BLOCK_SIZE, triton.next_power_of_2(max(d, 1))))
    tiles = max(1, min(TILES_PER_CHUNK, triton.cdiv(d, block)))
    return block, tiles, max(1, triton.cdiv(d, block * tiles))


def split_float(x: float) -> tuple[float, float]:
    """``x`` as two float32 numbers ``hi + lo``.

    Triton passes Python floats as float32; a float64 kernel adds the two halves back in float64
    (48 bits, enough for SPEC.md's 1e-10), with no host-to-device copy, so CUDA graphs stay legal.
    """
    hi = struct.unpack("f", struct.pack("f", x))[0] if abs(x) < 3.0e38 else x
    return hi, x - hi


# ---------------------------------------------------------------------------------------------
# Loops whose bound is a runtime value are written as `while` loops: Triton 3.6's interpreter
# keeps scalars as 1-element arrays, which `range()` cannot take under numpy >= 2.3, and the
# compiled code is the same loop either way.
#
# Per-row norm pieces (SPEC.md §3). A chunk's partial is Σg² (l2), Σ|g| (l1) or, for linf, the
# chunk's max |g| and the count of entries equal to it, so that the tie count k is exact.


@triton.jit
def row_chunk_arrive(
    g_ptr, part_ptr, count_ptr, counter_ptr, stride_row, B, d, n_chunks,
    NORM: tl.constexpr, ONE_MINUS: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILES: tl.constexpr, ACC: tl.constexpr,
):
    """The first half of a one-launch reduction: this program reduces its chunk of its row into the
    workspace, then arrives at the counter. True for the last program to arrive, which sees every
    partial and leaves the counter at zero for the next launch."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    start = (pid % n_chunks) * (BLOCK_SIZE * TILES)
    value, count = chunk_partial(g_ptr + row * stride_row, start, d, NORM, ONE_MINUS, BLOCK_SIZE, TILES, ACC)
    tl.store(part_ptr + pid, value)
    if NORM == 2:
        tl.store(count_ptr + pid, count)
    # Every thread's partial is written before the counter moves; acq_rel makes the last
    # program see all of them.
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    last = arrived == B * n_chunks - 1
    if last:
        tl.atomic_xchg(counter_ptr, 0)
    return last


@triton.jit
def chunk_partial(
    row_ptr, start, d, NORM: tl.constexpr, ONE_MINUS: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    TILES: tl.constexpr, ACC: tl.constexpr,
):
    """Partial of entries ``[start, start + TILES·BLOCK_SIZE)`` of one row of g (or of 1 - g)."""
    acc = tl.zeros([BLOCK_SIZE], ACC)
    top = tl.full([BLOCK_SIZE], -1.0, ACC)  # per-lane running max of |g|; -1 below any |g|
    ties = tl.zeros([BLOCK_SIZE], tl.int32)
    for t in range(TILES):
        cols = start + t * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = cols < d
        x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(ACC)
        if ONE_MINUS:
            x = tl.where(mask, 1.0 - x, 0.0)
        if NORM == 0:
            acc += x * x
        elif NORM == 1:
            acc += tl.abs(x)
        else:
            a = tl.where(mask, tl.abs(x), -1.0)
            ties = tl.where(a > top, 1, tl.where(a == top, ties + 1, ties))
            top = tl.where(a > top, a, top)
            acc += tl.where(a == a, 0.0, a)  # NaN survives here: tl.max may drop it on GPU
    if NORM == 2:
        value = tl.max(top, axis=0)
        count = tl.sum(tl.where(top == value, ties, 0), axis=0)
        value += tl.sum(acc, axis=0)
    else:
        value = tl.sum(acc, axis=0)
        count = tl.sum(ties, axis=0)
    return value, count


@triton.jit
def sqrt_acc(x):
    """IEEE-rounded square root in float32 or float64."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def row_norms(part_ptr, count_ptr, rows, row_mask, n_chunks, NORM: tl.constexpr, ACC: tl.constexpr):
    """``(n_i, s_i)`` for a block of rows from their chunk partials, summed in chunk order.

    ``s_i`` is ∂n_i/∂g_i's per-row factor: 1/n (l2), 1 (l1), 1/k (linf), and 0 where n = 0
    (SPEC.md §3). Fixed order and no float atomics: the result is deterministic.
    """
    base = rows.to(tl.int64) * n_chunks
    value = tl.zeros(rows.shape, ACC)
    if NORM == 2:
        value = value - 1.0
    ties = tl.zeros(rows.shape, tl.int32)
    c = 0
    while c < n_chunks:  # `while`, not `for`: see the note on runtime loop bounds above
        # .cg: read the other programs' partials from L2, never from a stale L1 line.
        p = tl.load(part_ptr + base + c, mask=row_mask, other=0.0, cache_modifier=".cg")
        if NORM == 2:
            k = tl.load(count_ptr + base + c, mask=row_mask, other=0, cache_modifier=".cg")
            take = (p > value) | (p != p)
            ties = tl.where(take, k, tl.where(p == value, ties + k, ties))
            value = tl.where(take, p, value)
        else:
            value += p
        c += 1
    if NORM == 0:
        n = sqrt_acc(value)
        factor = 1.0 / tl.where(n == 0, 1.0, n)
    elif NORM == 1:
        n = value
        factor = tl.full(rows.shape, 1.0, ACC)
    else:
        n = value
        factor = 1.0 / tl.maximum(ties, 1).to(ACC)
    factor = tl.where(n == 0, 0.0, factor).to(ACC)
    return n, factor


@triton.jit
def norm_direction(x, n, NORM: tl.constexpr):
    """∂n/∂x divided by the per-row factor: x (l2), sign(x) (l1), sign(x)·[|x| = n] (linf)."""
    sign = (x > 0).to(x.dtype) - (x < 0).to(x.dtype)
    sign = tl.where(x != x, x, sign)
    if NORM == 0:
        out = x
    elif NORM == 1:
        out = sign
    else:
        out = tl.where(tl.abs(x) == n, sign, 0.0)
    return out


@triton.jit
def nan_max(x):
    """Max of a block that is NaN when any entry is NaN (tl.max may ignore NaN on GPU)."""
    return tl.max(x, axis=0) + tl.sum(tl.where(x == x, 0.0, x), axis=0)
