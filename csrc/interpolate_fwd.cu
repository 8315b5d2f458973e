// Instantiates the interpolation forward with PyTorch's Philox state (kernels/interpolate.cuh).
// PhiloxUtils.cuh's unpack returns a std::tuple, but some torch releases (2.11) do not include <tuple> there.
#include <tuple>

#include <ATen/cuda/PhiloxUtils.cuh>

#include "interpolate_launch.h"
#include "kernels/dispatch.cuh"
#include "kernels/interpolate.cuh"

namespace fastgp {

namespace {

// Unpacked inside the kernel: under CUDA-graph capture the seed and offset are device pointers that
// each replay advances, so every replay draws fresh α (Note [CUDA Graph-safe RNG states] in PyTorch).
struct TorchPhilox {
  at::PhiloxCudaState state;
  __device__ SeedOffset unpack() const {
    const auto so = at::cuda::philox::unpack(state);
    return {std::get<0>(so), std::get<1>(so)};
  }
};

}  // namespace

cudaError_t launch_interpolate_fwd(const InterpolateParams& p, at::PhiloxCudaState philox, cudaStream_t stream) {
  const TorchPhilox rng{philox};
  dispatch_dtype(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (p.points == Points::kInterpolate) {
      launch<interpolate_fwd_kernel<scalar_t, Points::kInterpolate, TorchPhilox>>(p.batch * p.chunks, stream, p, rng);
    } else {
      launch<interpolate_fwd_kernel<scalar_t, Points::kDragan, TorchPhilox>>(p.batch * p.chunks, stream, p, rng);
    }
  });
  return cudaGetLastError();
}

}  // namespace fastgp
