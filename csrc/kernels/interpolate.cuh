// Where the penalty is evaluated (SPEC.md §2): x̂_i = α_i x_i + (1-α_i) y_i (WGAN-GP), and DRAGAN's
// x̂_i = x_i + α_i · s · u_i with s = 0.5·std(x) (Kodali et al. 2017), α_i, u_ij ~ U[0,1) from Philox.
//
// Streams: α_i is the first output of subsequence i; the u of elements [G·k, G·k+G) of row i come from
// subsequence B + i·ceil(d/G) + k (G = 4 floats or 2 doubles per 128-bit block). Every draw depends on
// (seed, offset, i, j) only, never on the launch shape, so the backward can regenerate u, and each
// subsequence uses one 128-bit block: the generator's offset advances by 4 per call.
//
// `Rng` is anything with `__device__ SeedOffset unpack() const`: PyTorch's PhiloxCudaState (read on the
// device, so CUDA-graph replays draw fresh numbers), a fixed seed, or the state saved by the forward.
#pragma once

#include "common.cuh"
#include "philox.cuh"

namespace fastgp {

template <typename acc_t> struct Draw;
template <> struct Draw<float> {
  static constexpr int kGroup = 4;
  __device__ static float first(Philox& r) {
    uint32_t x[4];
    r.next4(x);
    return uniform_float(x[0]);
  }
  __device__ static void group(Philox& r, float* u) {
    uint32_t x[4];
    r.next4(x);
#pragma unroll
    for (int k = 0; k < 4; ++k) u[k] = uniform_float(x[k]);
  }
};
template <> struct Draw<double> {
  static constexpr int kGroup = 2;
  __device__ static double first(Philox& r) {
    uint32_t x[4];
    r.next4(x);
    return uniform_double(x[0], x[1]);
  }
  __device__ static void group(Philox& r, double* u) {
    uint32_t x[4];
    r.next4(x);
    u[0] = uniform_double(x[0], x[1]);
    u[1] = uniform_double(x[2], x[3]);
  }
};

// Saved by the forward as an int64 pair on the device; the backward replays u from it.
struct SavedRng {
  const int64_t* state;
  __device__ SeedOffset unpack() const {
    return {static_cast<uint64_t>(state[0]), static_cast<uint64_t>(state[1])};
  }
};

template <typename acc_t> __device__ __forceinline__ int64_t u_subsequence(int64_t batch, int64_t dim, int64_t row, int64_t group) {
  constexpr int G = Draw<acc_t>::kGroup;
  return batch + row * ((dim + G - 1) / G) + group;
}

// One block per (row, chunk); `chunk` is a multiple of the draw group, so a group never straddles blocks.
template <typename scalar_t, Points P, typename Rng>
__global__ void __launch_bounds__(kThreads) interpolate_fwd_kernel(InterpolateParams p, Rng rng) {
  using acc_t = acc_of_t<scalar_t>;
  constexpr int G = Draw<acc_t>::kGroup;
  const int64_t block = blockIdx.x;
  const int64_t row = block / p.chunks, begin = (block % p.chunks) * p.chunk;
  const int64_t end = begin + p.chunk < p.dim ? begin + p.chunk : p.dim;
  const SeedOffset so = rng.unpack();
  __shared__ acc_t s_alpha;
  if (threadIdx.x == 0) {
    Philox r(so.seed, static_cast<uint64_t>(row), so.offset);
    s_alpha = Draw<acc_t>::first(r);
    if (begin == 0) static_cast<acc_t*>(p.alpha)[row] = s_alpha;
    if (block == 0) {
      p.rng_state[0] = static_cast<int64_t>(so.seed);
      p.rng_state[1] = static_cast<int64_t>(so.offset);
    }
  }
  __syncthreads();
  const acc_t a = s_alpha;
  const scalar_t* x = static_cast<const scalar_t*>(p.real) + row * p.dim;
  scalar_t* out = static_cast<scalar_t*>(p.x_hat) + row * p.dim;
  if constexpr (P == Points::kInterpolate) {
    const scalar_t* y = static_cast<const scalar_t*>(p.fake) + row * p.dim;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      out[j] = from_acc<scalar_t>(a * to_acc<acc_t>(x[j]) + (acc_t(1) - a) * to_acc<acc_t>(y[j]));
    }
  } else {
    const acc_t scale = *static_cast<const acc_t*>(p.scale);
    for (int64_t k = begin / G + threadIdx.x; k * G < end; k += blockDim.x) {
      Philox r(so.seed, static_cast<uint64_t>(u_subsequence<acc_t>(p.batch, p.dim, row, k)), so.offset);
      acc_t u[G];
      Draw<acc_t>::group(r, u);
#pragma unroll
      for (int e = 0; e < G; ++e) {
        const int64_t j = k * G + e;
        if (j < end) out[j] = from_acc<scalar_t>(to_acc<acc_t>(x[j]) + a * (scale * u[e]));
      }
    }
  }
}

// interpolate: ∂/∂real = α·go, ∂/∂fake = (1-α)·go. dragan: ∂x̂/∂real is the identity (the caller passes
// go through) and this writes per-chunk partials of ∂/∂s = Σ_j go_ij·α_i·u_ij; autograd carries ∂/∂s
// on through torch's std().
template <typename scalar_t, Points P>
__global__ void __launch_bounds__(kThreads) interpolate_bwd_kernel(InterpolateBwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  constexpr int G = Draw<acc_t>::kGroup;
  const int64_t block = blockIdx.x;
  const int64_t row = block / p.chunks, begin = (block % p.chunks) * p.chunk;
  const int64_t end = begin + p.chunk < p.dim ? begin + p.chunk : p.dim;
  const acc_t a = static_cast<const acc_t*>(p.alpha)[row];
  const scalar_t* go = static_cast<const scalar_t*>(p.grad_out) + row * p.dim;
  if constexpr (P == Points::kInterpolate) {
    scalar_t* gr = static_cast<scalar_t*>(p.grad_real) + row * p.dim;
    scalar_t* gf = static_cast<scalar_t*>(p.grad_other) + row * p.dim;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      const acc_t v = to_acc<acc_t>(go[j]);
      gr[j] = from_acc<scalar_t>(a * v);
      gf[j] = from_acc<scalar_t>((acc_t(1) - a) * v);
    }
  } else {
    const SeedOffset so = SavedRng{p.rng_state}.unpack();
    Partial<acc_t> sum{acc_t(0), 0};
    for (int64_t k = begin / G + threadIdx.x; k * G < end; k += blockDim.x) {
      Philox r(so.seed, static_cast<uint64_t>(u_subsequence<acc_t>(p.batch, p.dim, row, k)), so.offset);
      acc_t u[G];
      Draw<acc_t>::group(r, u);
#pragma unroll
      for (int e = 0; e < G; ++e) {
        const int64_t j = k * G + e;
        if (j < end) sum.value += to_acc<acc_t>(go[j]) * u[e];
      }
    }
    sum = block_reduce<Norm::kL2, acc_t, kThreads>(sum);
    if (threadIdx.x == 0) static_cast<acc_t*>(p.grad_other)[block] = a * sum.value;
  }
}

}  // namespace fastgp
