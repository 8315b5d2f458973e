// Runtime enum -> template parameter, for the launchers in csrc/*.cu.
#pragma once

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

// split_rows (fastgp_api.cpp) checks that `blocks` fits CUDA's grid x-dimension, so the cast cannot wrap.
inline unsigned int grid_size(int64_t blocks) { return static_cast<unsigned int>(blocks); }

}  // namespace fastgp
