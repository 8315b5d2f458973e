// The one launcher that needs PyTorch: its random state comes from PyTorch's CUDA generator.
#pragma once

#include <ATen/cuda/PhiloxCudaState.h>

#include "fastgp_params.h"

namespace fastgp {

cudaError_t launch_interpolate_fwd(const InterpolateParams& p, at::PhiloxCudaState philox, cudaStream_t stream);

}  // namespace fastgp
