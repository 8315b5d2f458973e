// Launch parameters shared by the C++ API (fastgp_api.cpp) and the kernel launchers (*.cu).
//
// This header is deliberately torch-free: the .cu files that include it compile in seconds and can be
// checked without PyTorch (csrc/compile_check.sh). Tensors cross this boundary as raw pointers of
// storage order, flash-attention style; the API file has already checked device, shape, layout and dtype.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace fastgp {

// Resident blocks an SM that every kernel is compiled for (__launch_bounds__), and that split_rows in
// fastgp_api.cpp plans the work of a small batch for: four blocks of 256 threads with up to 64 registers each.
constexpr int kMinBlocksPerSm = 4;

// Element type of `grad` / `real`; the accumulation type is float64 for kDouble, else float32 (SPEC.md §3).
enum class DType : int { kHalf, kBFloat16, kFloat, kDouble };
enum class Norm : int { kL2, kL1, kLinf };
enum class Constraint : int { kLs, kHinge, kSquaredHinge };
enum class Reduction : int { kMean, kMax };
enum class Mode : int { kGn, kPgn };
enum class Points : int { kInterpolate, kDragan };

// Rows are samples: sample i occupies elements [i*d, (i+1)*d) of storage (batch-outermost, dense).
// The per-row outputs of the forwards (norms, coef, factor) are what the backwards read: the same
// (P, norms, coef, factor) / (f̂, norms, factor) contract as the Triton ops in fastgp/ops/.
struct PenaltyFwdParams {
  const void* grad;      // (B, d), `dtype`
  const void* scores;    // (B,) accumulation dtype: per-sample f_i, or nullptr (no output term)
  void* penalty;         // () accumulation dtype
  void* norms;           // (B,) accumulation dtype
  void* coef;            // (B,) accumulation dtype: ∂P/∂n_i
  void* factor;          // (B,) accumulation dtype: ∂n_i/∂g_i's per-row factor (common.cuh)
  void* partials;        // (B, chunks) accumulation dtype workspace
  int64_t* partial_ties; // (B, chunks) workspace: linf tie counts
  unsigned int* counter; // one zeroed word: blocks that finished their chunk
  const float* grad_scale; // () float32: the norms are of grad_scale·grad (AMP's 1/scale), or nullptr (1)
  int64_t batch, dim, chunk, chunks;
  double center, weight, output_weight;
  DType dtype;
  Norm norm;
  Constraint constraint;
  Reduction reduction;
};

struct PenaltyBwdParams {
  const void* grad_penalty; // () accumulation dtype, upstream gradient of P
  const void* grad_norms;   // (B,) accumulation dtype upstream gradient of the norms, or nullptr
  const void* grad;         // (B, d)
  const void* scores;       // (B,) accumulation dtype, or nullptr
  const void* norms;        // (B,)
  const void* coef;         // (B,)
  const void* factor;       // (B,)
  void* grad_grad;          // (B, d) like grad
  void* grad_scores;        // (B,) accumulation dtype, or nullptr
  const float* grad_scale;  // () float32, as the forward's, or nullptr
  int64_t batch, dim, chunk, chunks;
  double output_weight;
  DType dtype;
  Norm norm;
};

struct NormalizeFwdParams {
  const void* scores;    // (B,) accumulation dtype
  const void* grad;      // (B, d)
  void* out;             // (B,) accumulation dtype
  void* norms;           // (B,) accumulation dtype: ‖g_i‖ (gn) or ‖1 - g_i‖ (pgn)
  void* factor;          // (B,) accumulation dtype
  void* partials;        // (B, chunks)
  int64_t* partial_ties; // (B, chunks) workspace: linf tie counts
  unsigned int* counter; // one zeroed word
  int64_t batch, dim, chunk, chunks;
  DType dtype;
  Mode mode;
  Norm norm;
};

struct NormalizeBwdParams {
  const void* grad_out; // (B,) accumulation dtype
  const void* scores;   // (B,)
  const void* grad;     // (B, d)
  const void* norms;    // (B,)
  const void* factor;   // (B,)
  void* grad_scores;    // (B,) accumulation dtype
  void* grad_grad;      // (B, d) like grad
  int64_t batch, dim, chunk, chunks;
  DType dtype;
  Mode mode;
  Norm norm;
};

struct InterpolateParams {
  const void* real;   // (B, d)
  const void* fake;   // (B, d) (interpolate) or nullptr (dragan)
  const void* scale;  // () accumulation dtype 0.5·std(real) (dragan) or nullptr
  void* x_hat;        // (B, d)
  void* alpha;        // (B,) accumulation dtype
  int64_t* rng_state; // (2,) seed and offset actually used, for the backward's replay of u
  int64_t batch, dim, chunk, chunks;
  DType dtype;
  Points points;
};

struct InterpolateBwdParams {
  const void* grad_out;   // (B, d)
  const void* alpha;      // (B,)
  const int64_t* rng_state;
  void* grad_real;        // (B, d)
  void* grad_other;       // (B, d) grad of fake (interpolate); (B, chunks) partials of d/d scale (dragan)
  int64_t batch, dim, chunk, chunks;
  DType dtype;
  Points points;
};

// Every launcher enqueues exactly one kernel on `stream` and returns cudaGetLastError(). The forward
// interpolation launcher takes PyTorch's PhiloxCudaState and is declared in interpolate_launch.h.
cudaError_t launch_penalty_fwd(const PenaltyFwdParams& p, cudaStream_t stream);
cudaError_t launch_penalty_bwd(const PenaltyBwdParams& p, cudaStream_t stream);
cudaError_t launch_normalize_fwd(const NormalizeFwdParams& p, cudaStream_t stream);
cudaError_t launch_normalize_bwd(const NormalizeBwdParams& p, cudaStream_t stream);
cudaError_t launch_interpolate_bwd(const InterpolateBwdParams& p, cudaStream_t stream);

}  // namespace fastgp
