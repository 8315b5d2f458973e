// Gradient normalisation (SPEC.md §4): GN f̂ = f / (‖g‖ + |f|) (Wu et al. 2021) and
// PGN f̂ = (1-f) / (‖1-g‖ + |1-f|) (Xia, Algorithm 1), forward and backward.
//
// Same one-launch shape as the penalty: per-chunk partials of the row norm, the last block finishes.
// With u = f (gn) or 1 - f (pgn), s = ±1 and q = n + |u|:
//   ∂f̂/∂f = s · n / q²,   ∂f̂/∂g = -(u / q²) · ∂n/∂g   (∂n/∂g of 1 - g, negated, for pgn); q = 0 → 0.
#pragma once

#include "common.cuh"

namespace fastgp {

template <Norm N, typename acc_t> __device__ void normalize_finish(const NormalizeFwdParams& p) {
  const acc_t* partials = static_cast<const acc_t*>(p.partials);
  const acc_t* scores = static_cast<const acc_t*>(p.scores);
  acc_t* out = static_cast<acc_t*>(p.out);
  acc_t* norms = static_cast<acc_t*>(p.norms);
  acc_t* factor = static_cast<acc_t*>(p.factor);
  for (int64_t i = threadIdx.x; i < p.batch; i += blockDim.x) {
    const Partial<acc_t> r = row_norm<N, acc_t>(partials + i * p.chunks, p.partial_ties + i * p.chunks, p.chunks);
    norms[i] = r.value;
    factor[i] = norm_factor<N, acc_t>(r);
    const acc_t u = p.mode == Mode::kGn ? scores[i] : acc_t(1) - scores[i];
    const acc_t q = r.value + fabs(u);
    // `q == 0` rather than `q > 0`, so that a NaN score stays NaN.
    out[i] = q == acc_t(0) ? acc_t(0) : u / q;
  }
}

template <typename scalar_t, Norm N, bool ONE_MINUS>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) normalize_fwd_kernel(const NormalizeFwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  const scalar_t* grad = static_cast<const scalar_t*>(p.grad);
  for (int64_t item = blockIdx.x; item < p.batch * p.chunks; item += gridDim.x) {
    const Item it = item_of(item, p.chunks, p.chunk, p.dim);
    const Partial<acc_t> part =
        chunk_partial<N, ONE_MINUS, scalar_t, acc_t>(grad + it.row * p.dim, it.begin, it.end, acc_t(1));
    if (threadIdx.x == 0) {
      static_cast<acc_t*>(p.partials)[item] = part.value;
      if constexpr (N == Norm::kLinf) p.partial_ties[item] = part.count;
    }
  }
  if (last_block_done(p.counter)) normalize_finish<N, acc_t>(p);
}

template <typename scalar_t, Norm N, bool ONE_MINUS>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) normalize_bwd_kernel(const NormalizeBwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  for (int64_t item = blockIdx.x; item < p.batch * p.chunks; item += gridDim.x) {
    const Item it = item_of(item, p.chunks, p.chunk, p.dim);
    const acc_t go = static_cast<const acc_t*>(p.grad_out)[it.row];
    const acc_t f = static_cast<const acc_t*>(p.scores)[it.row];
    const acc_t n = static_cast<const acc_t*>(p.norms)[it.row];
    const acc_t u = ONE_MINUS ? acc_t(1) - f : f;
    const acc_t q = n + fabs(u);
    const bool empty = q == acc_t(0);
    if (it.begin == 0 && threadIdx.x == 0) {
      const acc_t s = ONE_MINUS ? acc_t(-1) : acc_t(1);
      static_cast<acc_t*>(p.grad_scores)[it.row] = empty ? acc_t(0) : go * s * n / (q * q);
    }
    // factor = 0 where n = 0: ∂n/∂g is 0 there (PyTorch's vector_norm convention, which SPEC.md §4 inherits).
    const acc_t scale =
        empty ? acc_t(0) : go * (ONE_MINUS ? u : -u) / (q * q) * static_cast<const acc_t*>(p.factor)[it.row];
    const int64_t offset = it.row * p.dim;
    write_direction<N, ONE_MINUS>(static_cast<const scalar_t*>(p.grad) + offset,
                                  static_cast<scalar_t*>(p.grad_grad) + offset, it.begin, it.end, acc_t(1), scale, n);
  }
}

}  // namespace fastgp
