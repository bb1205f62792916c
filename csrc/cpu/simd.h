// The vector helpers of the CPU micro-kernels (gemm/micro_kernels_impl.h, fft/kernels_impl.h):
// GCC vector types of any width and unaligned loads and stores.
//
// Include it from a per-ISA file after its `#pragma GCC target`: everything here has
// internal linkage, so each ISA's file compiles its own copy for its own target, and the
// linker cannot give one ISA's translation unit another's code.
#pragma once

#if !defined(ROLLCONV_ISA)
#error "cpu/simd.h belongs to the per-ISA files: include it after ROLLCONV_ISA and the target pragma"
#endif

// No library header is included here: one first included after a target pragma would
// compile its inline functions for that target, and the linker could then hand them to
// any translation unit. The per-ISA files include what they need before the pragma.
#include <cstdint>  // typedefs only

namespace rollconv::simd {
namespace {

// The integer as wide as T: the lanes of __builtin_shuffle's masks.
template <typename T>
struct LaneInteger;
template <>
struct LaneInteger<float> {
  typedef int32_t type;
};
template <>
struct LaneInteger<double> {
  typedef int64_t type;
};

// type: Bytes / sizeof(T) lanes of T; lane_index: as many integers as wide as T.
template <typename T, int Bytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
  typedef typename LaneInteger<T>::type lane_index __attribute__((vector_size(Bytes)));
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename T, typename V>
inline void store(T* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

}  // namespace
}  // namespace rollconv::simd
