// The C++ API of fastgp's CUDA extension: op schemas (namespace fastgp_cuda), argument checks, allocation,
// and the launch of one kernel per op on the current stream (flash-attention's *_api.cpp, registered the
// way pytorch/extension-cpp does). The math is SPEC.md's; the kernels are in csrc/kernels/.
//
// Arguments arrive validated by fastgp's Python API; the checks here guard the C++ boundary itself
// (a direct torch.ops.fastgp_cuda call), and cost nothing next to a launch.
#include <Python.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fastgp_params.h"
#include "interpolate_launch.h"

#define CHECK_DEVICE(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got ", (x).device())
#define CHECK_SAME_DEVICE(x, y) TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on one device")
#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())
#define CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define CHECK_DTYPE(x, t) TORCH_CHECK((x).scalar_type() == (t), #x " must be ", (t), ", got ", (x).scalar_type())
// Sample i must occupy storage [i*d, (i+1)*d): any dense layout with the batch outermost (contiguous,
// channels_last, ...) qualifies, since every op here is invariant to the order within a sample.
#define CHECK_ROWS(x)                                                                                   \
  TORCH_CHECK((x).dim() >= 1 && (x).size(0) > 0 && batch_outermost(x),                                   \
              #x " must be a non-empty dense tensor with the batch dimension outermost (e.g. contiguous " \
                 "or channels_last)")

namespace fastgp {
namespace {

bool batch_outermost(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  const int64_t rows = t.size(0);
  return rows == 1 || t.stride(0) == t.numel() / rows;
}

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    default: TORCH_CHECK(false, "fastgp_cuda supports float16, bfloat16, float32 and float64, got ", t.scalar_type());
  }
}

// SPEC.md §3: float64 accumulates in float64, every other dtype in float32.
at::ScalarType acc_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

Norm norm_of(const std::string& s) {
  if (s == "l2") return Norm::kL2;
  if (s == "l1") return Norm::kL1;
  TORCH_CHECK(s == "linf", "norm must be 'l2', 'l1' or 'linf', got '", s, "'");
  return Norm::kLinf;
}

Constraint constraint_of(const std::string& s) {
  if (s == "ls") return Constraint::kLs;
  if (s == "hinge") return Constraint::kHinge;
  TORCH_CHECK(s == "squared_hinge", "constraint must be 'ls', 'hinge' or 'squared_hinge', got '", s, "'");
  return Constraint::kSquaredHinge;
}

Reduction reduction_of(const std::string& s) {
  if (s == "mean") return Reduction::kMean;
  TORCH_CHECK(s == "max", "reduction must be 'mean' or 'max', got '", s, "'");
  return Reduction::kMax;
}

Mode mode_of(const std::string& s) {
  if (s == "gn") return Mode::kGn;
  TORCH_CHECK(s == "pgn", "mode must be 'gn' or 'pgn', got '", s, "'");
  return Mode::kPgn;
}

Points points_of(const std::string& s) {
  if (s == "interpolate") return Points::kInterpolate;
  TORCH_CHECK(s == "dragan", "points must be 'interpolate' or 'dragan', got '", s, "'");
  return Points::kDragan;
}

// How a row of `dim` elements is split into chunks, the kernels' work items. A chunk should hold at least
// 2048 elements (8 a thread) to amortise its block reduction, and a small batch of long rows should still
// fill one wave of kMinBlocksPerSm blocks an SM: floor(slots / batch) chunks a row, so that the items never
// exceed the wave by a few (the launchers size the grid to whole waves). Chunks are a multiple of 8
// elements: of the Philox draw group (4), so a group never straddles two chunks, and of every 16-byte
// vector's length, so that a chunk of an aligned row starts aligned.
// The SM count is queried once per device (the guard has made the tensor's device current).
int64_t sm_count() {
  static std::once_flag once[64];
  static int counts[64];
  const int device = c10::cuda::current_device();
  TORCH_CHECK(device < 64, "fastgp_cuda supports device indices below 64");
  std::call_once(once[device], [device] {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device));
  });
  return counts[device];
}

struct Split {
  int64_t chunk, chunks;
};

Split split_rows(int64_t batch, int64_t dim) {
  constexpr int64_t kMinChunk = 2048, kAlign = 8;
  const int64_t slots = sm_count() * kMinBlocksPerSm;
  const int64_t max_chunks = std::max<int64_t>(1, (dim + kMinChunk - 1) / kMinChunk);
  const int64_t want = std::clamp<int64_t>(slots / batch, 1, max_chunks);
  int64_t chunk = (dim + want - 1) / want;
  chunk = std::max<int64_t>(kAlign, (chunk + kAlign - 1) / kAlign * kAlign);
  return {chunk, std::max<int64_t>(1, (dim + chunk - 1) / chunk)};
}

// Integer workspace of a one-launch reduction: per-chunk linf tie counts (64-bit: a chunk may hold more than
// 2^31 tied entries), then the finished-blocks counter, zeroed by a memset (a copy-engine op, not a kernel
// launch; capturable in a CUDA graph).
struct Scratch {
  at::Tensor buffer;
  int64_t* partial_ties;
  unsigned int* counter;

  Scratch(int64_t partials, const at::TensorOptions& opts) : buffer(at::empty({partials + 1}, opts.dtype(at::kLong))) {
    partial_ties = buffer.data_ptr<int64_t>();
    counter = reinterpret_cast<unsigned int*>(partial_ties + partials);
    C10_CUDA_CHECK(cudaMemsetAsync(counter, 0, sizeof(unsigned int), c10::cuda::getCurrentCUDAStream()));
  }
};

void check_grad(const at::Tensor& grad) {
  CHECK_DEVICE(grad);
  CHECK_ROWS(grad);
  dtype_of(grad);
}

// Per-sample (B,) tensors computed by the forward and handed back to the backward.
void check_saved(const at::Tensor& x, const at::Tensor& grad, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(x.device() == grad.device(), name, " must be on the device of grad");
  TORCH_CHECK(x.scalar_type() == dtype, name, " must be ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous() && x.dim() == 1 && x.size(0) == grad.size(0), name, " must be a contiguous (B,) tensor");
}

}  // namespace

// Per-sample scores f (B,) in the accumulation dtype of `grad`, as the Python side passes them.
void check_scores(const at::Tensor& scores, const at::Tensor& grad, at::ScalarType acc) {
  CHECK_SAME_DEVICE(scores, grad);
  CHECK_DTYPE(scores, acc);
  CHECK_CONTIGUOUS(scores);
  TORCH_CHECK(scores.numel() == grad.size(0), "scores must hold one score per sample of grad");
}

// AMP's 1/scale as a float32 device scalar, read by the kernels (no host sync).
const float* grad_scale_ptr(const std::optional<at::Tensor>& grad_scale, const at::Tensor& grad) {
  if (!grad_scale.has_value()) return nullptr;
  CHECK_SAME_DEVICE(*grad_scale, grad);
  CHECK_DTYPE(*grad_scale, at::kFloat);
  TORCH_CHECK(grad_scale->numel() == 1, "grad_scale must hold one number, got shape ", grad_scale->sizes());
  return grad_scale->data_ptr<float>();
}

// P = λ · R_i h(‖s·g_i‖) + ε · mean_i f_i² and what the backward needs: (P, norms, coef, factor).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> penalty_fwd(
    const at::Tensor& grad, const std::optional<at::Tensor>& scores, const std::string& norm,
    const std::string& constraint, double center, double weight, const std::string& reduction, double output_weight,
    const std::optional<at::Tensor>& grad_scale) {
  check_grad(grad);
  const at::cuda::CUDAGuard guard(grad.device());
  const int64_t batch = grad.size(0), dim = grad.numel() / batch;
  const auto acc = acc_type(grad);
  const auto opts = grad.options().dtype(acc);
  if (scores.has_value()) check_scores(*scores, grad, acc);
  const Split split = split_rows(batch, dim);
  at::Tensor penalty = at::empty({}, opts), norms = at::empty({batch}, opts);
  at::Tensor coef = at::empty({batch}, opts), factor = at::empty({batch}, opts);
  at::Tensor partials = at::empty({batch * split.chunks}, opts);
  const Scratch scratch(batch * split.chunks, grad.options());

  PenaltyFwdParams p{};
  p.grad = grad.data_ptr();
  p.scores = scores.has_value() ? scores->data_ptr() : nullptr;
  p.penalty = penalty.data_ptr();
  p.norms = norms.data_ptr();
  p.coef = coef.data_ptr();
  p.factor = factor.data_ptr();
  p.partials = partials.data_ptr();
  p.partial_ties = scratch.partial_ties;
  p.counter = scratch.counter;
  p.grad_scale = grad_scale_ptr(grad_scale, grad);
  p.batch = batch;
  p.dim = dim;
  p.chunk = split.chunk;
  p.chunks = split.chunks;
  p.center = center;
  p.weight = weight;
  p.output_weight = output_weight;
  p.dtype = dtype_of(grad);
  p.norm = norm_of(norm);
  p.constraint = constraint_of(constraint);
  p.reduction = reduction_of(reduction);
  C10_CUDA_CHECK(launch_penalty_fwd(p, c10::cuda::getCurrentCUDAStream()));
  return {penalty, norms, coef, factor};
}

// (∂L/∂grad, ∂L/∂scores); the second is (0,) when `scores` is None.
std::tuple<at::Tensor, at::Tensor> penalty_bwd(const at::Tensor& grad_penalty, const std::optional<at::Tensor>& grad_norms,
                                               const at::Tensor& grad, const std::optional<at::Tensor>& scores,
                                               const at::Tensor& norms, const at::Tensor& coef, const at::Tensor& factor,
                                               const std::string& norm, double output_weight,
                                               const std::optional<at::Tensor>& grad_scale) {
  check_grad(grad);
  const at::cuda::CUDAGuard guard(grad.device());
  const int64_t batch = grad.size(0), dim = grad.numel() / batch;
  const auto acc = acc_type(grad);
  CHECK_SAME_DEVICE(grad_penalty, grad);
  CHECK_DTYPE(grad_penalty, acc);
  CHECK_SHAPE(grad_penalty);
  check_saved(norms, grad, acc, "norms");
  check_saved(coef, grad, acc, "coef");
  check_saved(factor, grad, acc, "factor");
  if (grad_norms.has_value()) check_saved(*grad_norms, grad, acc, "grad_norms");
  if (scores.has_value()) check_scores(*scores, grad, acc);
  const Split split = split_rows(batch, dim);
  at::Tensor grad_grad = at::empty_like(grad);  // same strides as grad: written in storage order
  at::Tensor grad_scores = scores.has_value() ? at::empty_like(*scores) : at::empty({0}, grad.options().dtype(acc));

  PenaltyBwdParams p{};
  p.grad_penalty = grad_penalty.data_ptr();
  p.grad_norms = grad_norms.has_value() ? grad_norms->data_ptr() : nullptr;
  p.grad = grad.data_ptr();
  p.scores = scores.has_value() ? scores->data_ptr() : nullptr;
  p.norms = norms.data_ptr();
  p.coef = coef.data_ptr();
  p.factor = factor.data_ptr();
  p.grad_grad = grad_grad.data_ptr();
  p.grad_scores = scores.has_value() ? grad_scores.data_ptr() : nullptr;
  p.grad_scale = grad_scale_ptr(grad_scale, grad);
  p.batch = batch;
  p.dim = dim;
  p.chunk = split.chunk;
  p.chunks = split.chunks;
  p.output_weight = output_weight;
  p.dtype = dtype_of(grad);
  p.norm = norm_of(norm);
  C10_CUDA_CHECK(launch_penalty_bwd(p, c10::cuda::getCurrentCUDAStream()));
  return {grad_grad, grad_scores};
}

// f̂ = u / (‖g'‖ + |u|) with what the backward needs: (f̂, norms, factor). `scores` holds one score per
// sample in the accumulation dtype of `grad`; f̂ has its shape.
std::tuple<at::Tensor, at::Tensor, at::Tensor> normalize_fwd(const at::Tensor& scores, const at::Tensor& grad,
                                                             const std::string& mode, const std::string& norm) {
  check_grad(grad);
  const at::cuda::CUDAGuard guard(grad.device());
  const int64_t batch = grad.size(0), dim = grad.numel() / batch;
  const auto acc = acc_type(grad);
  check_scores(scores, grad, acc);
  const auto opts = grad.options().dtype(acc);
  const Split split = split_rows(batch, dim);
  at::Tensor out = at::empty_like(scores), norms = at::empty({batch}, opts), factor = at::empty({batch}, opts);
  at::Tensor partials = at::empty({batch * split.chunks}, opts);
  const Scratch scratch(batch * split.chunks, grad.options());

  NormalizeFwdParams p{};
  p.scores = scores.data_ptr();
  p.grad = grad.data_ptr();
  p.out = out.data_ptr();
  p.norms = norms.data_ptr();
  p.factor = factor.data_ptr();
  p.partials = partials.data_ptr();
  p.partial_ties = scratch.partial_ties;
  p.counter = scratch.counter;
  p.batch = batch;
  p.dim = dim;
  p.chunk = split.chunk;
  p.chunks = split.chunks;
  p.dtype = dtype_of(grad);
  p.mode = mode_of(mode);
  p.norm = norm_of(norm);
  C10_CUDA_CHECK(launch_normalize_fwd(p, c10::cuda::getCurrentCUDAStream()));
  return {out, norms, factor};
}

// (∂L/∂scores, ∂L/∂grad) from ∂L/∂f̂ = grad_out, SPEC.md §4.
std::tuple<at::Tensor, at::Tensor> normalize_bwd(const at::Tensor& grad_out, const at::Tensor& scores,
                                                 const at::Tensor& grad, const at::Tensor& norms,
                                                 const at::Tensor& factor, const std::string& mode,
                                                 const std::string& norm) {
  check_grad(grad);
  const at::cuda::CUDAGuard guard(grad.device());
  const int64_t batch = grad.size(0), dim = grad.numel() / batch;
  const auto acc = acc_type(grad);
  check_scores(scores, grad, acc);
  check_scores(grad_out, grad, acc);
  check_saved(norms, grad, acc, "norms");
  check_saved(factor, grad, acc, "factor");
  const Split split = split_rows(batch, dim);
  at::Tensor grad_scores = at::empty_like(scores);
  at::Tensor grad_grad = at::empty_like(grad);

  NormalizeBwdParams p{};
  p.grad_out = grad_out.data_ptr();
  p.scores = scores.data_ptr();
  p.grad = grad.data_ptr();
  p.norms = norms.data_ptr();
  p.factor = factor.data_ptr();
  p.grad_scores = grad_scores.data_ptr();
  p.grad_grad = grad_grad.data_ptr();
  p.batch = batch;
  p.dim = dim;
  p.chunk = split.chunk;
  p.chunks = split.chunks;
  p.dtype = dtype_of(grad);
  p.mode = mode_of(mode);
  p.norm = norm_of(norm);
  C10_CUDA_CHECK(launch_normalize_bwd(p, c10::cuda::getCurrentCUDAStream()));
  return {grad_scores, grad_grad};
}

// (x̂, α, rng_state): `fake` for points="interpolate", `scale` = 0.5·std(real) (0-d, accumulation dtype)
// for points="dragan". seed=None draws from PyTorch's CUDA generator of real's device.
std::tuple<at::Tensor, at::Tensor, at::Tensor> interpolate(const at::Tensor& real, const std::optional<at::Tensor>& fake,
                                                           const std::optional<at::Tensor>& scale,
                                                           const std::string& points, std::optional<int64_t> seed) {
  CHECK_DEVICE(real);
  CHECK_ROWS(real);
  const at::cuda::CUDAGuard guard(real.device());
  const int64_t batch = real.size(0), dim = real.numel() / batch;
  const auto acc = acc_type(real);
  const Points kind = points_of(points);
  if (kind == Points::kInterpolate) {
    TORCH_CHECK(fake.has_value(), "points='interpolate' needs fake");
    CHECK_SAME_DEVICE(*fake, real);
    CHECK_DTYPE(*fake, real.scalar_type());
    TORCH_CHECK(fake->sizes() == real.sizes(), "fake must have the shape of real");
    // Strides of size-1 dimensions are arbitrary: only the others say where an element lives.
    for (int64_t k = 0; k < real.dim(); ++k) {
      TORCH_CHECK(real.size(k) == 1 || fake->stride(k) == real.stride(k), "fake must have the memory layout of real");
    }
  } else {
    TORCH_CHECK(scale.has_value(), "points='dragan' needs scale");
    CHECK_SAME_DEVICE(*scale, real);
    CHECK_DTYPE(*scale, acc);
    CHECK_SHAPE(*scale);
  }
  at::PhiloxCudaState philox;
  if (seed.has_value()) {
    philox = at::PhiloxCudaState(static_cast<uint64_t>(*seed), 0);
  } else {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(std::nullopt, at::cuda::detail::getDefaultCUDAGenerator());
    // Each Philox subsequence fastgp uses takes one 128-bit block, i.e. 4 32-bit outputs.
    const std::lock_guard<std::mutex> lock(gen->mutex_);
    philox = gen->philox_cuda_state(4);
  }
  const Split split = split_rows(batch, dim);
  at::Tensor x_hat = at::empty_like(real);
  at::Tensor alpha = at::empty({batch}, real.options().dtype(acc));
  at::Tensor rng_state = at::empty({2}, real.options().dtype(at::kLong));

  InterpolateParams p{};
  p.real = real.data_ptr();
  p.fake = kind == Points::kInterpolate ? fake->data_ptr() : nullptr;
  p.scale = kind == Points::kDragan ? scale->data_ptr() : nullptr;
  p.x_hat = x_hat.data_ptr();
  p.alpha = alpha.data_ptr();
  p.rng_state = rng_state.data_ptr<int64_t>();
  p.batch = batch;
  p.dim = dim;
  p.chunk = split.chunk;
  p.chunks = split.chunks;
  p.dtype = dtype_of(real);
  p.points = kind;
  C10_CUDA_CHECK(launch_interpolate_fwd(p, philox, c10::cuda::getCurrentCUDAStream()));
  return {x_hat, alpha, rng_state};
}

// interpolate: (∂/∂real, ∂/∂fake). dragan: (∂/∂scale 0-d, an empty tensor); ∂x̂/∂real is the identity.
std::tuple<at::Tensor, at::Tensor> interpolate_bwd(const at::Tensor& grad_out, const at::Tensor& alpha,
                                                   const at::Tensor& rng_state, const std::string& points) {
  CHECK_DEVICE(grad_out);
  CHECK_ROWS(grad_out);
  dtype_of(grad_out);
  const at::cuda::CUDAGuard guard(grad_out.device());
  const int64_t batch = grad_out.size(0), dim = grad_out.numel() / batch;
  const auto acc = acc_type(grad_out);
  check_saved(alpha, grad_out, acc, "alpha");
  CHECK_SAME_DEVICE(rng_state, grad_out);
  CHECK_DTYPE(rng_state, at::kLong);
  CHECK_SHAPE(rng_state, 2);
  const Points kind = points_of(points);
  const Split split = split_rows(batch, dim);
  at::Tensor grad_real = kind == Points::kInterpolate ? at::empty_like(grad_out) : at::Tensor();
  at::Tensor other = kind == Points::kInterpolate ? at::empty_like(grad_out)
                                                  : at::empty({batch * split.chunks}, grad_out.options().dtype(acc));
  InterpolateBwdParams p{};
  p.grad_out = grad_out.data_ptr();
  p.alpha = alpha.data_ptr();
  p.rng_state = rng_state.data_ptr<int64_t>();
  p.grad_real = kind == Points::kInterpolate ? grad_real.data_ptr() : nullptr;
  p.grad_other = other.data_ptr();
  p.batch = batch;
  p.dim = dim;
  p.chunk = split.chunk;
  p.chunks = split.chunks;
  p.dtype = dtype_of(grad_out);
  p.points = kind;
  C10_CUDA_CHECK(launch_interpolate_bwd(p, c10::cuda::getCurrentCUDAStream()));
  if (kind == Points::kInterpolate) return {grad_real, other};
  // The per-chunk partials are summed in a fixed order by at::sum: deterministic, no atomics.
  return {other.sum(), at::empty({0}, grad_out.options().dtype(acc))};
}

}  // namespace fastgp

TORCH_LIBRARY(fastgp_cuda, m) {
  m.def("interpolate(Tensor real, Tensor? fake, Tensor? scale, str points, int? seed) -> (Tensor, Tensor, Tensor)",
        {at::Tag::nondeterministic_seeded});
  m.def("interpolate_bwd(Tensor grad_out, Tensor alpha, Tensor rng_state, str points) -> (Tensor, Tensor)");
  // penalty_* and normalize_* have the schemas of the Triton ops (fastgp::, fastgp/ops/), argument names included.
  m.def(
      "penalty_fwd(Tensor grad, Tensor? scores, str norm, str constraint, float center, float weight, str reduction, "
      "float output_weight, Tensor? grad_scale=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "penalty_bwd(Tensor dp, Tensor? dnorms, Tensor grad, Tensor? scores, Tensor norms, Tensor coef, Tensor factor, "
      "str norm, float output_weight, Tensor? grad_scale=None) -> (Tensor, Tensor)");
  m.def("normalize_fwd(Tensor scores, Tensor grad, str mode, str norm) -> (Tensor, Tensor, Tensor)");
  m.def(
      "normalize_bwd(Tensor dout, Tensor scores, Tensor grad, Tensor norms, Tensor factor, str mode, str norm) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgp_cuda, CUDA, m) {
  m.impl("interpolate", &fastgp::interpolate);
  m.impl("interpolate_bwd", &fastgp::interpolate_bwd);
  m.impl("penalty_fwd", &fastgp::penalty_fwd);
  m.impl("penalty_bwd", &fastgp::penalty_bwd);
  m.impl("normalize_fwd", &fastgp::normalize_fwd);
  m.impl("normalize_bwd", &fastgp::normalize_bwd);
}

// The ops register themselves when the library is loaded; this stub only lets `import fastgp._C` load it.
#define FASTGP_CONCAT_(a, b) a##b
#define FASTGP_CONCAT(a, b) FASTGP_CONCAT_(a, b)
#define FASTGP_STRINGIFY_(a) #a
#define FASTGP_STRINGIFY(a) FASTGP_STRINGIFY_(a)
extern "C" PyObject* FASTGP_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, FASTGP_STRINGIFY(TORCH_EXTENSION_NAME), nullptr, -1,
                                          nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
