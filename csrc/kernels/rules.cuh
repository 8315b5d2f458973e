// The scalar rules of SPEC.md §3 and §4 that the kernels apply per element, per row and per sample: the
// statistic a row norm accumulates (with the tie count of linf), the norm's derivative split into a per-row
// factor and a per-element direction, and the constraint h with its slope. Host and device code, so that
// csrc/tests/rules_check.cpp checks them on a machine without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "../fastgp_params.h"
#include "host_device.cuh"

namespace fastgp {

template <typename acc_t> FASTGP_HD acc_t sign_of(acc_t v) {
  // sign(NaN) is NaN, as torch.sgn, so a NaN entry does not turn into a zero gradient.
  return v > acc_t(0) ? acc_t(1) : (v < acc_t(0) ? acc_t(-1) : (v == acc_t(0) ? acc_t(0) : v));
}

// The per-row statistic a chunk contributes: sum of squares (l2), sum of |g| (l1), or max |g| with the
// number of entries that attain it (linf), so that the tie count of the whole row is exact. The count is
// 64-bit: a row may hold more than 2^31 tied entries.
template <typename acc_t> struct Partial {
  acc_t value;
  int64_t count;
};

template <Norm N, typename acc_t> FASTGP_HD Partial<acc_t> combine(Partial<acc_t> a, Partial<acc_t> b) {
  if constexpr (N == Norm::kLinf) {
    if (b.value != b.value || (a.value == a.value && b.value > a.value)) return b;
    if (a.value == b.value) return {a.value, a.count + b.count};
    return a;
  } else {
    return {a.value + b.value, 0};
  }
}

template <Norm N, typename acc_t> FASTGP_HD Partial<acc_t> element(acc_t v) {
  if constexpr (N == Norm::kL2) return {v * v, 0};
  else if constexpr (N == Norm::kL1) return {std::fabs(v), 0};
  else return {std::fabs(v), 1};
}

// An l2 norm from its row's sum of squares, with SPEC.md §3's tiny-row rule: a norm at or below 2^-63
// (float32; 2^-511 for float64), whose square is below the smallest normal number, is 0, so that such a
// row is a zero row whether or not the GPU flushes subnormal sums to zero. NaN stays NaN (NaN <= t is false).
template <typename acc_t> FASTGP_HD acc_t l2_norm(acc_t sum_of_squares) {
  const acc_t tiny = sizeof(acc_t) == sizeof(double) ? acc_t(0x1p-511) : acc_t(0x1p-63);
  const acc_t n = std::sqrt(sum_of_squares);
  return n <= tiny ? acc_t(0) : n;
}

// ∂n/∂v = factor · direction(v) (SPEC.md §3), split so that the forward saves one number per row:
// factor = 1/n (l2), 1 (l1), 1/k over the k tied maxima (linf), and 0 where n = 0 (the zero-gradient rule);
// direction = v (l2), sign(v) (l1), sign(v)·[|v| = n] (linf). Same split as the Triton backend's.
template <Norm N, typename acc_t> FASTGP_HD acc_t norm_factor(Partial<acc_t> r) {
  if (r.value == acc_t(0)) return acc_t(0);
  if constexpr (N == Norm::kL2) return acc_t(1) / r.value;
  else if constexpr (N == Norm::kL1) return acc_t(1);
  else return acc_t(1) / static_cast<acc_t>(r.count > 1 ? r.count : 1);
}

template <Norm N, typename acc_t> FASTGP_HD acc_t norm_direction(acc_t v, acc_t n) {
  if constexpr (N == Norm::kL2) return v;
  else if constexpr (N == Norm::kL1) return sign_of(v);
  else return std::fabs(v) == n ? sign_of(v) : acc_t(0);
}

template <typename acc_t> FASTGP_HD acc_t constraint_value(Constraint k, acc_t n, acc_t c) {
  const acc_t t = n - c;
  if (k == Constraint::kLs) return t * t;
  // `t > 0 ? t : 0` keeps a NaN norm NaN, like torch.relu.
  const acc_t r = t > acc_t(0) ? t : (t != t ? t : acc_t(0));
  return k == Constraint::kHinge ? r : r * r;
}

// h'(n): the hinge's derivative at n = c is 0 (SPEC.md §3, the `n > c` rule, as relu's in PyTorch). A NaN
// norm has a NaN slope under every constraint, so that a NaN row's whole gradient is NaN (SPEC.md §3: NaN in,
// NaN out) rather than a finite number from a slope of 1 or 0.
template <typename acc_t> FASTGP_HD acc_t constraint_slope(Constraint k, acc_t n, acc_t c) {
  const acc_t t = n - c;
  if (t != t) return t;
  if (k == Constraint::kLs) return acc_t(2) * t;
  if (k == Constraint::kHinge) return t > acc_t(0) ? acc_t(1) : acc_t(0);
  return t > acc_t(0) ? acc_t(2) * t : acc_t(0);
}

}  // namespace fastgp
