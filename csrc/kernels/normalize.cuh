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
__global__ void __launch_bounds__(kThreads) normalize_fwd_kernel(NormalizeFwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t block = blockIdx.x;
  const int64_t row = block / p.chunks, begin = (block % p.chunks) * p.chunk;
  const int64_t end = begin + p.chunk < p.dim ? begin + p.chunk : p.dim;
  const scalar_t* g = static_cast<const scalar_t*>(p.grad) + row * p.dim;
  const Partial<acc_t> part = chunk_partial<N, ONE_MINUS, scalar_t, acc_t>(g, begin, end);
  if (threadIdx.x == 0) {
    static_cast<acc_t*>(p.partials)[block] = part.value;
    if constexpr (N == Norm::kLinf) p.partial_ties[block] = part.count;
  }
  if (last_block_done(p.counter)) normalize_finish<N, acc_t>(p);
}

template <typename scalar_t, Norm N, bool ONE_MINUS>
__global__ void __launch_bounds__(kThreads) normalize_bwd_kernel(NormalizeBwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  const int64_t block = blockIdx.x;
  const int64_t row = block / p.chunks, begin = (block % p.chunks) * p.chunk;
  const int64_t end = begin + p.chunk < p.dim ? begin + p.chunk : p.dim;
  const acc_t go = static_cast<const acc_t*>(p.grad_out)[row];
  const acc_t f = static_cast<const acc_t*>(p.scores)[row];
  const acc_t n = static_cast<const acc_t*>(p.norms)[row];
  const acc_t u = ONE_MINUS ? acc_t(1) - f : f;
  const acc_t q = n + fabs(u);
  const bool empty = q == acc_t(0);
  if (begin == 0 && threadIdx.x == 0) {
    const acc_t s = ONE_MINUS ? acc_t(-1) : acc_t(1);
    static_cast<acc_t*>(p.grad_scores)[row] = empty ? acc_t(0) : go * s * n / (q * q);
  }
  // factor = 0 where n = 0: ∂n/∂g is 0 there (PyTorch's vector_norm convention, which SPEC.md §4 inherits).
  const acc_t scale = empty ? acc_t(0) : go * (ONE_MINUS ? u : -u) / (q * q) * static_cast<const acc_t*>(p.factor)[row];
  const scalar_t* g = static_cast<const scalar_t*>(p.grad) + row * p.dim;
  scalar_t* out = static_cast<scalar_t*>(p.grad_grad) + row * p.dim;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    acc_t v = to_acc<acc_t>(g[j]);
    if constexpr (ONE_MINUS) v = acc_t(1) - v;
    out[j] = from_acc<scalar_t>(scale * norm_direction<N, acc_t>(v, n));
  }
}

}  // namespace fastgp
