// Instantiates the interpolation backward for every dtype and both kinds of points (kernels/interpolate.cuh).
#include "kernels/dispatch.cuh"
#include "kernels/interpolate.cuh"

namespace fastgp {

cudaError_t launch_interpolate_bwd(const InterpolateBwdParams& p, cudaStream_t stream) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    if (p.points == Points::kInterpolate) {
      launch<interpolate_bwd_kernel<scalar_t, Points::kInterpolate>>(p.batch * p.chunks, stream, p);
    } else {
      launch<interpolate_bwd_kernel<scalar_t, Points::kDragan>>(p.batch * p.chunks, stream, p);
    }
  });
  return cudaGetLastError();
}

}  // namespace fastgp
