// Gradient penalty P = λ · R_i h(‖s·g_i‖) + ε · mean_i f_i² (SPEC.md §3; s = 1 but under AMP), forward and
// backward.
//
// Forward is one launch: block (i, c) reduces chunk c of row i to a partial (sum of squares, sum of |g|,
// or max |g| with its count), and the block that finishes last combines the partials in chunk order,
// so the result does not depend on block scheduling, and writes the norms, the per-sample backward
// coefficient ∂P/∂n_i, the factor of ∂n_i/∂g_i (1/k for k tied maxima under linf) and P. Backward is
// one launch from those.
#pragma once

#include "common.cuh"

namespace fastgp {

// The factor s of P(s·g), read on the device (no host sync): AMP's 1/scale, so that a GradScaler's scaled
// gradient is unscaled inside the kernel's single read of it.
template <typename acc_t> __device__ __forceinline__ acc_t grad_scale(const float* s) {
  return s != nullptr ? static_cast<acc_t>(*s) : acc_t(1);
}

template <Norm N, typename acc_t> __device__ void penalty_finish(const PenaltyFwdParams& p) {
  const acc_t* partials = static_cast<const acc_t*>(p.partials);
  const acc_t* scores = static_cast<const acc_t*>(p.scores);
  acc_t* norms = static_cast<acc_t*>(p.norms);
  acc_t* coef = static_cast<acc_t*>(p.coef);
  acc_t* factor = static_cast<acc_t*>(p.factor);
  const acc_t center = static_cast<acc_t>(p.center);
  const bool use_max = p.reduction == Reduction::kMax;
  __shared__ acc_t s_h;
  __shared__ int64_t s_k;

  // Pass 1: norms, R_i h(n_i) (a max carries the count of samples that attain it) and Σ f_i².
  Partial<acc_t> h_acc{use_max ? acc_t(-INFINITY) : acc_t(0), 0};
  Partial<acc_t> f2{acc_t(0), 0};
  for (int64_t i = threadIdx.x; i < p.batch; i += blockDim.x) {
    const Partial<acc_t> r = row_norm<N, acc_t>(partials + i * p.chunks, p.partial_ties + i * p.chunks, p.chunks);
    norms[i] = r.value;
    factor[i] = norm_factor<N, acc_t>(r);
    const Partial<acc_t> h{constraint_value(p.constraint, r.value, center), 1};
    coef[i] = h.value;  // kept for pass 2, so that `h_i == max` compares the very same bits
    h_acc = use_max ? combine<Norm::kLinf>(h_acc, h) : combine<Norm::kL2>(h_acc, h);
    if (scores != nullptr) f2.value += scores[i] * scores[i];
  }
  h_acc = use_max ? block_reduce<Norm::kLinf, acc_t, kThreads>(h_acc) : block_reduce<Norm::kL2, acc_t, kThreads>(h_acc);
  f2 = block_reduce<Norm::kL2, acc_t, kThreads>(f2);
  if (threadIdx.x == 0) {
    s_h = h_acc.value;
    s_k = h_acc.count;
    const acc_t batch = static_cast<acc_t>(p.batch);
    acc_t penalty = static_cast<acc_t>(p.weight) * (use_max ? h_acc.value : h_acc.value / batch);
    if (scores != nullptr) penalty += static_cast<acc_t>(p.output_weight) * (f2.value / batch);
    *static_cast<acc_t*>(p.penalty) = penalty;
  }
  __syncthreads();

  // Pass 2: dP/dn_i = (λ/B) h'(n_i), or (λ/k) h'(n_i) on the k samples that attain the max (ties share).
  const acc_t weight = static_cast<acc_t>(p.weight);
  for (int64_t i = threadIdx.x; i < p.batch; i += blockDim.x) {
    acc_t scale = weight / static_cast<acc_t>(p.batch);
    // A NaN maximum gives every sample a NaN coefficient, as amax's backward does (0/0 on no ties).
    if (use_max) scale = s_h != s_h ? s_h : (coef[i] == s_h ? weight / static_cast<acc_t>(s_k) : acc_t(0));
    coef[i] = scale * constraint_slope(p.constraint, norms[i], center);
  }
}

template <typename scalar_t, Norm N>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) penalty_fwd_kernel(const PenaltyFwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  const acc_t s = grad_scale<acc_t>(p.grad_scale);
  for (int64_t item = blockIdx.x; item < p.batch * p.chunks; item += gridDim.x) {
    const Item it = item_of(item, p.chunks, p.chunk, p.dim);
    const Partial<acc_t> part = chunk_partial<N, false, scalar_t, acc_t>(grad + it.row * p.dim, it.begin, it.end, s);
    if (threadIdx.x == 0) {
      static_cast<acc_t*>(p.partials)[item] = part.value;
      if constexpr (N == Norm::kLinf) p.partial_ties[item] = part.count;
    }
  }
  if (last_block_done(p.counter)) penalty_finish<N, acc_t>(p);
}

// ∂P/∂g_ij = s · (gP · coef_i + gN_i) · factor_i · direction(s·g_ij), which is 0 where n_i = 0 (factor_i = 0);
// the first thread of each row's first chunk also writes ∂P/∂f_i = (2ε/B) · f_i · gP.
template <typename scalar_t, Norm N>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) penalty_bwd_kernel(const PenaltyBwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  const acc_t gp = *static_cast<const acc_t*>(p.grad_penalty);
  const acc_t s = grad_scale<acc_t>(p.grad_scale);
  for (int64_t item = blockIdx.x; item < p.batch * p.chunks; item += gridDim.x) {
    const Item it = item_of(item, p.chunks, p.chunk, p.dim);
    if (p.grad_scores != nullptr && it.begin == 0 && threadIdx.x == 0) {
      const acc_t fi = static_cast<const acc_t*>(p.scores)[it.row];
      static_cast<acc_t*>(p.grad_scores)[it.row] =
          acc_t(2) * static_cast<acc_t>(p.output_weight) / static_cast<acc_t>(p.batch) * fi * gp;
    }
    acc_t scale = gp * static_cast<const acc_t*>(p.coef)[it.row];
    if (p.grad_norms != nullptr) scale += static_cast<const acc_t*>(p.grad_norms)[it.row];
    scale *= static_cast<const acc_t*>(p.factor)[it.row] * s;
    const int64_t offset = it.row * p.dim;
    write_direction<N, false>(static_cast<const scalar_t*>(p.grad) + offset, static_cast<scalar_t*>(p.grad_grad) + offset,
                              it.begin, it.end, s, scale, static_cast<const acc_t*>(p.norms)[it.row]);
  }
}

}  // namespace fastgp
