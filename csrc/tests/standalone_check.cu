// Compiles the kernel templates without PyTorch (compile_check.sh, standalone mode): the one launcher that
// needs PyTorch, the interpolation forward, is instantiated here with a fixed seed instead of
// at::PhiloxCudaState. The torch-free launchers (penalty, normalize, interpolate backward) are compiled
// from their own .cu files beside this one. Never run; it only has to compile without a warning.
#include "../kernels/dispatch.cuh"
#include "../kernels/interpolate.cuh"
#include "../kernels/normalize.cuh"
#include "../kernels/penalty.cuh"

namespace fastgp {

struct FixedSeed {
  uint64_t seed;
  __device__ SeedOffset unpack() const { return {seed, 0}; }
};

cudaError_t launch_interpolate_fwd_standalone(const InterpolateParams& p, uint64_t seed, cudaStream_t stream) {
  const FixedSeed rng{seed};
  dispatch_dtype(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (p.points == Points::kInterpolate) {
      launch<interpolate_fwd_kernel<scalar_t, Points::kInterpolate, FixedSeed>>(p.batch * p.chunks, stream, p, rng);
    } else {
      launch<interpolate_fwd_kernel<scalar_t, Points::kDragan, FixedSeed>>(p.batch * p.chunks, stream, p, rng);
    }
  });
  return cudaGetLastError();
}

}  // namespace fastgp
