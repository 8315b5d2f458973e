// Device helpers shared by the kernels: type conversion, row-norm partials, block reductions.
//
// Torch-free on purpose (see fastgp_params.h). PyTorch builds extensions with
// -D__CUDA_NO_HALF_CONVERSIONS__ and friends, so conversions are spelled out instead of implicit.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../fastgp_params.h"

namespace fastgp {

// Threads per block, the finishing block included (it walks every sample in a fixed order).
constexpr int kThreads = 256;

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

// NaN-propagating max: `fmax` would drop a NaN, and SPEC.md §7 wants NaN in the data to reach the output.
template <typename acc_t> __device__ __forceinline__ acc_t nan_max(acc_t a, acc_t b) {
  return (a != a || a > b) ? a : b;
}

template <typename acc_t> __device__ __forceinline__ acc_t sign_of(acc_t v) {
  // sign(NaN) is NaN, as torch.sgn, so a NaN entry does not turn into a zero gradient.
  return v > acc_t(0) ? acc_t(1) : (v < acc_t(0) ? acc_t(-1) : (v == acc_t(0) ? acc_t(0) : v));
}

// The per-row statistic a chunk contributes: sum of squares (l2), sum of |g| (l1), or max |g| with the
// number of entries that attain it (linf), so that the tie count of the whole row is exact.
template <typename acc_t> struct Partial {
  acc_t value;
  int32_t count;
};

template <Norm N, typename acc_t> __device__ __forceinline__ Partial<acc_t> combine(Partial<acc_t> a, Partial<acc_t> b) {
  if constexpr (N == Norm::kLinf) {
    if (b.value != b.value || (a.value == a.value && b.value > a.value)) return b;
    if (a.value == b.value) return {a.value, a.count + b.count};
    return a;
  } else {
    return {a.value + b.value, 0};
  }
}

template <Norm N, typename acc_t> __device__ __forceinline__ Partial<acc_t> element(acc_t v) {
  if constexpr (N == Norm::kL2) return {v * v, 0};
  else if constexpr (N == Norm::kL1) return {fabs(v), 0};
  else return {fabs(v), 1};
}

// Reduces over the block; the result is valid in thread 0. The tree has a fixed shape, so the sum is
// bitwise reproducible from run to run.
template <Norm N, typename acc_t, int THREADS>
__device__ __forceinline__ Partial<acc_t> block_reduce(Partial<acc_t> v) {
  __shared__ acc_t s_value[THREADS / 32];
  __shared__ int32_t s_count[THREADS / 32];
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

// Partial statistic of elements [begin, end) of one row, taken from `(1 - g)` when ONE_MINUS (PGN).
template <Norm N, bool ONE_MINUS, typename scalar_t, typename acc_t>
__device__ __forceinline__ Partial<acc_t> chunk_partial(const scalar_t* __restrict__ row, int64_t begin, int64_t end) {
  Partial<acc_t> p{acc_t(0), 0};
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    acc_t v = to_acc<acc_t>(row[j]);
    if constexpr (ONE_MINUS) v = acc_t(1) - v;
    p = combine<N>(p, element<N, acc_t>(v));
  }
  return block_reduce<N, acc_t, kThreads>(p);
}

// The row's norm from its per-chunk partials, combined in chunk order (deterministic).
template <Norm N, typename acc_t>
__device__ __forceinline__ Partial<acc_t> row_norm(const acc_t* partials, const int32_t* partial_ties, int64_t chunks) {
  // __ldcg: read once, from L2 where the other blocks' writes are; the ordering is last_block_done's fences.
  Partial<acc_t> p{__ldcg(partials), N == Norm::kLinf ? __ldcg(partial_ties) : 0};
  for (int64_t c = 1; c < chunks; ++c) {
    p = combine<N>(p, Partial<acc_t>{__ldcg(partials + c), N == Norm::kLinf ? __ldcg(partial_ties + c) : 0});
  }
  if constexpr (N == Norm::kL2) p.value = sqrt(p.value);
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

// ∂n/∂v = factor · direction(v) (SPEC.md §3), split so that the forward saves one number per row:
// factor = 1/n (l2), 1 (l1), 1/k over the k tied maxima (linf), and 0 where n = 0 (the zero-gradient rule);
// direction = v (l2), sign(v) (l1), sign(v)·[|v| = n] (linf). Same split as the Triton backend's.
template <Norm N, typename acc_t> __device__ __forceinline__ acc_t norm_factor(Partial<acc_t> r) {
  if (r.value == acc_t(0)) return acc_t(0);
  if constexpr (N == Norm::kL2) return acc_t(1) / r.value;
  else if constexpr (N == Norm::kL1) return acc_t(1);
  else return acc_t(1) / static_cast<acc_t>(r.count > 1 ? r.count : 1);
}

template <Norm N, typename acc_t> __device__ __forceinline__ acc_t norm_direction(acc_t v, acc_t n) {
  if constexpr (N == Norm::kL2) return v;
  else if constexpr (N == Norm::kL1) return sign_of(v);
  else return fabs(v) == n ? sign_of(v) : acc_t(0);
}

}  // namespace fastgp
