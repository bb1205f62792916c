// Copies into a large output that is written once and not read back soon (a convolution's
// output planes): non-temporal ("streaming") stores of whole cache lines, which skip the
// read-for-ownership of each line and do not evict the working set from the caches. The
// unaligned head and tail of a span use ordinary stores. Call streaming_store_fence() once
// a thread has finished its streaming stores (they are weakly ordered).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu/im2col_span.h"

namespace rollconv {

template <typename T>
inline void stream_span(T* __restrict dst, const T* __restrict src, int64_t len) {
#if defined(__SSE2__)
  constexpr int64_t kLine = 64;
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  const int64_t bytes = len * int64_t(sizeof(T));
  const int64_t head = std::min<int64_t>(bytes, (kLine - int64_t(reinterpret_cast<uintptr_t>(d) % kLine)) % kLine);
  if (head % int64_t(sizeof(T)) != 0 || bytes - head < kLine) {  // misaligned for T, or no whole line
    copy_span(dst, src, len);
    return;
  }
  copy_span(dst, src, head / int64_t(sizeof(T)));
  int64_t q = head;
  for (; q + kLine <= bytes; q += kLine) {
    for (int64_t v = 0; v < kLine; v += 16) {
      __m128i x;
      std::memcpy(&x, s + q + v, 16);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + q + v), x);
    }
  }
  copy_span(reinterpret_cast<T*>(d + q), reinterpret_cast<const T*>(s + q), (bytes - q) / int64_t(sizeof(T)));
#else
  copy_span(dst, src, len);
#endif
}

inline void streaming_store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace rollconv
