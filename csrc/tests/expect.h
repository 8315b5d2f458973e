// The failure count of a host check in this directory: `expect` records and prints each failed check,
// `finish` prints "<name>: ok" (the line compile_check.sh shows) and gives the exit status.
#pragma once

#include <cstdio>

namespace fastgp_check {

inline int failures = 0;

inline void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

inline int finish(const char* name) {
  if (failures == 0) std::printf("%s: ok\n", name);
  return failures == 0 ? 0 : 1;
}

}  // namespace fastgp_check
