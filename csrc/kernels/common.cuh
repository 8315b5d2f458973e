// Device helpers shared by the kernels: type conversion, row-norm partials, block reductions.
//
// Torch-free on purpose (see fastgp_params.h). PyTorch builds extensions with
// -D__CUDA_NO_HALF_CONVERSIONS__ and friends, so conversions are spelled out instead of implicit.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../fastgp_params.h"
#include "rules.cuh"

namespace fastgp {

// Threads per block, the finishing block included (it walks every sample in a fixed order). Every kernel
// is built for kMinBlocksPerSm such blocks an SM (fastgp_params.h): at most 64 registers a thread.
constexpr int kThreads = 256;

// 16-byte vectors a thread has in flight per round of a streaming loop (all loads issued before any use):
// 64 bytes a thread, 64 KiB an SM at four blocks, several times what HBM needs in flight to stay busy.
constexpr int kUnroll = 4;

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_of_t = typename AccOf<T>::type;

template <typename acc_t> __device__ __forceinline__ acc_t to_acc(float v) { return v; }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(double v) { return static_cast<acc_t>(v); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__half v) { return __half2float(v); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// The written gradient is computed in the accumulation type and rounded once (SPEC.md §3).
template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v) { return v; }

// One 16-byte global access: 4 floats, 8 halves or bfloat16s, 2 doubles, moved as one uint4.
template <typename T> union Vec {
  static constexpr int kSize = 16 / sizeof(T);
  uint4 raw;
  T v[kSize];
};

// Elements [begin, end) of a row, split for 16-byte access: whole vectors over [lo, hi), each starting at a
// 16-byte boundary of `base`, and scalar elements in [begin, lo) and [hi, end) (fewer than a vector each).
// Other pointers indexed like `base` can share the split when they have its address mod 16 (`same_alignment`);
// where they do not, `vectorise` is false and the whole range is scalar.
struct Span {
  int64_t lo, hi;
};

template <typename T>
__device__ __forceinline__ Span vector_span(const T* base, int64_t begin, int64_t end, bool vectorise) {
  constexpr int64_t V = Vec<T>::kSize;
  if (!vectorise) return {end, end};
  const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(base + begin) % 16 / sizeof(T));
  const int64_t lo = begin + (V - misaligned) % V < end ? begin + (V - misaligned) % V : end;
  return {lo, lo + (end - lo) / V * V};
}

__device__ __forceinline__ bool same_alignment(const void* a, const void* b) {
  return (reinterpret_cast<uintptr_t>(a) - reinterpret_cast<uintptr_t>(b)) % 16 == 0;
}

// Visits elements [begin, end) of a row with the block's threads: `scalar(j)` on the head and tail of `span`,
// and on its body `load(j)` then `use(j, loaded)` for the vector at element j, kUnroll vectors a thread per
// round with every load of the round issued before the first use. Consecutive threads take consecutive
// vectors, so each warp reads 512 contiguous bytes per load.
template <int V, typename Scalar, typename Load, typename Use>
__device__ __forceinline__ void for_each_element(Span span, int64_t begin, int64_t end, Scalar&& scalar, Load&& load,
                                                 Use&& use) {
  for (int64_t j = begin + threadIdx.x; j < span.lo; j += blockDim.x) scalar(j);
  for (int64_t j = span.hi + threadIdx.x; j < end; j += blockDim.x) scalar(j);
  const int64_t step = static_cast<int64_t>(blockDim.x) * V;
  for (int64_t j = span.lo + static_cast<int64_t>(threadIdx.x) * V; j < span.hi; j += kUnroll * step) {
    decltype(load(j)) loaded[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (j + u * step < span.hi) loaded[u] = load(j + u * step);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (j + u * step < span.hi) use(j + u * step, loaded[u]);
    }
  }
}

// Through the read-only path (ld.global.nc): every vector a kernel loads is an input it never writes.
template <typename T> __device__ __forceinline__ Vec<T> load_vec(const T* __restrict__ p, int64_t j) {
  Vec<T> v;
  v.raw = __ldg(reinterpret_cast<const uint4*>(p + j));
  return v;
}

// One st.global.v4: NVVM splits a plain 16-byte store of the union into per-element stores. No "memory"
// clobber, so loads may still be scheduled across it; the kernels never read what they store.
template <typename T> __device__ __forceinline__ void store_vec(T* __restrict__ p, int64_t j, const Vec<T>& v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p + j), "r"(v.raw.x), "r"(v.raw.y), "r"(v.raw.z),
               "r"(v.raw.w));
}

// A kernel's work item: the elements [begin, end) of row `row`, one chunk. Kernels walk items with a
// grid-stride loop, so a grid of whole waves (dispatch.cuh) covers any number of items.
struct Item {
  int64_t row, begin, end;
};

__device__ __forceinline__ Item item_of(int64_t item, int64_t chunks, int64_t chunk, int64_t dim) {
  const int64_t row = item / chunks, begin = (item % chunks) * chunk;
  return {row, begin, begin + chunk < dim ? begin + chunk : dim};
}

// Reduces over the block; the result is valid in thread 0. The tree has a fixed shape, so the sum is
// bitwise reproducible from run to run.
template <Norm N, typename acc_t, int THREADS>
__device__ __forceinline__ Partial<acc_t> block_reduce(Partial<acc_t> v) {
  __shared__ acc_t s_value[THREADS / 32];
  __shared__ int64_t s_count[THREADS / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    Partial<acc_t> other{__shfl_down_sync(0xffffffffu, v.value, o), __shfl_down_sync(0xffffffffu, v.count, o)};
    v = combine<N>(v, other);
  }
  if (lane == 0) {
    s_value[warp] = v.value;
    s_count[warp] = v.count;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < THREADS / 32 ? Partial<acc_t>{s_value[lane], s_count[lane]} : Partial<acc_t>{acc_t(0), 0};
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      Partial<acc_t> other{__shfl_down_sync(0xffffffffu, v.value, o), __shfl_down_sync(0xffffffffu, v.count, o)};
      v = combine<N>(v, other);
    }
  }
  __syncthreads();  // the shared arrays may be reused by the caller's next reduction
  return v;
}

// Partial statistic of elements [begin, end) of one row, of `v = s·g` or of `1 - v` when ONE_MINUS (PGN).
template <Norm N, bool ONE_MINUS, typename scalar_t, typename acc_t>
__device__ __forceinline__ Partial<acc_t> chunk_partial(const scalar_t* __restrict__ row, int64_t begin, int64_t end,
                                                        acc_t s) {
  constexpr int V = Vec<scalar_t>::kSize;
  Partial<acc_t> p{acc_t(0), 0};
  const auto add = [&](scalar_t x) {
    acc_t v = to_acc<acc_t>(x) * s;
    if constexpr (ONE_MINUS) v = acc_t(1) - v;
    p = combine<N>(p, element<N, acc_t>(v));
  };
  for_each_element<V>(
      vector_span(row, begin, end, true), begin, end, [&](int64_t j) { add(row[j]); },
      [&](int64_t j) { return load_vec(row, j); },
      [&](int64_t, const Vec<scalar_t>& x) {
#pragma unroll
        for (int e = 0; e < V; ++e) add(x.v[e]);
      });
  return block_reduce<N, acc_t, kThreads>(p);
}

// The row's norm from its per-chunk partials, combined in chunk order (deterministic).
template <Norm N, typename acc_t>
__device__ __forceinline__ Partial<acc_t> row_norm(const acc_t* partials, const int64_t* partial_ties, int64_t chunks) {
  // __ldcg: read once, from L2 where the other blocks' writes are; the ordering is last_block_done's fences.
  Partial<acc_t> p{__ldcg(partials), N == Norm::kLinf ? __ldcg(partial_ties) : 0};
  for (int64_t c = 1; c < chunks; ++c) {
    p = combine<N>(p, Partial<acc_t>{__ldcg(partials + c), N == Norm::kLinf ? __ldcg(partial_ties + c) : 0});
  }
  if constexpr (N == Norm::kL2) p.value = l2_norm(p.value);
  return p;
}

// True in every thread of the one block that finishes last; its reads then see all other blocks' writes.
// The arrival is a release/acquire pair in the PTX memory model, not a property of the cache path: the
// fence before the relaxed atomicAdd orders this block's partials (written before the __syncthreads)
// ahead of its arrival, and the fence after it, in the thread that observed the last arrival, orders
// every earlier block's partials ahead of the finishing block's reads (the __syncthreads hands that
// ordering to the block's other threads). `counter` is zeroed by the host before every launch.
__device__ __forceinline__ bool last_block_done(unsigned int* counter) {
  __shared__ bool s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __threadfence();
    s_last = last;
  }
  __syncthreads();
  return s_last;
}

// out_j = scale · direction(v_j) over elements [begin, end) of a row, with v = s·g, or 1 - s·g when ONE_MINUS
// (v as chunk_partial forms it, so that linf's |v| = n compares the forward's bits): the one pass of the
// penalty and normalisation backwards.
template <Norm N, bool ONE_MINUS, typename scalar_t, typename acc_t>
__device__ __forceinline__ void write_direction(const scalar_t* __restrict__ g, scalar_t* __restrict__ out,
                                                int64_t begin, int64_t end, acc_t s, acc_t scale, acc_t n) {
  constexpr int V = Vec<scalar_t>::kSize;
  const auto value = [&](scalar_t x) {
    acc_t v = to_acc<acc_t>(x) * s;
    if constexpr (ONE_MINUS) v = acc_t(1) - v;
    return from_acc<scalar_t>(scale * norm_direction<N, acc_t>(v, n));
  };
  for_each_element<V>(
      vector_span(g, begin, end, same_alignment(g, out)), begin, end, [&](int64_t j) { out[j] = value(g[j]); },
      [&](int64_t j) { return load_vec(g, j); },
      [&](int64_t j, const Vec<scalar_t>& x) {
        Vec<scalar_t> y;
#pragma unroll
        for (int e = 0; e < V; ++e) y.v[e] = value(x.v[e]);
        store_vec(out, j, y);
      });
}

}  // namespace fastgp
