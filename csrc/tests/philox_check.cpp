// Host check of kernels/philox.cuh, run by compile_check.sh: Random123's known answers for
// Philox4x32-10 and the [0,1) range of the uniform maps; with -DFASTGP_WITH_TORCH also bit equality with
// PyTorch's at::philox_engine (documented to reproduce curand_init(seed, subsequence, offset)).
#include "expect.h"

#include "../kernels/philox.cuh"
#ifdef FASTGP_WITH_TORCH
#include <ATen/core/PhiloxRNGEngine.h>
#endif

namespace {

using fastgp_check::expect;

void known_answer(const uint32_t ctr[4], const uint32_t key[2], const uint32_t want[4], const char* what) {
  fastgp::Philox r(ctr, key);
  uint32_t got[4];
  r.next4(got);
  expect(got[0] == want[0] && got[1] == want[1] && got[2] == want[2] && got[3] == want[3], what);
}

}  // namespace

int main() {
  // kat_vectors of Random123 1.09, philox4x32 with 10 rounds.
  const uint32_t zero_c[4] = {0, 0, 0, 0}, zero_k[2] = {0, 0};
  const uint32_t zero_w[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  known_answer(zero_c, zero_k, zero_w, "philox4x32-10 known answer, zero counter and key");
  const uint32_t ones_c[4] = {~0u, ~0u, ~0u, ~0u}, ones_k[2] = {~0u, ~0u};
  const uint32_t ones_w[4] = {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu};
  known_answer(ones_c, ones_k, ones_w, "philox4x32-10 known answer, all-ones counter and key");
  const uint32_t pi_c[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, pi_k[2] = {0xa4093822u, 0x299f31d0u};
  const uint32_t pi_w[4] = {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u};
  known_answer(pi_c, pi_k, pi_w, "philox4x32-10 known answer, digits of pi");

  expect(fastgp::uniform_float(~0u) < 1.0f && fastgp::uniform_float(0u) == 0.0f, "uniform_float in [0, 1)");
  expect(fastgp::uniform_double(~0u, ~0u) < 1.0 && fastgp::uniform_double(0u, 0u) == 0.0, "uniform_double in [0, 1)");

#ifdef FASTGP_WITH_TORCH
  const uint64_t seeds[] = {0, 42, 0x9E3779B97F4A7C15ull, ~0ull};
  const uint64_t subsequences[] = {0, 1, 7, 1ull << 33, ~0ull};
  const uint64_t offsets[] = {0, 4, 8, 1ull << 36};
  for (uint64_t seed : seeds) {
    for (uint64_t sub : subsequences) {
      for (uint64_t offset : offsets) {
        fastgp::Philox mine(seed, sub, offset);
        at::philox_engine theirs(seed, sub, offset / 4);  // counts 128-bit blocks, not 32-bit outputs
        for (int block = 0; block < 3; ++block) {
          uint32_t got[4];
          mine.next4(got);
          for (int k = 0; k < 4; ++k) expect(got[k] == theirs(), "equal to at::philox_engine");
        }
      }
    }
  }
#endif
  return fastgp_check::finish("philox_check");
}
