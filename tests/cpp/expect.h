// The C++ tests' one assertion: count and print failures, keep going.
#pragma once

#include <cstdio>
#include <string>

namespace rollconv_test {

inline int failures = 0;

inline void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

}  // namespace rollconv_test
