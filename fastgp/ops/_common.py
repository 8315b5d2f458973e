"""What the fused ops share: reading a (B, *S) tensor as B rows, cutting them into programs (`plan`),
finding the last program of a one-launch reduction (`arrival_counter`), and the per-row norm
pieces of SPEC.md §3 that `penalty.py` and `normalize.py` both reduce.

Layout: see `fastgp._layout` (shared with the CUDA backend).
"""

from __future__ import annotations

import contextlib
import functools
import struct
import threading
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime import driver

from fastgp.reference import acc_dtype as acc_dtype  # one rule for every backend

# Defaults read at call time (tests shrink them to exercise many chunks per row and many steps).
# BLOCK_SIZE is the tile of 4-byte entries: 1024 entries = 4 KB, on 4 warps two 16-byte loads per
# thread. The reductions keep the tile at 4 KB whatever the dtype (2048 fp16/bf16 entries, 512
# fp64). A chunk is TILES_PER_CHUNK tiles (32 KB): the partials workspace is then under 0.05% of
# the traffic, and a 64×3×256×256 gradient still spreads over 64·24 = 1536 programs.
BLOCK_SIZE = 1024
TILES_PER_CHUNK = 8
NUM_WARPS = 4
# Rows are split into shorter chunks (down to one tile) until the grid has this many programs:
# about four per SM on current GPUs, so that a small batch of long rows still fills the GPU.
MIN_PROGRAMS = 512
# Partials the last program of a split-row reduction loads per step, as one [rows, chunks] tile
# (and the per-program partials of a penalty): the size of a streaming tile, so that the finish
# needs no more registers than the streaming loop it shares a kernel with.
FINISH_TILE = 1024

NORM_IDS = {"l2": 0, "l1": 1, "linf": 2}

_TL_ACC = {torch.float64: tl.float64, torch.float32: tl.float32}


class _Counters(threading.local):
    """Each thread's arrival counters, by (device, stream id)."""

    def __init__(self) -> None:
        self.by_stream: dict[tuple[torch.device, int], Tensor] = {}


_COUNTERS = _Counters()


def stream_id(device: torch.device) -> int:
    """The stream a launch on `device` goes to (0 on the CPU, where the interpreter runs it), as
    Triton's driver reads it (without building a torch.cuda.Stream)."""
    return driver.active.get_current_stream(device.index) if device.type == "cuda" else 0


class arrival_counter:
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

    A class rather than a generator-based context manager: it costs the host a third as much.
    """

    __slots__ = ("_counter", "_key")

    def __init__(self, device: torch.device) -> None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            self._key = None
            self._counter = torch.zeros(1, dtype=torch.int32, device=device)
            return
        counters = _COUNTERS.by_stream
        self._key = (device, stream_id(device))
        counter = counters.get(self._key)
        if counter is None:
            counter = counters[self._key] = torch.zeros(1, dtype=torch.int32, device=device)
        self._counter = counter

    def __enter__(self) -> Tensor:
        return self._counter

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None and self._key is not None:
            _COUNTERS.by_stream.pop(self._key, None)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints (Triton's own is a constexpr function, ~1 µs per host call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``), for host code (see `cdiv`)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def counter_if(counting: bool, device: torch.device, placeholder: Tensor) -> contextlib.AbstractContextManager:
    """`arrival_counter(device)` for a launch whose programs count their arrivals, else
    `placeholder` (a launch of one program, or with nothing to reduce, never reads it)."""
    return arrival_counter(device) if counting else contextlib.nullcontext(placeholder)


def tl_acc(dtype: torch.dtype) -> tl.dtype:
    """The Triton accumulation type for a torch accumulation dtype."""
    return _TL_ACC[dtype]


def chunking(d: int) -> tuple[int, int, int]:
    """``(block, tiles, n_chunks)`` of an elementwise op (interpolation): a program reads ``tiles``
    blocks of ``block`` entries of a row. Short rows get one program each (block shrinks to the
    row); long rows are split. Computed once per row length (and setting of this module's defaults).
    """
    return _chunking(d, BLOCK_SIZE, TILES_PER_CHUNK)


@functools.lru_cache(maxsize=4096)  # one per shape in practice
def _chunking(d: int, block_size: int, tiles_per_chunk: int) -> tuple[int, int, int]:
    block = max(16, min(block_size, next_power_of_2(max(d, 1))))
    tiles = max(1, min(tiles_per_chunk, cdiv(d, block)))
    return block, tiles, max(1, cdiv(d, block * tiles))


class Plan(NamedTuple):
    """How a one-pass reduction over B rows of d entries is cut into programs.

    A program reads ``rows`` consecutive rows of the ``batch`` and, of each, ``tiles`` tiles of
    ``block`` entries (one chunk); ``n_chunks`` programs share a row when rows are split (then
    ``rows`` is 1). The
    last program of a split reduction reads the partials ``frows`` rows × ``fchunks`` chunks at a
    time. ``grid`` is the number of programs, ``warps`` the warps of each.
    """

    batch: int
    rows: int
    block: int
    tiles: int
    n_chunks: int
    warps: int
    frows: int
    fchunks: int

    grid: int  # programs in all: `groups` × n_chunks, kept so that a launch reads it, not computes it

    @property
    def groups(self) -> int:
        """Programs along the batch: groups of ``rows`` rows."""
        return cdiv(self.batch, self.rows)


def plan(B: int, d: int, itemsize: int) -> Plan:
    """The cut of a (B, d) reduction for entries of `itemsize` bytes; a pure function of the
    shape and dtype, so the summation order (and the result) is the same on every call, and no
    runtime autotuning can re-launch a kernel inside a CUDA-graph capture. Computed once per
    shape (and setting of this module's defaults): the host cost of a call is a cache lookup.
    """
    return _plan(B, d, itemsize, BLOCK_SIZE, TILES_PER_CHUNK, NUM_WARPS, MIN_PROGRAMS, FINISH_TILE)


@functools.lru_cache(maxsize=4096)  # one per shape in practice
def _plan(
    B: int, d: int, itemsize: int, block_size: int, tiles_per_chunk: int, num_warps: int, min_programs: int, finish: int
) -> Plan:
    """`plan`, computed (the module's defaults arrive as arguments, so that they key the cache):

    - Short rows (d at most one 4 KB tile): many rows per program, a [rows, block] tile of at
      most 4 KB, and fewer warps when the whole batch is smaller (B=4096, d=2: eight programs of
      512 rows, no atomic per row; B=64, d=2: one program on one warp, no atomic at all).
    - Longer rows: one row per program, up to TILES_PER_CHUNK tiles (a chunk) of it, with chunks
      halved while the grid has fewer than MIN_PROGRAMS programs. A row that fits one chunk is
      reduced by one program, which writes its own norm; longer rows are split over programs
      whose partials the last one reduces, FINISH_TILE at a time.

    The tile is 4 KB whatever the dtype (BLOCK_SIZE entries of 4 bytes), so that on NUM_WARPS
    warps each thread issues two 16-byte loads per tile: enough bytes in flight per SM to reach
    the memory bandwidth with a few programs per SM, few enough registers not to spill.
    """
    block = max(2, block_size * 4 // itemsize)
    if d <= block:
        block = next_power_of_2(max(d, 1))
        rows = min(next_power_of_2(B), max(1, (block_size * 4 // itemsize) // block))
        tiles = n_chunks = 1
    else:
        rows = 1
        tiles = min(tiles_per_chunk, cdiv(d, block))
        while tiles > 1 and B * cdiv(d, block * tiles) < min_programs:
            tiles = cdiv(tiles, 2)
        n_chunks = cdiv(d, block * tiles)
    # Two 16-byte loads per thread per tile: the warps a 4 KB tile needs, fewer for a smaller one.
    warps = min(num_warps, max(1, next_power_of_2(rows * block * itemsize) // 1024))
    fchunks = min(next_power_of_2(n_chunks), finish)
    frows = min(next_power_of_2(B), max(1, finish // fchunks))
    return Plan(B, rows, block, tiles, n_chunks, warps, frows, fchunks, cdiv(B, rows) * n_chunks)


@functools.lru_cache(maxsize=256)  # the same few settings on every call
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
# chunk's max |g| and the count k of entries equal to it, so that the tie count is exact. A
# chunk's count fits int32 (it is at most one chunk); counts summed over chunks are int64, since
# a row may hold more than 2^31 entries.


@triton.jit
def top_ties(x, k, AXIS: tl.constexpr):
    """Max of `x` along AXIS, NaN if any entry is NaN (tl.max may drop NaN on GPU), and the sum of
    `k` over the entries that attain it."""
    top = tl.max(x, axis=AXIS) + tl.sum(tl.where(x == x, 0.0, x), axis=AXIS)
    ties = tl.sum(tl.where(x == tl.expand_dims(top, AXIS), k, 0), axis=AXIS)
    return top, ties


@triton.jit
def merge_top(value, ties, top, k):
    """The running (max, tie count) ``(value, ties)`` merged with ``(top, k)``, elementwise; NaN wins."""
    take = (top > value) | (top != top)
    ties = tl.where(take, k, tl.where(top == value, ties + k, ties))
    return tl.where(take, top, value), ties


@triton.jit
def tile_partial(
    g_ptr,
    rows,
    row_mask,
    stride_row,
    start,
    d,
    scale,
    NORM: tl.constexpr,
    ONE_MINUS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    """Partials ``([ROWS] value, [ROWS] int32 count)`` of entries ``[start, start + TILES·BLOCK)``
    of a block of rows of ``scale·g`` (or of ``1 - g``), read as [ROWS, BLOCK] tiles."""
    base = g_ptr + rows.to(tl.int64)[:, None] * stride_row
    acc = tl.zeros([ROWS, BLOCK], ACC)
    top = tl.full([ROWS, BLOCK], -1.0, ACC)  # per-lane running max of |g|; -1 below any |g|
    ties = tl.zeros([ROWS, BLOCK], tl.int32)
    for t in range(TILES):
        cols = start + t * BLOCK + tl.arange(0, BLOCK)
        mask = row_mask[:, None] & (cols < d)[None, :]
        x = tl.load(base + cols[None, :], mask=mask, other=0.0).to(ACC) * scale
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
        value, count = top_ties(top, ties, 1)
        value += tl.sum(acc, axis=1)
    else:
        value = tl.sum(acc, axis=1)
        count = tl.sum(ties, axis=1)
    return value, count


@triton.jit
def chunk_arrive(
    g_ptr,
    part_ptr,
    count_ptr,
    counter_ptr,
    stride_row,
    B,
    d,
    n_chunks,
    scale,
    NORM: tl.constexpr,
    ONE_MINUS: tl.constexpr,
    BLOCK: tl.constexpr,
    TILES: tl.constexpr,
    ACC: tl.constexpr,
):
    """The first half of a split-row reduction: this program reduces its chunk of its row into the
    workspace, then arrives. True for the last program, which sees every partial."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks + tl.arange(0, 1)
    start = (pid % n_chunks) * (BLOCK * TILES)
    value, count = tile_partial(g_ptr, row, row < B, stride_row, start, d, scale, NORM, ONE_MINUS, 1, BLOCK, TILES, ACC)
    tl.store(part_ptr + pid + tl.arange(0, 1), value)
    if NORM == 2:
        tl.store(count_ptr + pid + tl.arange(0, 1), count)
    return arrive(counter_ptr, tl.num_programs(0))


@triton.jit
def split_row_partials(
    part_ptr,
    count_ptr,
    rows,
    row_mask,
    n_chunks,
    NORM: tl.constexpr,
    FROWS: tl.constexpr,
    FCHUNKS: tl.constexpr,
    ACC: tl.constexpr,
):
    """``([FROWS] value, [FROWS] int64 count)`` of split rows from their chunk partials, read as
    [FROWS, FCHUNKS] tiles and reduced in a fixed order: deterministic, no float atomics."""
    base = part_ptr + rows.to(tl.int64)[:, None] * n_chunks
    counts = count_ptr + rows.to(tl.int64)[:, None] * n_chunks
    value = tl.zeros([FROWS], ACC)
    if NORM == 2:
        value = value - 1.0
    ties = tl.zeros([FROWS], tl.int64)
    c0 = 0
    while c0 < n_chunks:  # `while`, not `for`: see the note on runtime loop bounds above
        cs = c0 + tl.arange(0, FCHUNKS)
        mask = row_mask[:, None] & (cs < n_chunks)[None, :]
        # .cg: read the other programs' partials from L2, never from a stale L1 line.
        p = tl.load(base + cs[None, :], mask=mask, other=-1.0 if NORM == 2 else 0.0, cache_modifier=".cg")
        if NORM == 2:
            k = tl.load(counts + cs[None, :], mask=mask, other=0, cache_modifier=".cg").to(tl.int64)
            top, k = top_ties(p, k, 1)
            value, ties = merge_top(value, ties, top, k)
        else:
            value += tl.sum(p, axis=1)
        c0 += FCHUNKS
    return value, ties


@triton.jit
def sqrt_acc(x):
    """IEEE-rounded square root in float32 or float64."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def norm_factor(value, count, NORM: tl.constexpr, ACC: tl.constexpr):
    """``(n_i, s_i)`` from a row's reduced partial: ``s_i`` is ∂n_i/∂g_i's per-row factor, 1/n
    (l2), 1 (l1), 1/k (linf), and 0 where n = 0 (SPEC.md §3)."""
    if NORM == 0:
        n = sqrt_acc(value)
        # SPEC.md §3's tiny-row rule: a norm whose square is below the smallest normal number is 0,
        # whether or not the GPU flushes such sums to zero. NaN stays NaN (NaN <= t is false).
        if n.dtype == tl.float64:
            tiny = tl.full(n.shape, 2.0**-511, tl.float64)
        else:
            tiny = tl.full(n.shape, 2.0**-63, tl.float32)
        n = tl.where(n <= tiny, 0.0, n)
        factor = 1.0 / tl.where(n == 0, 1.0, n)
    elif NORM == 1:
        n = value
        factor = tl.full(value.shape, 1.0, ACC)
    else:
        n = value
        factor = 1.0 / tl.maximum(count, 1).to(ACC)
    return n, tl.where(n == 0, 0.0, factor).to(ACC)


@triton.jit
def arrive(counter_ptr, total):
    """True in the last of `total` programs to arrive. Every store a program made before its call
    is visible to the last one (barrier, then an acq_rel atomic), which leaves the counter at 0
    for the next launch (see `arrival_counter`)."""
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    last = arrived == total - 1
    if last:
        tl.atomic_xchg(counter_ptr, 0)
    return last


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
