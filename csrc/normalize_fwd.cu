// Instantiates the GN/PGN forward for every dtype, norm and mode (kernels/normalize.cuh).
#include "kernels/dispatch.cuh"
#include "kernels/normalize.cuh"

namespace fastgp {

cudaError_t launch_normalize_fwd(const NormalizeFwdParams& p, cudaStream_t stream) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    dispatch_norm(p.norm, [&](auto norm) {
      constexpr Norm N = decltype(norm)::value;
      if (p.mode == Mode::kGn) {
        launch<normalize_fwd_kernel<scalar_t, N, false>>(p.batch * p.chunks, stream, p);
      } else {
        launch<normalize_fwd_kernel<scalar_t, N, true>>(p.batch * p.chunks, stream, p);
      }
    });
  });
  return cudaGetLastError();
}

}  // namespace fastgp
