// Host check of kernels/rules.cuh, the per-element and per-sample rules the kernels apply, run by
// compile_check.sh and by the test suite on any machine with a C++ compiler and the CUDA headers.
#include <cmath>
#include <initializer_list>
#include <limits>

#include "../kernels/rules.cuh"
#include "expect.h"

namespace {

using fastgp_check::expect;

template <typename acc_t> void nan_norms_have_nan_slopes() {
  using fastgp::Constraint;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  for (Constraint k : {Constraint::kLs, Constraint::kHinge, Constraint::kSquaredHinge}) {
    expect(std::isnan(fastgp::constraint_slope(k, nan, acc_t(1))), "a NaN norm has a NaN slope");
    expect(std::isnan(fastgp::constraint_value(k, nan, acc_t(1))), "a NaN norm has a NaN constraint value");
  }
  expect(fastgp::constraint_slope(Constraint::kHinge, acc_t(1), acc_t(1)) == acc_t(0), "hinge slope 0 at n = c");
  expect(fastgp::constraint_slope(Constraint::kHinge, acc_t(2), acc_t(1)) == acc_t(1), "hinge slope 1 above c");
  expect(fastgp::constraint_slope(Constraint::kSquaredHinge, acc_t(0.5), acc_t(1)) == acc_t(0), "squared hinge below c");
  expect(fastgp::constraint_slope(Constraint::kLs, acc_t(0.5), acc_t(1)) == acc_t(-1), "ls slope 2(n - c)");
  // A row's gradient is its slope times factor times direction: NaN everywhere, also where the direction is 0.
  const acc_t slope = fastgp::constraint_slope(Constraint::kHinge, nan, acc_t(1));
  expect(std::isnan(slope * fastgp::norm_direction<fastgp::Norm::kLinf>(acc_t(0.5), nan)), "NaN row, linf");
  expect(std::isnan(slope * fastgp::norm_direction<fastgp::Norm::kL1>(acc_t(0), nan)), "NaN row, l1 at 0");
}

template <typename acc_t> void linf_ties_count_past_int32() {
  using P = fastgp::Partial<acc_t>;
  constexpr auto kLinf = fastgp::Norm::kLinf;
  const int64_t half = (int64_t(1) << 30) + 8;  // two chunks of 2^30 + 8 tied maxima: 2^31 + 16 in the row
  const P row = fastgp::combine<kLinf>(P{acc_t(3), half}, P{acc_t(3), half});
  expect(row.count == 2 * half, "tie counts add up past 2^31");
  const acc_t factor = fastgp::norm_factor<kLinf>(row);
  expect(factor > acc_t(0) && factor == acc_t(1) / static_cast<acc_t>(2 * half), "linf factor is 1/k for k > 2^31");
  expect(fastgp::combine<kLinf>(P{acc_t(3), 5}, P{acc_t(4), 1}).count == 1, "a larger maximum resets the count");
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  expect(std::isnan(fastgp::combine<kLinf>(P{acc_t(3), 5}, P{nan, 1}).value), "a NaN maximum wins");
  expect(fastgp::norm_factor<kLinf>(P{acc_t(0), 7}) == acc_t(0), "zero row: factor 0");
}

template <typename acc_t> void tiny_l2_rows_are_zero_rows() {
  const bool f64 = sizeof(acc_t) == sizeof(double);
  const acc_t tiny = f64 ? acc_t(0x1p-511) : acc_t(0x1p-63);
  expect(fastgp::l2_norm(tiny * tiny) == acc_t(0), "a norm of 2^-63 (2^-511) is a zero row");
  expect(fastgp::l2_norm(acc_t(4) * tiny * tiny) == acc_t(2) * tiny, "a norm of twice the bound is kept");
  expect(fastgp::l2_norm(acc_t(9)) == acc_t(3), "an ordinary norm is its square root");
  expect(std::isnan(fastgp::l2_norm(std::numeric_limits<acc_t>::quiet_NaN())), "a NaN norm stays NaN");
  expect(fastgp::norm_factor<fastgp::Norm::kL2>(fastgp::Partial<acc_t>{fastgp::l2_norm(tiny * tiny), 0}) == acc_t(0),
         "a tiny row's factor is 0");
}

}  // namespace

int main() {
  tiny_l2_rows_are_zero_rows<float>();
  tiny_l2_rows_are_zero_rows<double>();
  nan_norms_have_nan_slopes<float>();
  nan_norms_have_nan_slopes<double>();
  linf_ties_count_past_int32<float>();
  linf_ties_count_past_int32<double>();
  return fastgp_check::finish("rules_check");
}
