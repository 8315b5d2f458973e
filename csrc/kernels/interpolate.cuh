// Where the penalty is evaluated (SPEC.md §2): x̂_i = α_i x_i + (1-α_i) y_i (WGAN-GP), and DRAGAN's
// x̂_i = x_i + α_i · s · u_i with s = 0.5·std(x) (Kodali et al. 2017), α_i, u_ij ~ U[0,1) from Philox.
//
// Streams: α_i is the first output of subsequence i (of its 128-bit block, the rest unused: one call per row);
// the u of elements [G·k, G·k+G) of row i are the whole 128-bit block of subsequence B + i·ceil(d/G) + k
// (G = 4 floats from the four 32-bit outputs, or 2 doubles from two pairs). The α subsequences [0, B) and
// the u subsequences [B, ...) are disjoint. Every draw depends on (seed, offset, i, j) only, never on the
// launch shape or on the alignment that picks the vectorised path, so the backward can regenerate u; each
// subsequence uses one 128-bit block, so the generator's offset advances by 4 per call.
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

// Visits elements [begin, end) of row `row` with their DRAGAN noise u_j. Where `vectorise` and the row starts on
// a 16-byte boundary, whole vectors go through `load(j)` then `use(j, loaded, u)` (for_each_element), each vector
// holding whole draw groups; every other element goes through `scalar(j, u_j)`, one Philox call per group.
// `begin` is a multiple of the group (the chunk is a multiple of 8), so no group straddles two chunks.
template <typename scalar_t, typename acc_t, typename Scalar, typename Load, typename Use>
__device__ __forceinline__ void for_each_noise(const scalar_t* row_base, bool vectorise, int64_t batch, int64_t dim,
                                               int64_t row, int64_t begin, int64_t end, SeedOffset so, Scalar&& scalar,
                                               Load&& load, Use&& use) {
  constexpr int G = Draw<acc_t>::kGroup, V = Vec<scalar_t>::kSize;
  const int64_t first = u_subsequence<acc_t>(batch, dim, row, 0);
  const bool aligned = vectorise && reinterpret_cast<uintptr_t>(row_base + begin) % 16 == 0;
  const int64_t hi = aligned ? vector_span(row_base, begin, end, true).hi : begin;
  for_each_element<V>(
      Span{begin, hi}, begin, hi, [](int64_t) {}, load,
      [&](int64_t j, const auto& loaded) {
        acc_t u[V];
#pragma unroll
        for (int q = 0; q < V / G; ++q) {
          Philox r(so.seed, static_cast<uint64_t>(first + j / G + q), so.offset);
          Draw<acc_t>::group(r, u + q * G);
        }
        use(j, loaded, u);
      });
  for (int64_t k = hi / G + threadIdx.x; k * G < end; k += blockDim.x) {
    Philox r(so.seed, static_cast<uint64_t>(first + k), so.offset);
    acc_t u[G];
    Draw<acc_t>::group(r, u);
#pragma unroll
    for (int e = 0; e < G; ++e) {
      if (k * G + e < end) scalar(k * G + e, u[e]);
    }
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void interpolate_row(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                                scalar_t* __restrict__ out, int64_t begin, int64_t end, acc_t a) {
  constexpr int V = Vec<scalar_t>::kSize;
  const auto mix = [&](scalar_t xj, scalar_t yj) {
    return from_acc<scalar_t>(a * to_acc<acc_t>(xj) + (acc_t(1) - a) * to_acc<acc_t>(yj));
  };
  struct Pair {
    Vec<scalar_t> x, y;
  };
  for_each_element<V>(
      vector_span(x, begin, end, same_alignment(x, out) && same_alignment(y, out)), begin, end,
      [&](int64_t j) { out[j] = mix(x[j], y[j]); }, [&](int64_t j) { return Pair{load_vec(x, j), load_vec(y, j)}; },
      [&](int64_t j, const Pair& in) {
        Vec<scalar_t> o;
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = mix(in.x.v[e], in.y.v[e]);
        store_vec(out, j, o);
      });
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void dragan_row(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t batch,
                                           int64_t dim, int64_t row, int64_t begin, int64_t end, acc_t a, acc_t scale,
                                           SeedOffset so) {
  constexpr int V = Vec<scalar_t>::kSize;
  const auto shift = [&](scalar_t xj, acc_t u) { return from_acc<scalar_t>(to_acc<acc_t>(xj) + a * (scale * u)); };
  for_each_noise<scalar_t, acc_t>(
      x, same_alignment(x, out), batch, dim, row, begin, end, so, [&](int64_t j, acc_t u) { out[j] = shift(x[j], u); },
      [&](int64_t j) { return load_vec(x, j); },
      [&](int64_t j, const Vec<scalar_t>& in, const acc_t* u) {
        Vec<scalar_t> o;
#pragma unroll
        for (int e = 0; e < V; ++e) o.v[e] = shift(in.v[e], u[e]);
        store_vec(out, j, o);
      });
}

// Work items are (row, chunk) pairs (common.cuh); the first thread draws the row's α for the block.
template <typename scalar_t, Points P, typename Rng>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) interpolate_fwd_kernel(const InterpolateParams p,
                                                                                     const Rng rng) {
  using acc_t = acc_of_t<scalar_t>;
  const SeedOffset so = rng.unpack();
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    p.rng_state[0] = static_cast<int64_t>(so.seed);
    p.rng_state[1] = static_cast<int64_t>(so.offset);
  }
  __shared__ acc_t s_alpha;
  for (int64_t item = blockIdx.x; item < p.batch * p.chunks; item += gridDim.x) {
    const Item it = item_of(item, p.chunks, p.chunk, p.dim);
    if (threadIdx.x == 0) {
      Philox r(so.seed, static_cast<uint64_t>(it.row), so.offset);
      s_alpha = Draw<acc_t>::first(r);
      if (it.begin == 0) static_cast<acc_t*>(p.alpha)[it.row] = s_alpha;
    }
    __syncthreads();
    const acc_t a = s_alpha;
    const int64_t offset = it.row * p.dim;
    const scalar_t* x = static_cast<const scalar_t*>(p.real) + offset;
    scalar_t* out = static_cast<scalar_t*>(p.x_hat) + offset;
    if constexpr (P == Points::kInterpolate) {
      interpolate_row(x, static_cast<const scalar_t*>(p.fake) + offset, out, it.begin, it.end, a);
    } else {
      dragan_row(x, out, p.batch, p.dim, it.row, it.begin, it.end, a, *static_cast<const acc_t*>(p.scale), so);
    }
    __syncthreads();  // s_alpha is rewritten for the next item
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void interpolate_bwd_row(const scalar_t* __restrict__ go, scalar_t* __restrict__ gr,
                                                    scalar_t* __restrict__ gf, int64_t begin, int64_t end, acc_t a) {
  constexpr int V = Vec<scalar_t>::kSize;
  for_each_element<V>(
      vector_span(go, begin, end, same_alignment(go, gr) && same_alignment(go, gf)), begin, end,
      [&](int64_t j) {
        const acc_t v = to_acc<acc_t>(go[j]);
        gr[j] = from_acc<scalar_t>(a * v);
        gf[j] = from_acc<scalar_t>((acc_t(1) - a) * v);
      },
      [&](int64_t j) { return load_vec(go, j); },
      [&](int64_t j, const Vec<scalar_t>& in) {
        Vec<scalar_t> r, f;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const acc_t v = to_acc<acc_t>(in.v[e]);
          r.v[e] = from_acc<scalar_t>(a * v);
          f.v[e] = from_acc<scalar_t>((acc_t(1) - a) * v);
        }
        store_vec(gr, j, r);
        store_vec(gf, j, f);
      });
}

// interpolate: ∂/∂real = α·go, ∂/∂fake = (1-α)·go. dragan: ∂x̂/∂real is the identity (the caller passes
// go through) and this writes per-item partials of ∂/∂s = Σ_j go_ij·α_i·u_ij; autograd carries ∂/∂s
// on through torch's std().
template <typename scalar_t, Points P>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) interpolate_bwd_kernel(const InterpolateBwdParams p) {
  using acc_t = acc_of_t<scalar_t>;
  for (int64_t item = blockIdx.x; item < p.batch * p.chunks; item += gridDim.x) {
    const Item it = item_of(item, p.chunks, p.chunk, p.dim);
    const acc_t a = static_cast<const acc_t*>(p.alpha)[it.row];
    const int64_t offset = it.row * p.dim;
    const scalar_t* go = static_cast<const scalar_t*>(p.grad_out) + offset;
    if constexpr (P == Points::kInterpolate) {
      interpolate_bwd_row(go, static_cast<scalar_t*>(p.grad_real) + offset, static_cast<scalar_t*>(p.grad_other) + offset,
                          it.begin, it.end, a);
    } else {
      constexpr int V = Vec<scalar_t>::kSize;
      Partial<acc_t> sum{acc_t(0), 0};
      for_each_noise<scalar_t, acc_t>(
          go, true, p.batch, p.dim, it.row, it.begin, it.end, SavedRng{p.rng_state}.unpack(),
          [&](int64_t j, acc_t u) { sum.value += to_acc<acc_t>(go[j]) * u; }, [&](int64_t j) { return load_vec(go, j); },
          [&](int64_t, const Vec<scalar_t>& in, const acc_t* u) {
#pragma unroll
            for (int e = 0; e < V; ++e) sum.value += to_acc<acc_t>(in.v[e]) * u[e];
          });
      sum = block_reduce<Norm::kL2, acc_t, kThreads>(sum);
      if (threadIdx.x == 0) static_cast<acc_t*>(p.grad_other)[item] = a * sum.value;
    }
  }
}

}  // namespace fastgp
