// FASTGP_HD: a function the kernels call and the host checks of csrc/tests/ run, compiled by nvcc or by a
// plain C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define FASTGP_HD __host__ __device__ __forceinline__
#else
#define FASTGP_HD inline
#endif
