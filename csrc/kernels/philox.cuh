// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), with the
// counter layout of curand's curand_init(seed, subsequence, offset): key = seed, counter bits 64..127 =
// subsequence, and `offset` counts 32-bit outputs. PyTorch's generator hands out offsets in the same
// unit, so (seed, offset) from at::cuda::philox::unpack drive it exactly as they drive curand.
//
// Written out rather than taken from <curand_kernel.h> because pip-installed CUDA toolchains often lack
// the curand headers, and because a host+device version can be checked bit for bit against PyTorch's
// at::philox_engine on a machine without a GPU (csrc/tests/philox_host_check.cpp).
#pragma once

#include <cstdint>

#include "host_device.cuh"

namespace fastgp {

struct SeedOffset {
  uint64_t seed;
  uint64_t offset;
};

class Philox {
 public:
  // `offset` is in 32-bit outputs and, as every offset fastgp reserves, a multiple of 4.
  FASTGP_HD Philox(uint64_t seed, uint64_t subsequence, uint64_t offset) {
    key_[0] = static_cast<uint32_t>(seed);
    key_[1] = static_cast<uint32_t>(seed >> 32);
    const uint64_t blocks = offset / 4;
    ctr_[0] = static_cast<uint32_t>(blocks);
    ctr_[1] = static_cast<uint32_t>(blocks >> 32);
    ctr_[2] = static_cast<uint32_t>(subsequence);
    ctr_[3] = static_cast<uint32_t>(subsequence >> 32);
  }

  // Raw counter and key, for known-answer tests (csrc/tests/philox_check.cpp).
  FASTGP_HD Philox(const uint32_t counter[4], const uint32_t key[2]) {
    for (int i = 0; i < 4; ++i) ctr_[i] = counter[i];
    key_[0] = key[0];
    key_[1] = key[1];
  }

  // The next four 32-bit outputs (one 128-bit block of the stream).
  FASTGP_HD void next4(uint32_t out[4]) {
    uint32_t c[4] = {ctr_[0], ctr_[1], ctr_[2], ctr_[3]};
    uint32_t k[2] = {key_[0], key_[1]};
    // Ten rounds, fully unrolled by the compiler (no `#pragma unroll`: this also compiles for the host).
    for (int r = 0; r < 10; ++r) {
      if (r > 0) {
        k[0] += 0x9E3779B9u;
        k[1] += 0xBB67AE85u;
      }
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0];
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1];
      c[1] = static_cast<uint32_t>(p1);
      c[3] = static_cast<uint32_t>(p0);
      c[0] = n0;
      c[2] = n2;
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
    if (++ctr_[0] == 0 && ++ctr_[1] == 0 && ++ctr_[2] == 0) ++ctr_[3];
  }

 private:
  uint32_t ctr_[4];
  uint32_t key_[2];
};

// U[0,1), as SPEC.md §2 asks: the top 24 (float) or 53 (double) bits, so 1 is never reached.
FASTGP_HD float uniform_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
FASTGP_HD double uniform_double(uint32_t hi, uint32_t lo) {
  return (static_cast<double>(hi >> 5) * 67108864.0 + static_cast<double>(lo >> 6)) * (1.0 / 9007199254740992.0);
}

}  // namespace fastgp
