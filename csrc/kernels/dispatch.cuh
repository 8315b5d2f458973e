// Runtime enum -> template parameter, for the launchers in csrc/*.cu.
#pragma once

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "common.cuh"

namespace fastgp {

template <typename T> struct Tag {
  using type = T;
};

template <typename F> void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kHalf: return f(Tag<__half>{});
    case DType::kBFloat16: return f(Tag<__nv_bfloat16>{});
    case DType::kFloat: return f(Tag<float>{});
    case DType::kDouble: return f(Tag<double>{});
  }
}

template <typename F> void dispatch_norm(Norm norm, F&& f) {
  switch (norm) {
    case Norm::kL2: return f(std::integral_constant<Norm, Norm::kL2>{});
    case Norm::kL1: return f(std::integral_constant<Norm, Norm::kL1>{});
    case Norm::kLinf: return f(std::integral_constant<Norm, Norm::kLinf>{});
  }
}

// Blocks of `Kernel` the current device holds at once (SMs × resident blocks an SM at kThreads), queried once
// per kernel and device. Kernels walk their (row, chunk) items with a grid-stride loop, so a grid of at most
// this many blocks runs as one whole wave, never a full wave plus a nearly empty one.
template <auto Kernel> unsigned int wave_grid(int64_t items) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> resident[kMaxDevices];  // 0 until queried
  int device = 0, blocks = 0;
  if (cudaGetDevice(&device) == cudaSuccess && device < kMaxDevices) {
    blocks = resident[device].load(std::memory_order_relaxed);
    if (blocks == 0) {
      int per_sm = 0, sms = 0;
      // A failed query leaves its error for the launcher's cudaGetLastError().
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kThreads, 0) == cudaSuccess &&
          cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess) {
        blocks = per_sm * sms;
        resident[device].store(blocks, std::memory_order_relaxed);
      }
    }
  }
  return static_cast<unsigned int>(std::clamp<int64_t>(items, 1, blocks > 0 ? blocks : 1));
}

// Enqueues `Kernel` on `stream` with a whole-wave grid for `items` work items.
template <auto Kernel, typename... Args> void launch(int64_t items, cudaStream_t stream, const Args&... args) {
  Kernel<<<wave_grid<Kernel>(items), kThreads, 0, stream>>>(args...);
}

}  // namespace fastgp
