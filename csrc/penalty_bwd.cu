// Instantiates the penalty backward for every dtype and norm (kernels/penalty.cuh).
#include "kernels/dispatch.cuh"
#include "kernels/penalty.cuh"

namespace fastgp {

cudaError_t launch_penalty_bwd(const PenaltyBwdParams& p, cudaStream_t stream) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    dispatch_norm(p.norm, [&](auto norm) {
      launch<penalty_bwd_kernel<scalar_t, decltype(norm)::value>>(p.batch * p.chunks, stream, p);
    });
  });
  return cudaGetLastError();
}

}  // namespace fastgp
