// The hot loops of the channel-FFT rolling convolution (see channel_fft.h), written once
// with GCC vector extensions and compiled per ISA (cpu/isa.h): each micro_kernels_<isa>.cpp
// includes its headers, sets the target ISA (#pragma GCC target) and includes this file.
//
// Required macros: ROLLCONV_ISA (a namespace name) and ROLLCONV_NATIVE_VECTOR_BYTES (the
// width of the target's vector registers: 64, 32 or 16). Everything here has internal linkage
// except the kernel tables, so no ISA-specific code can be picked by the linker for
// another translation unit.

// Lane vectors are 64 bytes whatever the ISA; without AVX-512 GCC notes that passing them
// changes the ABI. Nothing here is called across translation units (internal linkage), so
// the note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace rollconv::channel_fft {
namespace ROLLCONV_ISA {
namespace {

// A lane vector: kLaneBytes of T held as native vectors of the target ISA (one zmm with
// AVX-512, two ymm with AVX2, four xmm with SSE2). GCC has no machine mode for a generic
// vector wider than the target's registers and keeps such a vector in memory, so every
// operation would go through the stack (with store-forwarding stalls); an array of native
// vectors stays in registers. The operations are lane-wise, so the sums are the same
// whatever the split.
#define ROLLCONV_LANES_OP(op)                                                       \
  friend __attribute__((always_inline)) Lanes operator op(const Lanes& a, const Lanes& b) { \
    Lanes r;                                                                          \
    _Pragma("GCC unroll 4") for (int q = 0; q < kParts; ++q) r.part[q] = a.part[q] op b.part[q]; \
    return r;                                                                         \
  }                                                                                   \
  friend __attribute__((always_inline)) Lanes operator op(const Lanes& a, T s) {      \
    Lanes r;                                                                          \
    _Pragma("GCC unroll 4") for (int q = 0; q < kParts; ++q) r.part[q] = a.part[q] op s; \
    return r;                                                                         \
  }                                                                                   \
  friend __attribute__((always_inline)) Lanes operator op(T s, const Lanes& a) {      \
    Lanes r;                                                                          \
    _Pragma("GCC unroll 4") for (int q = 0; q < kParts; ++q) r.part[q] = s op a.part[q]; \
    return r;                                                                         \
  }

template <typename T>
struct Lanes {
  static constexpr int kParts = kLaneBytes / ROLLCONV_NATIVE_VECTOR_BYTES;
  static constexpr int kPer = ROLLCONV_NATIVE_VECTOR_BYTES / int(sizeof(T));
  typedef T Native __attribute__((vector_size(ROLLCONV_NATIVE_VECTOR_BYTES)));
  Native part[kParts];

  T operator[](int64_t i) const { return part[i / kPer][i % kPer]; }

  ROLLCONV_LANES_OP(+)
  ROLLCONV_LANES_OP(-)
  ROLLCONV_LANES_OP(*)
  friend __attribute__((always_inline)) Lanes operator-(const Lanes& a) {
    Lanes r;
#pragma GCC unroll 4
    for (int q = 0; q < kParts; ++q) r.part[q] = -a.part[q];
    return r;
  }
  __attribute__((always_inline)) Lanes& operator+=(const Lanes& b) {
#pragma GCC unroll 4
    for (int q = 0; q < kParts; ++q) part[q] += b.part[q];
    return *this;
  }
};
#undef ROLLCONV_LANES_OP

// max(v, 0) lane-wise, NaN staying NaN (as torch.relu).
template <typename T>
__attribute__((always_inline)) inline Lanes<T> relu_lanes(const Lanes<T>& v) {
  Lanes<T> r;
#pragma GCC unroll 4
  for (int q = 0; q < Lanes<T>::kParts; ++q) r.part[q] = v.part[q] < T(0) ? typename Lanes<T>::Native{} : v.part[q];
  return r;
}

// Independent lane sums a convolution kernel keeps in flight: four lane vectors' worth (each
// a real and an imaginary part) hide the FMA latency; with fewer registers per lane vector
// (AVX2, SSE2) as many as fit in eight registers, so that none spill.
template <typename T>
constexpr int kSums = Lanes<T>::kParts >= 4 ? 1 : 4 / Lanes<T>::kParts;

// Output rows per strip of dX's sums (strip_sums) when they sum one filter (C = 256, F = 1
// in bench/limits.py): with two registers per lane vector (AVX2), three rows, 12 sums in
// registers, measured 3-10% faster in that backward than two; with several filters two
// (three measured slower).
template <typename T>
constexpr int kLoneFilterStripRows = Lanes<T>::kParts == 2 ? 3 : kSums<T>;

template <typename T>
struct LanesOf {
  using type = Lanes<T>;
};

// A complex vector: the same transform position for the lanes of V. CV<T>, a whole lane
// vector of pixels, is what the sums and the loads and stores work on; the general
// transforms run on one native vector of those lanes at a time (PartCV<T>; see analyze_rows).
template <typename V>
struct Complex {
  V re, im;
};
template <typename T>
using CV = Complex<Lanes<T>>;
template <typename T>
using PartCV = Complex<typename Lanes<T>::Native>;

// Unaligned loads and stores, one native vector at a time (a memcpy of the whole lane
// vector goes through the stack).
template <typename V, typename T>
__attribute__((always_inline)) inline V load(const T* p) {
  V v;
#pragma GCC unroll 4
  for (int q = 0; q < V::kParts; ++q) __builtin_memcpy(&v.part[q], p + q * V::kPer, sizeof(v.part[q]));
  return v;
}
template <typename T, typename V>
__attribute__((always_inline)) inline void store(T* p, const V& v) {
#pragma GCC unroll 4
  for (int q = 0; q < V::kParts; ++q) __builtin_memcpy(p + q * V::kPer, &v.part[q], sizeof(v.part[q]));
}

template <typename T>
constexpr int64_t lanes_of() {
  return sizeof(typename LanesOf<T>::type) / sizeof(T);
}

// The first n lanes of v to p (all when n == lanes), and back (lanes past n read as zero;
// n may be 0).
template <typename T, typename V>
__attribute__((always_inline)) inline void store_prefix(T* p, const V& v, int64_t n) {
  if (n == int64_t(sizeof(V) / sizeof(T))) {
    store(p, v);
    return;
  }
  // Through an array, so that v itself never needs an address (which would keep it, and
  // every lane vector it is computed from, in memory).
  T lanes[sizeof(V) / sizeof(T)];
  store(lanes, v);
  for (int64_t l = 0; l < n; ++l) p[l] = lanes[l];
}
template <typename T>
__attribute__((always_inline)) inline typename LanesOf<T>::type load_prefix(const T* p, int64_t n) {
  using V = typename LanesOf<T>::type;
  if (n == int64_t(sizeof(V) / sizeof(T))) return load<V>(p);
  T lanes[sizeof(V) / sizeof(T)] = {};
  for (int64_t l = 0; l < n; ++l) lanes[l] = p[l];
  return load<V>(lanes);
}

// fn(std::bool_constant<flag>...): run-time flags as compile-time ones.
template <typename Fn>
void with_flags(Fn&& fn) {
  fn();
}
template <typename Fn, typename... Rest>
void with_flags(Fn&& fn, bool first, Rest... rest) {
  with_flags([&](auto... later) { first ? fn(std::true_type{}, later...) : fn(std::false_type{}, later...); },
             rest...);
}

// A loop over count pixels one lane vector at a time: body(whole, p, valid), whole a
// std::bool_constant, true for each full lane vector and false for the partial one at the
// end. With Whole known, load_valid and store_valid have no partial path where every lane
// is valid (with one in the loop body GCC kept the n = 16 synthesis's values on the stack:
// the AVX-512 forward at C = 16 measured 6-12% slower).
template <typename T, typename Body>
__attribute__((always_inline)) inline void for_lane_vectors(int64_t count, Body&& body) {
  constexpr int64_t L = lanes_of<T>();
  int64_t p = 0;
  for (; p + L <= count; p += L) body(std::true_type{}, p, L);
  if (p < count) body(std::false_type{}, p, count - p);
}
template <bool Whole, typename T>
__attribute__((always_inline)) inline typename LanesOf<T>::type load_valid(const T* p, int64_t valid) {
  if constexpr (Whole) return load<typename LanesOf<T>::type>(p);
  return load_prefix(p, valid);
}
template <bool Whole, typename T, typename V>
__attribute__((always_inline)) inline void store_valid(T* p, const V& v, int64_t valid) {
  if constexpr (Whole) {
    store(p, v);
  } else {
    store_prefix(p, v, valid);
  }
}

// The lanes of a group of 2 * lanes pixels of which `valid` are real: the first half, the
// second half; the pixels past `valid` read as zero and are not written. Whole: valid is
// 2 * lanes (known at compile time, so that a loop over whole groups has no partial path:
// with one, GCC kept the split transforms' values on the stack).
template <bool Whole, typename T>
__attribute__((always_inline)) inline void load_group(const T* p, int64_t valid, CV<T>* out) {
  constexpr int64_t L = lanes_of<T>();
  out->re = load_valid<Whole>(p, std::min(valid, L));
  out->im = load_valid<Whole>(p + L, std::max<int64_t>(0, valid - L));
}
template <bool Whole, typename T>
__attribute__((always_inline)) inline void store_group(T* p, int64_t valid, const CV<T>& in) {
  constexpr int64_t L = lanes_of<T>();
  store_valid<Whole>(p, in.re, std::min(valid, L));
  store_valid<Whole>(p + L, in.im, std::max<int64_t>(0, valid - L));
}

// A lane vector (one cache line: kLaneBytes) to a 64-byte aligned p by a non-temporal
// ("streaming") store: no read of the line first, and the caches keep their working set (see
// synthesize). Weakly ordered: stream_fence() after the last.
template <typename T>
__attribute__((always_inline)) inline void stream_lanes(T* p, const Lanes<T>& v) {
  static_assert(kLaneBytes == 64, "a lane vector is one cache line");
#if defined(__x86_64__)
  constexpr bool kFloat = std::is_same_v<T, float>;
#pragma GCC unroll 4
  for (int q = 0; q < Lanes<T>::kParts; ++q) {
    T* at = p + q * Lanes<T>::kPer;
#if ROLLCONV_NATIVE_VECTOR_BYTES == 64
    if constexpr (kFloat) _mm512_stream_ps(at, __m512(v.part[q])); else _mm512_stream_pd(at, __m512d(v.part[q]));
#elif ROLLCONV_NATIVE_VECTOR_BYTES == 32
    if constexpr (kFloat) _mm256_stream_ps(at, __m256(v.part[q])); else _mm256_stream_pd(at, __m256d(v.part[q]));
#else
    if constexpr (kFloat) _mm_stream_ps(at, __m128(v.part[q])); else _mm_stream_pd(at, __m128d(v.part[q]));
#endif
  }
#else
  store(p, v);
#endif
}
inline void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}
// Whether rows dst + r * step are whole cache lines from each lane vector boundary on.
template <typename T>
inline bool line_aligned(const T* dst, int64_t step) {
  return reinterpret_cast<uintptr_t>(dst) % kLaneBytes == 0 && (step * int64_t(sizeof(T))) % kLaneBytes == 0;
}
// An output lane vector: streamed when whole and `stream` (line-aligned rows), else stored.
template <bool Whole, typename T>
__attribute__((always_inline)) inline void store_output(T* p, const Lanes<T>& v, int64_t valid, bool stream) {
  if constexpr (Whole) {
    if (stream) {
      stream_lanes(p, v);
      return;
    }
  }
  store_valid<Whole>(p, v, valid);
}

// v *= (wr + i wi)
template <typename V, typename S>
__attribute__((always_inline)) inline void rotate(Complex<V>& v, S wr, S wi) {
  const V re = v.re * wr - v.im * wi;
  v.im = v.re * wi + v.im * wr;
  v.re = re;
}

// v * (-i)
template <typename V>
__attribute__((always_inline)) inline Complex<V> times_minus_i(const Complex<V>& v) {
  return Complex<V>{v.im, -v.re};
}

template <typename V>
__attribute__((always_inline)) inline Complex<V> operator+(const Complex<V>& a, const Complex<V>& b) {
  return Complex<V>{a.re + b.re, a.im + b.im};
}
template <typename V>
__attribute__((always_inline)) inline Complex<V> operator-(const Complex<V>& a, const Complex<V>& b) {
  return Complex<V>{a.re - b.re, a.im - b.im};
}
template <typename V, typename S>
__attribute__((always_inline)) inline Complex<V> scaled(const Complex<V>& a, S s) {
  return Complex<V>{a.re * s, a.im * s};
}

// The forward DFT of R points in place (sign -), R = 2, 3, 4, 5, 8.
template <typename T, int R, typename C>
inline void butterfly(C* v) {
  if constexpr (R == 8) {
    // The DFT-4s of the even and the odd points, then X_k = E_k + W^k O_k and X_(k+4) =
    // E_k - W^k O_k, W = exp(-2 pi i / 8): W O = (1 - i) O / sqrt 2, W^2 O = -i O, W^3 O =
    // -(1 + i) O / sqrt 2.
    constexpr T half_sqrt2 = T(0.70710678118654752440084436210485);
    C e[4] = {v[0], v[2], v[4], v[6]}, o[4] = {v[1], v[3], v[5], v[7]};
    butterfly<T, 4>(e);
    butterfly<T, 4>(o);
    const C o1{(o[1].re + o[1].im) * half_sqrt2, (o[1].im - o[1].re) * half_sqrt2};
    const C o2 = times_minus_i(o[2]);
    const C o3{(o[3].im - o[3].re) * half_sqrt2, -(o[3].re + o[3].im) * half_sqrt2};
    v[0] = e[0] + o[0];
    v[4] = e[0] - o[0];
    v[1] = e[1] + o1;
    v[5] = e[1] - o1;
    v[2] = e[2] + o2;
    v[6] = e[2] - o2;
    v[3] = e[3] + o3;
    v[7] = e[3] - o3;
  } else if constexpr (R == 2) {
    const C a = v[0];
    v[0] = a + v[1];
    v[1] = a - v[1];
  } else if constexpr (R == 3) {
    constexpr T half_sqrt3 = T(0.86602540378443864676372317075294);
    const C sum = v[1] + v[2];
    const C mid = v[0] - scaled(sum, T(0.5));
    const C rot = scaled(times_minus_i(v[1] - v[2]), half_sqrt3);
    v[0] = v[0] + sum;
    v[1] = mid + rot;
    v[2] = mid - rot;
  } else if constexpr (R == 4) {
    const C t0 = v[0] + v[2], t1 = v[0] - v[2];
    const C t2 = v[1] + v[3], t3 = times_minus_i(v[1] - v[3]);
    v[0] = t0 + t2;
    v[2] = t0 - t2;
    v[1] = t1 + t3;
    v[3] = t1 - t3;
  } else {
    static_assert(R == 5, "radix 2, 3, 4, 5 or 8");
    constexpr T cos1 = T(0.30901699437494742410229341718282);   // cos(2 pi / 5)
    constexpr T cos2 = T(-0.80901699437494742410229341718282);  // cos(4 pi / 5)
    constexpr T sin1 = T(0.95105651629515357211643933337938);   // sin(2 pi / 5)
    constexpr T sin2 = T(0.58778525229247312916870595463907);   // sin(4 pi / 5)
    const C b1 = v[1] + v[4], b2 = v[2] + v[3], d1 = v[1] - v[4], d2 = v[2] - v[3];
    const C c1 = v[0] + scaled(b1, cos1) + scaled(b2, cos2);
    const C c2 = v[0] + scaled(b1, cos2) + scaled(b2, cos1);
    const C s1 = times_minus_i(scaled(d1, sin1) + scaled(d2, sin2));
    const C s2 = times_minus_i(scaled(d1, sin2) - scaled(d2, sin1));
    v[0] = v[0] + b1 + b2;
    v[1] = c1 + s1;
    v[4] = c1 - s1;
    v[2] = c2 + s2;
    v[3] = c2 - s2;
  }
}

// One Stockham stage (decimation in time): input j + r * n / R, twiddled by
// exp(-2 pi i r (j mod span) / (span R)), transformed, lands at output
// (j - j mod span) R + j mod span + r span. R = 0: a plain DFT of radix stage.radix.
template <typename T, int R, typename C>
void stage_pass(const Plan<T>& plan, const Stage& stage, const C* in, C* out, C* temp) {
  const int64_t radix = R > 0 ? R : stage.radix, m = plan.n / radix, span = stage.span;
  const T* tw = plan.table.data() + stage.twiddles;
  const T* roots = plan.table.data() + stage.roots;
  for (int64_t j0 = 0; j0 < m; j0 += span) {
    for (int64_t jm = 0; jm < span; ++jm) {
      const int64_t j = j0 + jm;
      C fixed[R > 0 ? R : 1];
      C* v = R > 0 ? fixed : temp;
      for (int64_t r = 0; r < radix; ++r) v[r] = in[j + r * m];
      if (jm != 0) {
        for (int64_t r = 1; r < radix; ++r) rotate(v[r], tw[2 * (jm * radix + r)], tw[2 * (jm * radix + r) + 1]);
      }
      C* o = out + j0 * radix + jm;
      if constexpr (R > 0) {
        butterfly<T, R>(v);
        for (int64_t r = 0; r < R; ++r) o[r * span] = v[r];
      } else {
        for (int64_t q = 0; q < radix; ++q) {
          C acc = v[0];
          for (int64_t r = 1; r < radix; ++r) {
            C term = v[r];
            const int64_t e = (q * r) % radix;
            rotate(term, roots[2 * e], roots[2 * e + 1]);
            acc = acc + term;
          }
          o[q * span] = acc;
        }
      }
    }
  }
}

// The forward complex FFT of a[0, n); b (n) and temp (plan.max_radix) are scratch. Returns a
// or b (the result).
template <typename T, typename C>
C* transform(const Plan<T>& plan, C* a, C* b, C* temp) {
  for (const Stage& s : plan.stages) {
    switch (s.radix) {
      case 2: stage_pass<T, 2>(plan, s, a, b, temp); break;
      case 3: stage_pass<T, 3>(plan, s, a, b, temp); break;
      case 4: stage_pass<T, 4>(plan, s, a, b, temp); break;
      case 5: stage_pass<T, 5>(plan, s, a, b, temp); break;
      case 8: stage_pass<T, 8>(plan, s, a, b, temp); break;
      default: stage_pass<T, 0>(plan, s, a, b, temp); break;
    }
    std::swap(a, b);
  }
  return a;
}

// v where m > 0, else 0 (lane-wise; a NaN in m keeps v): ReLU's derivative as
// threshold_backward(v, m, 0) applies it.
template <typename T>
__attribute__((always_inline)) inline Lanes<T> masked_lanes(const Lanes<T>& v, const Lanes<T>& m) {
  Lanes<T> r;
#pragma GCC unroll 4
  for (int q = 0; q < Lanes<T>::kParts; ++q) r.part[q] = m.part[q] <= T(0) ? typename Lanes<T>::Native{} : v.part[q];
  return r;
}
template <typename T>
__attribute__((always_inline)) inline CV<T> masked_by(const CV<T>& v, const CV<T>& m) {
  return CV<T>{masked_lanes(v.re, m.re), masked_lanes(v.im, m.im)};
}

// --- short transforms written out -----------------------------------------------------------
// n = 4 (the four rotations of the p4 group: a common channel count; analysis and synthesis)
// and n = 16 (synthesis), per lane vector of pixels (each pixel its own real transform; no
// pairing of pixel groups), in registers: at these n the general path below (a complex
// transform of two pixel groups, staged in scratch, then split) took most of the analysis'
// and the synthesis' time.

// The real DFT of 4 points, A_k = sum_c x_c (-i)^(kc): A_0 and A_2 real, A_3 = conj A_1.
//   A_0 = (x0 + x2) + (x1 + x3),  A_1 = (x0 - x2) + i (x3 - x1),  A_2 = (x0 + x2) - (x1 + x3).
template <typename T>
struct RealDft4 {
  typename LanesOf<T>::type a0;
  CV<T> a1;
  typename LanesOf<T>::type a2;
};
template <typename T, typename V = typename LanesOf<T>::type>
__attribute__((always_inline)) inline RealDft4<T> real_dft4(const V& x0, const V& x1, const V& x2, const V& x3) {
  const V even = x0 + x2, odd = x1 + x3;
  return RealDft4<T>{even + odd, CV<T>{x0 - x2, x3 - x1}, even - odd};
}
// Its inverse times 4 (y_r = A_0 + (-1)^r A_2 + 2 Re(A_1 i^r)), row r to out(r, y_r).
template <typename T, typename Out>
__attribute__((always_inline)) inline void inverse_real_dft4(const RealDft4<T>& a, Out&& out) {
  using V = typename LanesOf<T>::type;
  const V even = a.a0 + a.a2, odd = a.a0 - a.a2, u = a.a1.re + a.a1.re, v = a.a1.im + a.a1.im;
  out(0, even + u);
  out(1, odd - v);
  out(2, even - u);
  out(3, odd + v);
}

// Row c of a lane vector's pixels, masked (ReLU's derivative) when Masked; prefetches the
// same row's block of the next work item (see analyze_rows).
template <typename T, bool Masked, bool Whole>
__attribute__((always_inline)) inline typename LanesOf<T>::type load_row(const T* src, const T* mask, int64_t at,
                                                                        int64_t valid) {
  constexpr int64_t ahead = kStagedGroups * group_pixels<T>();
  __builtin_prefetch(src + at + ahead);
  const auto x = load_valid<Whole>(src + at, valid);
  if constexpr (!Masked) return x;
  __builtin_prefetch(mask + at + ahead);
  return masked_lanes(x, load_valid<Whole>(mask + at, valid));
}

template <typename T, bool Masked>
void analyze_rows4(const T* src, const T* mask, int64_t step, int64_t count, T* spectrum, int64_t plane) {
  using V = typename LanesOf<T>::type;
  for_lane_vectors<T>(count, [&](auto whole, int64_t p, int64_t valid) {
    constexpr bool Whole = decltype(whole)::value;
    const auto row = [&](int64_t c) { return load_row<T, Masked, Whole>(src, mask, c * step + p, valid); };
    const RealDft4<T> a = real_dft4<T>(row(0), row(1), row(2), row(3));
    // (stored one by one: an array of the planes would be zeroed by a memset and kept in memory)
    const V zero{};
    store_valid<Whole>(spectrum + p, a.a0, valid);
    store_valid<Whole>(spectrum + plane + p, zero, valid);
    store_valid<Whole>(spectrum + 2 * plane + p, a.a1.re, valid);
    store_valid<Whole>(spectrum + 3 * plane + p, a.a1.im, valid);
    store_valid<Whole>(spectrum + 4 * plane + p, a.a2, valid);
    store_valid<Whole>(spectrum + 5 * plane + p, zero, valid);
  });
}
// Its inverse (n * irfft: the taps carry the 1 / n), then bias and ReLU.
template <typename T>
void synthesize4(const T* spectrum, int64_t plane, int64_t count, T* dst, int64_t step, T bias, bool relu) {
  using V = typename LanesOf<T>::type;
  for_lane_vectors<T>(count, [&](auto whole, int64_t p, int64_t valid) {
    constexpr bool Whole = decltype(whole)::value;
    const auto at = [&](int64_t q) { return load_valid<Whole>(spectrum + q * plane + p, valid); };
    const RealDft4<T> a{at(0) + bias, CV<T>{at(2), at(3)}, at(4)};
    inverse_real_dft4(a, [&](int64_t r, const V& y) { store_valid<Whole>(dst + r * step + p, relu ? relu_lanes(y) : y, valid); });
  });
}

// The synthesis at n = 16 as 4 x 4 (Cooley-Tukey, c = 4a + b, k = k1 + 4 k2): the forward
// transform would be Y_b = the real DFT-4 of rows b, b + 4, b + 8, b + 12, then X[k1 + 4 k2]
// = sum_b W^(b k1) Y_b[k1] (-i)^(b k2), W = exp(-2 pi i / 16): a DFT-4 over b per k1, where
// k1 = 0 and 2 have real Y_b[k1] and k1 = 1 gives X1, X5, X9 = conj X7 and X13 = conj X3.
// (Written out, that analysis measured slower than the general one: 16 rows and their masks
// read at once are more streams than the staged reading of the general path.)
constexpr double kHalfSqrt2 = 0.70710678118654752440084436210485;  // cos(pi / 4)
constexpr double kCosPi8 = 0.92387953251128675612818318939679;     // cos(pi / 8)
constexpr double kSinPi8 = 0.38268343236508977172845998403040;     // sin(pi / 8)

// Its inverse (n * irfft), then bias and ReLU: those steps backwards, each sub-spectrum U_b
// (U_b[k1] = 4 Y_b[k1]) then an inverse DFT-4 into rows b, b + 4, b + 8, b + 12.
template <typename T>
void synthesize16(const T* spectrum, int64_t plane, int64_t count, T* dst, int64_t step, T bias, bool relu) {
  using V = typename LanesOf<T>::type;
  const T h = T(kHalfSqrt2), c1 = T(kCosPi8), s1 = T(kSinPi8);
  for_lane_vectors<T>(count, [&](auto whole, int64_t p, int64_t valid) {
    constexpr bool Whole = decltype(whole)::value;
    const auto at = [&](int64_t q) { return load_valid<Whole>(spectrum + q * plane + p, valid); };
    const auto freq = [&](int64_t k) { return CV<T>{at(2 * k), at(2 * k + 1)}; };
    // k1 = 0: U_b[0] for b = 0..3, the inverse real DFT-4 of X0 (with the bias), X4, X8.
    V u0[4];
    inverse_real_dft4(RealDft4<T>{at(0) + bias, freq(4), at(16)}, [&](int64_t b, const V& y) { u0[b] = y; });
    // k1 = 2: U_b[2] = Re(exp(i pi b / 4) sum_k2 X_(2 + 4 k2) i^(b k2)).
    const CV<T> x2 = freq(2), x6 = freq(6);
    const V u2[4] = {(x2.re + x6.re) * T(2), (x2.re - x2.im - x6.re - x6.im) * (h + h), (x6.im - x2.im) * T(2),
                     (x6.re - x2.re - x2.im - x6.im) * (h + h)};
    // k1 = 1: an inverse complex DFT-4 of X1, X5, conj X7, conj X3, twiddled by W^(-b).
    const CV<T> q0 = freq(1), q1 = freq(5), x7 = freq(7), x3 = freq(3);
    const CV<T> q2{x7.re, -x7.im}, q3{x3.re, -x3.im};
    const CV<T> t0 = q0 + q2, t1 = q0 - q2, t2 = q1 + q3, d = q1 - q3, t3{-d.im, d.re};  // t3 = i (q1 - q3)
    CV<T> u1[4] = {t0 + t2, t1 + t3, t0 - t2, t1 - t3};
    rotate(u1[1], c1, s1);
    rotate(u1[2], h, h);
    rotate(u1[3], s1, c1);
#pragma GCC unroll 4
    for (int64_t b = 0; b < 4; ++b) {
      inverse_real_dft4(RealDft4<T>{u0[b], u1[b], u2[b]}, [&](int64_t a, const V& y) {
        store_valid<Whole>(dst + (4 * a + b) * step + p, relu ? relu_lanes(y) : y, valid);
      });
    }
  });
}

// The general transforms' layout: part q of a group's lane vectors (its q-th native vector
// of pixels) at parts[q * n + position], so that each part is transformed alone: a radix-4
// butterfly of native vectors fits in AVX2's 16 registers (of whole lane vectors it spilled),
// and a part's two buffers (2 x 16 KiB at n = 256) fit in L1 where a whole group's did not.
// Every operation is lane-wise, so the results are those of transforming the whole group.
template <typename T>
__attribute__((always_inline)) inline void scatter_parts(const CV<T>& v, PartCV<T>* parts, int64_t n) {
#pragma GCC unroll 4
  for (int q = 0; q < Lanes<T>::kParts; ++q) parts[q * n] = PartCV<T>{v.re.part[q], v.im.part[q]};
}
template <typename T>
__attribute__((always_inline)) inline CV<T> gather_parts(const PartCV<T>* parts, int64_t n) {
  CV<T> v;
#pragma GCC unroll 4
  for (int q = 0; q < Lanes<T>::kParts; ++q) {
    v.re.part[q] = parts[q * n].re;
    v.im.part[q] = parts[q * n].im;
  }
  return v;
}
// The complex FFT of each part of a (parts of n); b (as a) and temp (plan.max_radix) are
// scratch. Returns a or b, the one holding the results.
template <typename T>
PartCV<T>* transform_parts(const Plan<T>& plan, PartCV<T>* a, PartCV<T>* b, PartCV<T>* temp) {
  PartCV<T>* z = a;
  for (int64_t q = 0; q < Lanes<T>::kParts; ++q) z = transform(plan, a + q * plan.n, b + q * plan.n, temp) - q * plan.n;
  return z;
}

// The transforms of a block of up to kStagedGroups groups, in scratch: kStagedGroups + 1
// slots of P parts of n, then the DFT temporary. The stages alternate between two buffers;
// group g's input goes where its results then land in slot g (slot g with an even number of
// stages, the last slot the other buffer; else slot g + 1, slot g the other buffer), so
// that the whole block's results are there together: the analysis stores and the
// synthesis reads them plane by plane (row by row) in runs of several groups.
template <typename T>
struct StagedGroups {
  StagedGroups(const Plan<T>& plan, T* scratch)
      : n(plan.n), odd(int64_t(plan.stages.size() % 2)), slots(reinterpret_cast<PartCV<T>*>(scratch)) {}
  PartCV<T>* slot(int64_t i) const { return slots + i * Lanes<T>::kParts * n; }
  PartCV<T>* input(int64_t g) const { return slot(g + odd); }
  const PartCV<T>* result(int64_t g) const { return slot(g); }
  void transform(const Plan<T>& plan, int64_t g) const {
    transform_parts(plan, input(g), odd ? slot(g) : slot(kStagedGroups), slot(kStagedGroups + 1));
  }
  int64_t n, odd;
  PartCV<T>* slots;
};

// The groups of the staged transforms' next block, of `left` pixels: up to kStagedGroups
// whole groups, or the partial last group alone, so that the whole groups before it keep
// the full-width loads and stores (the partial path goes through the stack, lane by lane).
// Each group is its own transform: the blocks' bounds do not change the results.
template <typename T>
inline int64_t staged_groups(int64_t left) {
  const int64_t whole = left / group_pixels<T>();
  return whole > 0 ? std::min(kStagedGroups, whole) : 1;
}

// analyze, of src masked by `mask` (laid out as src) when Masked.
template <typename T, bool Masked>
void analyze_rows(const Plan<T>& plan, const T* src, const T* mask, int64_t step, int64_t count, T* spectrum,
                  int64_t plane, T* scratch) {
  if (plan.n == 4) {
    analyze_rows4<T, Masked>(src, mask, step, count, spectrum, plane);
    return;
  }
  constexpr int64_t G = group_pixels<T>();
  const int64_t n = plan.n, freqs = plan.freqs();
  const StagedGroups<T> staged(plan, scratch);
  for (int64_t p0 = 0, groups = 0; p0 < count; p0 += groups * G) {
    // Row by row, several groups at a time: the n rows are far apart, and longer runs per
    // row keep the loads streaming. (Whole: every group of the block is; a partial last
    // group goes alone, so that the whole groups before it keep full-width loads and
    // stores: see staged_groups.)
    groups = staged_groups<T>(count - p0);
    const auto block = [&](auto whole) __attribute__((always_inline)) {
      constexpr bool Whole = decltype(whole)::value;
      for (int64_t c = 0; c < n; ++c) {
        // The same pixels' block after this one, which the next call reads.
        prefetch_next_block(src + c * step + p0, kStagedGroups * G);
        if constexpr (Masked) prefetch_next_block(mask + c * step + p0, kStagedGroups * G);
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t at = c * step + p0 + g * G, valid = std::min(G, count - p0 - g * G);
          CV<T> v;
          load_group<Whole>(src + at, valid, &v);
          if constexpr (Masked) {
            CV<T> m;
            load_group<Whole>(mask + at, valid, &m);
            v = masked_by(v, m);
          }
          scatter_parts(v, staged.input(g) + c, n);
        }
      }
      for (int64_t g = 0; g < groups; ++g) staged.transform(plan, g);
      // Two real signals from one complex one: A = (Z[k] + conj Z[n-k]) / 2 (first lanes),
      // B = (Z[k] - conj Z[n-k]) / 2i (second lanes). Each plane in runs of several groups.
      for (int64_t k = 0; k < freqs; ++k) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t first = p0 + g * G, valid = std::min(G, count - first);
          const PartCV<T>* z = staged.result(g);
          const CV<T> zk = gather_parts<T>(z + k, n), zm = gather_parts<T>(z + (k == 0 ? 0 : n - k), n);
          const CV<T> re{(zk.re + zm.re) * T(0.5), (zk.im + zm.im) * T(0.5)};  // A.re | B.re
          const CV<T> im{(zk.im - zm.im) * T(0.5), (zm.re - zk.re) * T(0.5)};  // A.im | B.im
          store_group<Whole>(spectrum + 2 * k * plane + first, valid, re);
          store_group<Whole>(spectrum + (2 * k + 1) * plane + first, valid, im);
        }
      }
    };
    with_flags(block, groups * G <= count - p0);
  }
}

template <typename T>
void analyze(const Plan<T>& plan, const T* src, int64_t step, int64_t count, T* spectrum, int64_t plane,
             T* scratch) {
  analyze_rows<T, false>(plan, src, nullptr, step, count, spectrum, plane, scratch);
}

template <typename T>
void analyze_masked(const Plan<T>& plan, const T* src, const T* mask, int64_t step, int64_t count,
                    T* spectrum, int64_t plane, T* scratch) {
  analyze_rows<T, true>(plan, src, mask, step, count, spectrum, plane, scratch);
}

template <typename T>
void synthesize_staged(const Plan<T>& plan, const T* spectrum, int64_t plane, int64_t count, T* dst, int64_t step,
                       T bias, bool relu, bool stream, T* scratch) {
  using V = typename LanesOf<T>::type;
  constexpr int64_t G = group_pixels<T>();
  const int64_t n = plan.n, freqs = plan.freqs();
  const StagedGroups<T> staged(plan, scratch);
  for (int64_t p0 = 0, groups = 0; p0 < count; p0 += groups * G) {
    // Several groups at a time, as the analysis reads them: each spectrum plane, then each
    // output row, in runs of several groups (the n rows are far apart).
    groups = staged_groups<T>(count - p0);
    const auto block = [&](auto whole) __attribute__((always_inline)) {
      constexpr bool Whole = decltype(whole)::value;  // (see analyze_rows)
      // The inverse as conj(FFT(conj Z)), Z = A + iB over the whole circle (A, B Hermitian);
      // the imaginary parts at frequency 0 and n/2 are dropped, as irfft does.
      for (int64_t k = 0; k < freqs; ++k) {
        const bool real = plan.real_frequency(k);
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t at = p0 + g * G, valid = std::min(G, count - at);
          PartCV<T>* in = staged.input(g);
          CV<T> re, im{V{}, V{}};  // A.re | B.re, A.im | B.im
          load_group<Whole>(spectrum + 2 * k * plane + at, valid, &re);
          if (!real) load_group<Whole>(spectrum + (2 * k + 1) * plane + at, valid, &im);
          scatter_parts(CV<T>{re.re - im.im, -(im.re + re.im)}, in + k, n);
          if (!real) scatter_parts(CV<T>{re.re + im.im, im.re - re.im}, in + n - k, n);
        }
      }
      for (int64_t g = 0; g < groups; ++g) staged.transform(plan, g);
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t at = p0 + g * G, valid = std::min(G, count - at);
          const CV<T> zr = gather_parts<T>(staged.result(g) + r, n);
          CV<T> y{zr.re + bias, bias - zr.im};
          if (relu) {
            y.re = relu_lanes(y.re);
            y.im = relu_lanes(y.im);
          }
          store_output<Whole>(dst + r * step + at, y.re, std::min(valid, lanes_of<T>()), stream);
          store_output<Whole>(dst + r * step + at + lanes_of<T>(), y.im, std::max<int64_t>(0, valid - lanes_of<T>()),
                              stream);
        }
      }
    };
    with_flags(block, groups * G <= count - p0);
  }
}

// stream: the output rows written by non-temporal stores where they are whole cache lines
// (the engine's large outputs, which the caches would not keep until they are read): in the
// staged path, which writes each row in runs of several lines. The written-out n = 4 and 16
// store as usual: they write one line of each of 4 or 16 rows in turn, and streamed there
// measured 10-25% slower (bench/roll_conv2d_limits.md).
template <typename T>
void synthesize(const Plan<T>& plan, const T* spectrum, int64_t plane, int64_t count, T* dst,
                int64_t step, T bias, bool relu, bool stream, T* scratch) {
  if (plan.n == 4) {
    synthesize4(spectrum, plane, count, dst, step, bias, relu);
  } else if (plan.n == 16) {
    synthesize16(spectrum, plane, count, dst, step, bias, relu);
  } else if (stream && line_aligned(dst, step)) {
    synthesize_staged(plan, spectrum, plane, count, dst, step, bias, relu, true, scratch);
    stream_fence();
  } else {
    synthesize_staged(plan, spectrum, plane, count, dst, step, bias, relu, false, scratch);
  }
}

// --- the per-frequency convolution sums ----------------------------------------------------
// Each works on zero-padded copies ("tiles") of the planes it reads, so that every tap of
// every chunk of `lanes` output pixels is one full vector load, and keeps its sums in
// registers across the taps: a block of NF filters x NC chunks at a time (NF * NC = kSums:
// enough independent sums to hide the FMA latency). Positions are (row, chunk) pairs; the
// chunks of a row are `lanes` pixels wide, the last one possibly cut short.

// A tile row's runs are short (an image row and its padding), so they are filled inline, a
// lane vector at a time, the last vector ending at the run's end (overlapping the one before):
// a call to memmove or memset per run cost more than the copy at these lengths. Runs shorter
// than a lane vector (narrow planes) go through std::copy and std::fill.
template <typename T>
__attribute__((always_inline)) inline void copy_run(const T* src, int64_t n, T* dst) {
  using V = typename LanesOf<T>::type;
  constexpr int64_t L = lanes_of<T>();
  if (n < L) {
    std::copy(src, src + n, dst);
    return;
  }
  for (int64_t q = 0; q + L < n; q += L) store(dst + q, load<V>(src + q));
  store(dst + n - L, load<V>(src + n - L));
}
template <typename T>
__attribute__((always_inline)) inline void zero_run(T* dst, int64_t n) {
  using V = typename LanesOf<T>::type;
  constexpr int64_t L = lanes_of<T>();
  if (n < L) {
    std::fill(dst, dst + n, T(0));
    return;
  }
  for (int64_t q = 0; q + L < n; q += L) store(dst + q, V{});
  store(dst + n - L, V{});
}

// Where a tile of rows x pitch whose first element lies at plane position (row0, col0) meets
// a plane of height x width: tile rows [r0, r1), columns [q0, q1).
struct TileSpan {
  int64_t r0, r1, q0, q1;
};
inline TileSpan tile_span(int64_t height, int64_t width, int64_t row0, int64_t col0, int64_t rows, int64_t pitch) {
  const int64_t q0 = std::clamp<int64_t>(-col0, 0, pitch), q1 = std::clamp<int64_t>(width - col0, q0, pitch);
  const int64_t r0 = std::clamp<int64_t>(-row0, 0, rows), r1 = std::clamp<int64_t>(height - row0, r0, rows);
  return TileSpan{r0, r1, q0, q1};
}

// Zeros in `parts` tiles of one span (rows x pitch each, one after the other) outside it. A
// kernel that fills several tiles of one geometry zeroes them once and then only copies
// the span (copy_tile_span) per tile: the padding is the same for all.
template <typename T>
void zero_tile_padding(const TileSpan& s, int64_t rows, int64_t pitch, int64_t parts, T* tile) {
  constexpr int64_t L = lanes_of<T>();
  // The padding runs [0, q0) and [q1, pitch) zeroed as runs of at least a lane vector where
  // the row has one (the copy then overwrites what they cover of the plane's run).
  const int64_t head = std::max(s.q0, std::min(L, pitch)), tail = std::min(s.q1, std::max<int64_t>(0, pitch - L));
  for (int64_t part = 0; part < parts; ++part) {
    T* dst = tile + part * rows * pitch;
    for (int64_t r = 0; r < rows; ++r, dst += pitch) {
      if (r < s.r0 || r >= s.r1) {
        zero_run(dst, pitch);
        continue;
      }
      if (s.q0 > 0) zero_run(dst, head);
      if (s.q1 < pitch) zero_run(dst + tail, pitch - tail);
    }
  }
}

// The span of a tile: tile[r * pitch + q] = plane[(row0 + r) * width + col0 + q]; the
// imaginary tile follows the real one (at + rows * pitch), unless plane_im is null (a real
// frequency: only the real tile is read).
template <typename T>
void copy_tile_span(const T* plane_re, const T* plane_im, int64_t width, int64_t row0, int64_t col0,
                    const TileSpan& s, int64_t rows, int64_t pitch, T* tile) {
  for (int part = 0; part < (plane_im ? 2 : 1); ++part) {
    const T* plane = (part == 0 ? plane_re : plane_im) + col0 + s.q0;
    T* dst = tile + part * rows * pitch + s.q0;
    for (int64_t r = s.r0; r < s.r1; ++r) copy_run(plane + (row0 + r) * width, s.q1 - s.q0, dst + r * pitch);
  }
}

// A whole tile: its span copied from the plane, 0 elsewhere.
template <typename T>
void fill_tile(const T* plane_re, const T* plane_im, int64_t height, int64_t width, int64_t row0,
               int64_t col0, int64_t rows, int64_t pitch, T* tile) {
  const TileSpan s = tile_span(height, width, row0, col0, rows, pitch);
  zero_tile_padding(s, rows, pitch, plane_im ? 2 : 1, tile);
  copy_tile_span(plane_re, plane_im, width, row0, col0, s, rows, pitch, tile);
}

// `lanes` pixels `step` apart; Unit: step is 1. (A compile-time Unit keeps the common case a
// plain load: with a run-time test in the loop the compiler joins both cases' lane vectors
// through memory.)
template <bool Unit, typename T>
inline typename LanesOf<T>::type load_lanes(const T* p, int64_t step) {
  using V = typename LanesOf<T>::type;
  if constexpr (Unit) return load<V>(p);
  T lanes[sizeof(V) / sizeof(T)];  // (see store_prefix)
  for (int64_t l = 0; l < int64_t(sizeof(V) / sizeof(T)); ++l) lanes[l] = p[l * step];
  return load<V>(lanes);
}

// A lane vector whose first half is read from p and second half from q (`lanes` / 2 pixels
// `step` apart each), and back: the first `valid` of the first half to p, the first
// `valid2` of the second to q. (Where a lane vector is several native vectors, whole
// halves are native loads and stores.)
template <bool Unit, typename T>
__attribute__((always_inline)) inline typename LanesOf<T>::type load_pair(const T* p, const T* q, int64_t step) {
  using V = typename LanesOf<T>::type;
  constexpr int64_t H = lanes_of<T>() / 2;
  if constexpr (Unit && V::kParts >= 2) {
    V v;
#pragma GCC unroll 4
    for (int i = 0; i < V::kParts; ++i) {
      const T* half = i < V::kParts / 2 ? p + i * V::kPer : q + (i - V::kParts / 2) * V::kPer;
      __builtin_memcpy(&v.part[i], half, sizeof(v.part[i]));
    }
    return v;
  }
  T lanes[2 * H];  // (see store_prefix)
  for (int64_t l = 0; l < H; ++l) {
    lanes[l] = p[l * step];
    lanes[H + l] = q[l * step];
  }
  return load<V>(lanes);
}
template <typename T, typename V>
__attribute__((always_inline)) inline void store_pair(T* p, T* q, const V& v, int64_t valid, int64_t valid2) {
  constexpr int64_t H = int64_t(sizeof(V) / sizeof(T)) / 2;
  if constexpr (V::kParts >= 2) {
    if (valid == H && (valid2 == H || valid2 == 0)) {
#pragma GCC unroll 4
      for (int i = 0; i < V::kParts / 2; ++i) __builtin_memcpy(p + i * V::kPer, &v.part[i], sizeof(v.part[i]));
      if (valid2 == 0) return;
#pragma GCC unroll 4
      for (int i = V::kParts / 2; i < V::kParts; ++i) {
        __builtin_memcpy(q + (i - V::kParts / 2) * V::kPer, &v.part[i], sizeof(v.part[i]));
      }
      return;
    }
  }
  T lanes[2 * H];
  store(lanes, v);
  for (int64_t l = 0; l < valid; ++l) p[l] = lanes[l];
  for (int64_t l = 0; l < valid2; ++l) q[l] = lanes[H + l];
}
// The first `valid` of each half from p and q, the other lanes zero (what store_pair wrote).
template <typename T>
__attribute__((always_inline)) inline typename LanesOf<T>::type load_pair_prefix(const T* p, const T* q,
                                                                                int64_t valid) {
  constexpr int64_t H = lanes_of<T>() / 2;
  if (valid == H) return load_pair<true>(p, q, 1);
  T lanes[2 * H] = {};
  for (int64_t l = 0; l < valid; ++l) {
    lanes[l] = p[l];
    lanes[H + l] = q[l];
  }
  return load<typename LanesOf<T>::type>(lanes);
}

// The tap-independent geometry of a block of `rows` rows of positions: chunk n of row ro
// reads the tile at ro * row_step + chunk * chunk_step (+ the tap's offset) and writes row
// ro, pixels [chunk * lanes, + width) of a plane with rows `width` long. Where a row's last
// chunk is at most half a lane vector (paired), the last chunks of two rows go to one
// position: without, half of every such position's sums and loads were padding, and its
// stores partial (at width 8, one chunk a row, the forward's sums took 40% of its time and
// those stores another 9%; at width 24 a quarter of the sums were padding).
struct Positions {
  int64_t chunks, row_step, chunk_step, width, rows;
};

// forward: out[f][k] (re, im planes of px pixels) = sum over taps of X * conj(taps[f][t][k]).
template <typename T>
struct ForwardBlock {
  const Window2d& w;
  Positions at;
  const T* tile;  // padded X at one frequency: re plane, im plane `tile_plane` later
  int64_t tile_plane, pitch;
  const T* taps;  // at filter 0, tap 0, this frequency
  int64_t tap_step, filter_step;
  T* out;  // at filter 0, this frequency
  int64_t out_step, px;
};

// The kernel's height and width: K x K when K > 0 (3 x 3, the common kernel, compiled with
// its taps unrolled: a loop over three taps cost as much as their sums at small C), else
// the window's.
template <int K>
inline int64_t kernel_h(const Window2d& w) {
  return K > 0 ? K : w.kernel_h;
}
template <int K>
inline int64_t kernel_w(const Window2d& w) {
  return K > 0 ? K : w.kernel_w;
}
inline bool is_3x3(const Window2d& w) { return w.kernel_h == 3 && w.kernel_w == 3; }

// Where position (ro, ch) of a block reads its tile and writes its plane, and how many of its
// lanes are pixels; paired, where the second half of its lanes reads and writes (row
// ro + 1: src2, dst2, valid2; valid2 = 0 past the block's last row, src2 = src then).
struct Position {
  int64_t src, dst, valid;
  int64_t src2, dst2, valid2;
};
template <bool Unit, bool Paired, typename T>
__attribute__((always_inline)) inline typename LanesOf<T>::type load_position(const T* tile, const Position& at,
                                                                             int64_t step) {
  if constexpr (Paired) return load_pair<Unit>(tile + at.src, tile + at.src2, step);
  return load_lanes<Unit>(tile + at.src, step);
}
template <bool Paired, typename T, typename V>
__attribute__((always_inline)) inline void store_position(T* plane, const Position& at, const V& v) {
  if constexpr (Paired) {
    store_pair(plane + at.dst, plane + at.dst2, v, at.valid, at.valid2);
  } else {
    store_prefix(plane + at.dst, v, at.valid);
  }
}
// fn(std::integral_constant<int, m>{}, std::bool_constant<paired>{}, positions) over a
// block's positions in order, row by row (no division per position): N at a time (m = N),
// then the rest one by one (m = 1). Paired: the rows' whole chunks first, then their last
// chunks two rows to a position (the last row's alone when rows is odd).
template <typename T, int N, bool Paired, typename Fn>
__attribute__((always_inline)) inline void for_positions(const Positions& at, Fn&& fn) {
  constexpr int64_t L = lanes_of<T>();
  const int64_t chunks = Paired ? at.chunks - 1 : at.chunks;  // unpaired chunks per row
  const auto walk = [&](auto pairs, int64_t positions) __attribute__((always_inline)) {
    constexpr bool P = decltype(pairs)::value;
    int64_t ro = 0, ch = 0;
    const auto next = [&]() __attribute__((always_inline)) {
      if constexpr (P) {
        const int64_t src = chunks * at.chunk_step, dst = chunks * L, valid = at.width - chunks * L;
        const bool second = ro + 1 < at.rows;
        const Position p{ro * at.row_step + src, ro * at.width + dst, valid,
                         (second ? ro + 1 : ro) * at.row_step + src, (ro + 1) * at.width + dst, second ? valid : 0};
        ro += 2;
        return p;
      }
      const Position p{ro * at.row_step + ch * at.chunk_step, ro * at.width + ch * L, std::min(L, at.width - ch * L),
                       0, 0, 0};
      if (++ch == chunks) {
        ch = 0;
        ++ro;
      }
      return p;
    };
    int64_t p = 0;
    for (; p + N <= positions; p += N) {
      Position some[N];
      for (int n = 0; n < N; ++n) some[n] = next();
      fn(std::integral_constant<int, N>{}, pairs, some);
    }
    for (; p < positions; ++p) {
      const Position one = next();
      fn(std::integral_constant<int, 1>{}, pairs, &one);
    }
  };
  walk(std::false_type{}, at.rows * chunks);
  if constexpr (Paired) walk(std::true_type{}, ceil_div(at.rows, 2));
}

// The sums of filters [f0, f0 + NF) at NC positions. (Inlined into the walk over the
// positions: a call per position cost as much as its sums at small channel counts.)
template <typename T, int NF, int NC, bool Unit, bool Real, int K, bool Paired>
__attribute__((always_inline)) inline void forward_chunks(const ForwardBlock<T>& b, int64_t f0, const Position* at) {
  using V = typename LanesOf<T>::type;
  const Window2d& w = b.w;
  const int64_t kh = kernel_h<K>(w), kw = kernel_w<K>(w);
  // Zeroed element by element: an aggregate `= {}` becomes a memset of the arrays, which
  // keeps them in memory instead of registers.
  V sum_re[NF][NC], sum_im[Real ? 1 : NF][Real ? 1 : NC];
#pragma GCC unroll 4
  for (int f = 0; f < NF; ++f) {
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) {
      sum_re[f][n] = V{};
      if constexpr (!Real) sum_im[f][n] = V{};
    }
  }
  const T* taps = b.taps + f0 * b.filter_step;
  for (int64_t i = 0; i < kh; ++i) {
    for (int64_t j = 0; j < kw; ++j) {
      const int64_t off = i * w.dil_h * b.pitch + j * w.dil_w;
      const T* t = taps + (i * kw + j) * b.tap_step;
      T tr[NF], ti[NF];
      for (int f = 0; f < NF; ++f) {
        tr[f] = t[f * b.filter_step];
        ti[f] = t[f * b.filter_step + 1];
      }
#pragma GCC unroll 4
      for (int n = 0; n < NC; ++n) {
        const V xr = load_position<Unit, Paired>(b.tile + off, at[n], w.stride_w);
        if constexpr (Real) {
#pragma GCC unroll 8
          for (int f = 0; f < NF; ++f) sum_re[f][n] += xr * tr[f];
        } else {
          const V xi = load_position<Unit, Paired>(b.tile + b.tile_plane + off, at[n], w.stride_w);
#pragma GCC unroll 4
          for (int f = 0; f < NF; ++f) {
            sum_re[f][n] += xr * tr[f] + xi * ti[f];
            sum_im[f][n] += xi * tr[f] - xr * ti[f];
          }
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int n = 0; n < NC; ++n) {
#pragma GCC unroll 4
    for (int f = 0; f < NF; ++f) {
      T* out = b.out + (f0 + f) * b.out_step;
      store_position<Paired>(out, at[n], sum_re[f][n]);
      if constexpr (!Real) store_position<Paired>(out + b.px, at[n], sum_im[f][n]);
    }
  }
}

// fn(std::integral_constant<int, m>{}, row) over the rows [0, rows) in strips of m = R rows,
// the last strip shorter (m < R) when R does not divide rows.
template <int R, typename Fn>
__attribute__((always_inline)) inline void for_strips(int64_t rows, Fn&& fn) {
  int64_t row = 0;
  for (; row + R <= rows; row += R) fn(std::integral_constant<int, R>{}, row);
  if constexpr (R > 1) {
    if (row < rows) for_strips<R - 1>(rows - row, [&](auto m, int64_t r) { fn(m, row + r); });
  }
}

// The sums of a strip of R output rows of one chunk column, each tile row the strip meets
// loaded once per kernel column and used for every kernel row that reaches it: at 3x3,
// 6 row loads for 4 output rows instead of 12 (a load per 2 FMAs bound the sums that
// shared no load between filters: the AVX-512 dX, and the forward of a lone filter).
//   forward (Backward false): out = sum over taps of X * conj(taps), one filter's taps;
//     tile row ro * 1 + i * dil_h, column + j * dil_w (row stride 1; any column stride);
//   dX (Backward true, stride 1): out += sum over the filters and taps of dY(f) * taps, a
//     gather from tiles of dY (one per filter, `tile_step` apart) whose rows and columns run
//     backwards over the taps; first: out starts at zero.
// src: the strip's tile offset; dst: its plane offset (rows `width` apart), of which `valid`
// lanes are pixels. Paired (a chunk column of at most half a lane vector: the last, see
// Positions): lane vector ro holds two output rows' chunks (rows 2 ro and 2 ro + 1 of the
// strip, `valid` pixels each), read from two tile rows. The lane sums stay in registers
// over the filters; each adds filter by filter, then kernel column by kernel column, then
// kernel row by kernel row. K = 3: a 3x3 kernel with row dilation 1 (compiled with every
// index known).
template <typename T, int R, bool Real, int K, bool Backward, bool Unit, bool Paired = false>
__attribute__((always_inline)) inline void strip_sums(const Window2d& w, const T* tiles, int64_t tile_step,
                                                      int64_t tile_plane, int64_t pitch, int64_t filters,
                                                      const T* taps, int64_t filter_step, int64_t tap_step,
                                                      bool first, int64_t src, T* out, int64_t dst, int64_t width,
                                                      int64_t valid, int64_t px) {
  using V = typename LanesOf<T>::type;
  const int64_t kh = kernel_h<K>(w), kw = kernel_w<K>(w), dil_h = K > 0 ? 1 : w.dil_h;
  constexpr int P = Paired ? 2 : 1;  // output rows per lane vector
  const int64_t tile_rows = P * (R - 1) + (kh - 1) * dil_h + 1;
  // Lane vector ro's output rows, from plane offset at: loaded, and stored.
  const auto load_sums = [&](int64_t at) __attribute__((always_inline)) {
    if constexpr (Paired) return load_pair_prefix(out + at, out + at + width, valid);
    return load_prefix(out + at, valid);
  };
  const auto store_sums = [&](int64_t at, const V& v) __attribute__((always_inline)) {
    if constexpr (Paired) {
      store_pair(out + at, out + at + width, v, valid, valid);
    } else {
      store_prefix(out + at, v, valid);
    }
  };
  // Tile row r (and r + 1 when Paired).
  const auto load_tile_row = [&](const T* row) __attribute__((always_inline)) {
    if constexpr (Paired) return load_pair<Unit>(row, row + pitch, w.stride_w);
    return load_lanes<Unit>(row, w.stride_w);
  };
  V sum_re[R], sum_im[R];
#pragma GCC unroll 8
  for (int ro = 0; ro < R; ++ro) {
    sum_re[ro] = first ? V{} : load_sums(dst + P * ro * width);
    sum_im[ro] = first || Real ? V{} : load_sums(px + dst + P * ro * width);
  }
  for (int64_t f = 0; f < filters; ++f) {
    const T* tile = tiles + f * tile_step + src;
    for (int64_t j = 0; j < kw; ++j) {
      const T* column = tile + (Backward ? kw - 1 - j : j) * w.dil_w;
      const T* t = taps + f * filter_step + j * tap_step;  // tap (i, j) at + i * kw * tap_step
#pragma GCC unroll 8
      for (int64_t r = 0; r < tile_rows; ++r) {
        const V a = load_tile_row(column + r * pitch);
        [[maybe_unused]] const V b = Real ? V{} : load_tile_row(column + tile_plane + r * pitch);
        // Output row P * ro meets tile row r through kernel row d / dil_h (d = r - P * ro),
        // counted from the bottom when Backward.
#pragma GCC unroll 8
        for (int ro = 0; ro < R; ++ro) {
          const int64_t d = r - P * ro;
          if (d < 0 || d % dil_h != 0 || d / dil_h >= kh) continue;
          const T* tap = t + (Backward ? kh - 1 - d / dil_h : d / dil_h) * kw * tap_step;
          const T tr = tap[0];
          if constexpr (Real) {
            sum_re[ro] += a * tr;
          } else if constexpr (Backward) {
            const T ti = tap[1];
            sum_re[ro] += a * tr - b * ti;
            sum_im[ro] += a * ti + b * tr;
          } else {
            const T ti = tap[1];
            sum_re[ro] += a * tr + b * ti;
            sum_im[ro] += b * tr - a * ti;
          }
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int ro = 0; ro < R; ++ro) {
    store_sums(dst + P * ro * width, sum_re[ro]);
    if constexpr (!Real) store_sums(px + dst + P * ro * width, sum_im[ro]);
  }
}

// strip(std::integral_constant<int, m>{}, first row, paired) over rows [0, rows) in strips of
// up to R lane vectors (strip_sums): paired, two rows to a lane vector (the last row alone
// when rows is odd).
template <int R, typename Strip>
__attribute__((always_inline)) inline void for_row_strips(int64_t rows, bool paired, Strip&& strip) {
  if (!paired) {
    for_strips<R>(rows, [&](auto m, int64_t row) { strip(m, row, std::false_type{}); });
    return;
  }
  for_strips<R>(rows / 2, [&](auto m, int64_t pair) { strip(m, 2 * pair, std::true_type{}); });
  if (rows % 2 != 0) strip(std::integral_constant<int, 1>{}, rows - 1, std::false_type{});
}

// Filters [f0, f0 + NF) over every position: NC positions at a time, then one by one.
template <typename T, int NF, int NC, bool Unit, bool Real, int K, bool Paired>
void forward_filters(const ForwardBlock<T>& b, int64_t f0) {
  for_positions<T, NC, Paired>(b.at, [&](auto m, auto pairs, const Position* at) {
    forward_chunks<T, NF, decltype(m)::value, Unit, Real, K, decltype(pairs)::value>(b, f0, at);
  });
}

// A lone filter (row stride 1): its sums in strips of rows (strip_sums; Paired: the last
// chunk column's in strips of row pairs).
template <typename T, bool Unit, bool Real, int K, bool Paired>
void forward_lone_filter(const ForwardBlock<T>& b, int64_t f) {
  constexpr int64_t L = lanes_of<T>();
  const Window2d& w = b.w;
  const int64_t rows = b.px / w.out_w;
  const auto strips = [&](auto k3) {
    constexpr int K3 = decltype(k3)::value ? 3 : 0;
    for (int64_t ch = 0; ch < b.at.chunks; ++ch) {
      const int64_t valid = std::min(L, w.out_w - ch * L);
      for_row_strips<kSums<T>>(rows, Paired && ch == b.at.chunks - 1, [&](auto r, int64_t ro, auto pairs) {
        strip_sums<T, decltype(r)::value, Real, K3, false, Unit, decltype(pairs)::value>(
            w, b.tile, 0, b.tile_plane, b.pitch, 1, b.taps + f * b.filter_step, 0, b.tap_step, true,
            ro * b.pitch + ch * b.at.chunk_step, b.out + f * b.out_step, ro * w.out_w + ch * L, w.out_w, valid, b.px);
      });
    }
  };
  with_flags(strips, K == 3 && w.dil_h == 1);
}

// Every filter: up to four at a time share each tap's loads; a lone filter takes S
// positions at a time (strips of rows, or of row pairs, where the row stride is 1: at
// width 8, C = 256, the forward measured 13-14% faster in strips of pairs than in paired
// positions). Real (frequency 0, and n/2 for an even n, where X and the taps are real): a
// quarter of the multiplies and no imaginary sums, so twice as many sums in flight.
template <typename T, bool Unit, bool Real, int K, bool Paired>
void forward_all_filters(const ForwardBlock<T>& b, int64_t filters) {
  constexpr int S = Real ? 2 * kSums<T> : kSums<T>;
  int64_t f = 0;
  if constexpr (S >= 4) {
    for (; f + 4 <= filters; f += 4) forward_filters<T, 4, S / 4, Unit, Real, K, Paired>(b, f);
  }
  if constexpr (S >= 2) {
    for (; f + 2 <= filters; f += 2) forward_filters<T, 2, S / 2, Unit, Real, K, Paired>(b, f);
  }
  for (; f < filters; ++f) {
    if (b.w.stride_h == 1) {
      forward_lone_filter<T, Unit, Real, K, Paired>(b, f);
    } else {
      forward_filters<T, 1, S, Unit, Real, K, Paired>(b, f);
    }
  }
}

// All filters' sums for the output rows [oh0, oh1): out [filters][freqs][2][px].
template <typename T>
void forward_rows(const Window2d& w, int64_t freqs, bool even, int64_t filters, const T* spectrum, const T* taps,
                  int64_t oh0, int64_t oh1, T* tile, T* out) {
  constexpr int64_t L = lanes_of<T>();
  const int64_t in_px = w.in_h * w.in_w, rows = oh1 - oh0, px = rows * w.out_w;
  const int64_t chunks = ceil_div(w.out_w, L);
  const bool paired = 2 * (w.out_w - (chunks - 1) * L) <= L && rows > 1;  // (see Positions)
  const int64_t tile_rows = (rows - 1) * w.stride_h + (w.kernel_h - 1) * w.dil_h + 1;
  const int64_t pitch = (chunks * L - 1) * w.stride_w + (w.kernel_w - 1) * w.dil_w + 1;
  const Positions at{chunks, w.stride_h * pitch, L * w.stride_w, w.out_w, rows};
  const int64_t row0 = oh0 * w.stride_h - w.pad_h;
  const TileSpan span = tile_span(w.in_h, w.in_w, row0, -w.pad_w, tile_rows, pitch);
  zero_tile_padding(span, tile_rows, pitch, 2, tile);
  for (int64_t k = 0; k < freqs; ++k) {
    const bool real = real_frequency(k, freqs, even);
    copy_tile_span(spectrum + 2 * k * in_px, real ? nullptr : spectrum + (2 * k + 1) * in_px, w.in_w, row0, -w.pad_w,
                   span, tile_rows, pitch, tile);
    const ForwardBlock<T> b{w, at, tile, tile_rows * pitch, pitch, taps + 2 * k, 2 * freqs,
                            2 * w.kernel_h * w.kernel_w * freqs, out + 2 * k * px, 2 * freqs * px, px};
    const auto all_filters = [&](auto unit, auto is_real, auto k3, auto pairs) {
      constexpr int K = decltype(k3)::value ? 3 : 0;
      forward_all_filters<T, decltype(unit)::value, decltype(is_real)::value, K, decltype(pairs)::value>(b, filters);
    };
    with_flags(all_filters, w.stride_w == 1, real, is_3x3(w), paired);
  }
}

// Any stride: scatter each dY pixel onto the input pixels its taps meet. A row's sums are
// kept phase by phase while they add up (input column x at phase_at[x % s] + x / s, s the
// column stride), so that each tap's run of dY pixels lands on consecutive sums, as at
// stride 1 (a loop GCC vectorizes); then each row is put back in column order. Where each
// kernel row and column lands is worked out once per block (the divisions of window_hit and
// valid_outputs per run took most of the time at stride 2). Each sum adds the same terms in
// the same order either way.
template <typename T>
void input_grad_rows_strided(const Window2d& w, int64_t freqs, int64_t filters, const T* grad,
                             const T* taps, int64_t h0, int64_t h1, T* out) {
  const int64_t out_px = w.out_h * w.out_w, rows = h1 - h0, px = rows * w.in_w;
  const int64_t kk = w.kernel_h * w.kernel_w, s = w.stride_w;
  std::vector<int64_t> phase_at(s + 1, 0);
  for (int64_t b = 0; b < s; ++b) phase_at[b + 1] = phase_at[b] + (b < w.in_w ? ceil_div(w.in_w - b, s) : 0);
  struct RowHit {  // input row h0 + row meets dY row oh through kernel row i
    int64_t row, i, oh;
  };
  struct ColumnRun {  // kernel column j: dY columns [lo, lo + len) onto the sums from `at` on
    int64_t j, lo, len, at;
  };
  std::vector<RowHit> row_hits;
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t i = 0; i < w.kernel_h; ++i) {
      int64_t oh;
      if (window_hit(h, i, w.stride_h, w.pad_h, w.dil_h, w.out_h, &oh)) row_hits.push_back({h - h0, i, oh});
    }
  }
  std::vector<ColumnRun> runs;
  for (int64_t j = 0; j < w.kernel_w; ++j) {
    int64_t lo, hi;
    valid_outputs(w.in_w, j, s, w.pad_w, w.dil_w, w.out_w, &lo, &hi);
    const int64_t x = input_coord(lo, j, s, w.pad_w, w.dil_w);
    if (lo < hi) runs.push_back({j, lo, hi - lo, phase_at[x % s] + x / s});
  }
  std::fill(out, out + 2 * freqs * px, T(0));
  for (int64_t f = 0; f < filters; ++f) {
    for (int64_t k = 0; k < freqs; ++k) {
      T* gr_out = out + 2 * k * px;
      T* gi_out = gr_out + px;
      const T* dr = grad + (f * freqs + k) * 2 * out_px;
      const T* di = dr + out_px;
      const T* t_fk = taps + 2 * (f * kk * freqs + k);
      for (const RowHit& hit : row_hits) {
        for (const ColumnRun& run : runs) {
          const T* t = t_fk + 2 * (hit.i * w.kernel_w + run.j) * freqs;
          const T tr = t[0], ti = t[1];
          T* __restrict yr = gr_out + hit.row * w.in_w + run.at;
          T* __restrict yi = gi_out + hit.row * w.in_w + run.at;
          const T* __restrict ar = dr + hit.oh * w.out_w + run.lo;
          const T* __restrict ai = di + hit.oh * w.out_w + run.lo;
          for (int64_t o = 0; o < run.len; ++o) {
            yr[o] += ar[o] * tr - ai[o] * ti;
            yi[o] += ar[o] * ti + ai[o] * tr;
          }
        }
      }
    }
  }
  if (s == 1) return;
  std::vector<T> row(w.in_w);
  for (int64_t r = 0; r < 2 * freqs * rows; ++r) {
    T* sums = out + r * w.in_w;
    for (int64_t b = 0; b < std::min(s, w.in_w); ++b) {
      for (int64_t m = 0; b + m * s < w.in_w; ++m) row[b + m * s] = sums[phase_at[b] + m];
    }
    std::copy(row.begin(), row.end(), sums);
  }
}

// Sums over filters and taps for the input rows [h0, h1): out [freqs][2][px]. The filters
// go in groups whose tiles fit the scratch; each sum adds the filters in order, so the
// grouping does not change the result.
template <typename T>
void input_grad_rows(const Window2d& w, int64_t freqs, bool even, int64_t filters, const T* grad, const T* taps,
                     int64_t h0, int64_t h1, T* tile, T* out) {
  if (w.stride_h != 1 || w.stride_w != 1) {
    input_grad_rows_strided(w, freqs, filters, grad, taps, h0, h1, out);
    return;
  }
  constexpr int64_t L = lanes_of<T>();
  const int64_t out_px = w.out_h * w.out_w, rows = h1 - h0, px = rows * w.in_w;
  const int64_t chunks = ceil_div(w.in_w, L);
  const int64_t tile_rows = rows + (w.kernel_h - 1) * w.dil_h;
  const int64_t pitch = chunks * L + (w.kernel_w - 1) * w.dil_w;
  const int64_t kk = w.kernel_h * w.kernel_w, plane = tile_rows * pitch;
  const int64_t group = std::clamp<int64_t>(tile_size<T>(w, rows) / (2 * plane), 1, filters);
  const int64_t row0 = h0 + w.pad_h - (w.kernel_h - 1) * w.dil_h, col0 = w.pad_w - (w.kernel_w - 1) * w.dil_w;
  const TileSpan span = tile_span(w.out_h, w.out_w, row0, col0, tile_rows, pitch);
  zero_tile_padding(span, tile_rows, pitch, 2 * group, tile);
  for (int64_t k = 0; k < freqs; ++k) {
    T* g = out + 2 * k * px;
    const bool real = real_frequency(k, freqs, even);  // (see forward_all_filters)
    for (int64_t f0 = 0; f0 < filters; f0 += group) {
      const int64_t count = std::min(group, filters - f0);
      for (int64_t f = 0; f < count; ++f) {
        const T* dy = grad + ((f0 + f) * freqs + k) * 2 * out_px;
        copy_tile_span(dy, real ? nullptr : dy + out_px, w.out_w, row0, col0, span, tile_rows, pitch,
                       tile + f * 2 * plane);
      }
      const T* t = taps + 2 * (f0 * kk * freqs + k);
      const int64_t filter_step = 2 * kk * freqs;
      const auto all_strips = [&](auto is_real, auto k3) {
        constexpr bool Real = decltype(is_real)::value;
        constexpr int K = decltype(k3)::value ? 3 : 0;
        for (int64_t ch = 0; ch < chunks; ++ch) {
          const int64_t valid = std::min(L, w.in_w - ch * L);
          const bool paired = 2 * valid <= L;  // the last chunk column (see Positions)
          const auto strip = [&](auto r, int64_t ro, auto pairs) {
            strip_sums<T, decltype(r)::value, Real, K, true, true, decltype(pairs)::value>(
                w, tile, 2 * plane, plane, pitch, count, t, filter_step, 2 * freqs, f0 == 0, ro * pitch + ch * L, g,
                ro * w.in_w + ch * L, w.in_w, valid, px);
          };
          if (count == 1) {
            for_row_strips<kLoneFilterStripRows<T>>(rows, paired, strip);
          } else {
            for_row_strips<kSums<T>>(rows, paired, strip);
          }
        }
      };
      with_flags(all_strips, real, is_3x3(w) && w.dil_h == 1);
    }
  }
}

// dK at frequency k for one sample and a group of filters: acc[t] += sum over pixels of
// X * conj(dY), from a tile of X (as the forward's, whole plane; filled once for the
// group) and dY's planes, read in place when their rows are whole chunks (else from a tile
// whose rows are padded with zeros).
struct WeightGradTiles {
  int64_t x_pitch, x_plane, g_pitch, g_plane, chunks;
};

// acc[0] += the lanes of re added up in order (and acc[1] of im unless Real).
template <typename T, bool Real, typename V>
inline void add_lane_totals(const V& re, const V& im, T* acc) {
  T total_re = 0, total_im = 0;
  for (int64_t l = 0; l < int64_t(sizeof(V) / sizeof(T)); ++l) {
    total_re += re[l];
    total_im += im[l];
  }
  acc[0] += total_re;
  if constexpr (!Real) acc[1] += total_im;
}

// The sums of G taps (t0, t0 + 1, ...) over every position: each chunk of dY is loaded
// once for the G taps, whose lane sums stay in registers (G = kSums: as many as the
// registers hold). Each lane sums its pixels in row order; the lanes are added up in order.
template <typename T, int G, bool Unit, bool Real>
void weight_grad_taps(const Window2d& w, const WeightGradTiles& at, const T* x_tile, const T* g_tile,
                      int64_t t0, int64_t freqs, T* acc) {
  using V = typename LanesOf<T>::type;
  constexpr int64_t L = lanes_of<T>();
  V sum_re[G], sum_im[G];  // (zeroed one by one: see forward_chunks)
  int64_t off[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    sum_re[g] = sum_im[g] = V{};
    const int64_t i = (t0 + g) / w.kernel_w, j = (t0 + g) % w.kernel_w;
    off[g] = i * w.dil_h * at.x_pitch + j * w.dil_w;
  }
  for (int64_t ro = 0; ro < w.out_h; ++ro) {
    const T* x_row = x_tile + ro * w.stride_h * at.x_pitch;
    const T* g_row = g_tile + ro * at.g_pitch;
    for (int64_t ch = 0; ch < at.chunks; ++ch) {
      const T* x = x_row + ch * L * w.stride_w;
      const V c = load<V>(g_row + ch * L);
      if constexpr (Real) {
#pragma GCC unroll 8
        for (int g = 0; g < G; ++g) sum_re[g] += load_lanes<Unit>(x + off[g], w.stride_w) * c;
      } else {
        const V d = load<V>(g_row + at.g_plane + ch * L);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
          const V a = load_lanes<Unit>(x + off[g], w.stride_w), b = load_lanes<Unit>(x + at.x_plane + off[g], w.stride_w);
          sum_re[g] += a * c + b * d;
          sum_im[g] += b * c - a * d;
        }
      }
    }
  }
  for (int g = 0; g < G; ++g) add_lane_totals<T, Real>(sum_re[g], sum_im[g], acc + 2 * (t0 + g) * freqs);
}

// 3x3 taps, stride 1 and row dilation 1, on native vectors: each column of W = kPer pixels
// walked down X's tile rows, row r meeting dY's rows r, r - 1 and r - 2 through kernel rows
// 0, 1 and 2, so that each X row is loaded once per kernel column instead of once per tap
// (the tap groups' sums were bound by the loads: 5 per 8 FMAs). The three dY rows in reach
// stay in registers, row r in slot r % 3 (zero outside the plane). A walk covers J kernel
// columns, as many as the registers hold: all three with 32 registers (AVX-512: 18 sums, 6
// dY rows, 2 X vectors), or at a real frequency (9 + 3 + 1); else one column per walk
// (6 + 6 + 2 of 16 registers). Each lane sums its pixels column by column, row by row; the
// lanes are added up in order.
template <typename T, bool Real>
void weight_grad_3x3_rows(const Window2d& w, const WeightGradTiles& at, const T* x_tile, const T* g_tile,
                          int64_t freqs, T* acc) {
  using V = typename Lanes<T>::Native;
  constexpr int64_t W = Lanes<T>::kPer;
  constexpr int J = ROLLCONV_NATIVE_VECTOR_BYTES == 64 || Real ? 3 : 1;
  const auto load_native = [](const T* p) __attribute__((always_inline)) {
    V v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  };
  // The native columns that hold pixels: past them dY's tile is all padding (zeros).
  const int64_t x_rows = w.out_h + 2, columns = ceil_div(w.out_w, W);
  for (int j0 = 0; j0 < 3; j0 += J) {
    V sum_re[3][J], sum_im[3][J];  // [kernel row][kernel column - j0] (zeroed one by one: see forward_chunks)
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 3
      for (int j = 0; j < J; ++j) sum_re[i][j] = sum_im[i][j] = V{};
    }
    for (int64_t col = 0; col < columns; ++col) {
      const T* x_column = x_tile + col * W + j0 * w.dil_w;
      const T* g_column = g_tile + col * W;
      V g_re[3] = {V{}, V{}, V{}}, g_im[3] = {V{}, V{}, V{}};
      const auto row = [&](auto slot, int64_t r) __attribute__((always_inline)) {
        constexpr int S = decltype(slot)::value;  // r % 3
        g_re[S] = r < w.out_h ? load_native(g_column + r * at.g_pitch) : V{};
        if constexpr (!Real) g_im[S] = r < w.out_h ? load_native(g_column + at.g_plane + r * at.g_pitch) : V{};
#pragma GCC unroll 3
        for (int j = 0; j < J; ++j) {
          const T* x = x_column + r * at.x_pitch + j * w.dil_w;
          const V a = load_native(x);
          [[maybe_unused]] const V b = Real ? V{} : load_native(x + at.x_plane);
#pragma GCC unroll 3
          for (int i = 0; i < 3; ++i) {
            constexpr int kSlot[3][3] = {{0, 2, 1}, {1, 0, 2}, {2, 1, 0}};  // [r % 3][i]: slot of row r - i
            const V& c = g_re[kSlot[S][i]];
            if constexpr (Real) {
              sum_re[i][j] += a * c;
            } else {
              const V& d = g_im[kSlot[S][i]];
              sum_re[i][j] += a * c + b * d;
              sum_im[i][j] += b * c - a * d;
            }
          }
        }
      };
      int64_t r = 0;
      for (; r + 3 <= x_rows; r += 3) {
        row(std::integral_constant<int, 0>{}, r);
        row(std::integral_constant<int, 1>{}, r + 1);
        row(std::integral_constant<int, 2>{}, r + 2);
      }
      if (r < x_rows) row(std::integral_constant<int, 0>{}, r);
      if (r + 1 < x_rows) row(std::integral_constant<int, 1>{}, r + 1);
    }
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) {
#pragma GCC unroll 3
      for (int j = 0; j < J; ++j) {
        add_lane_totals<T, Real>(sum_re[i][j], sum_im[i][j], acc + 2 * (i * 3 + j0 + j) * freqs);
      }
    }
  }
}

// Real: (see forward_all_filters) twice as many taps at a time.
template <typename T, bool Unit, bool Real>
void weight_grad_all_taps(const Window2d& w, const WeightGradTiles& at, const T* x_tile, const T* g_tile,
                          int64_t freqs, T* acc) {
  constexpr int G = Real ? 2 * kSums<T> : kSums<T>;
  const int64_t taps = w.kernel_h * w.kernel_w;
  int64_t t = 0;
  for (; t + G <= taps; t += G) weight_grad_taps<T, G, Unit, Real>(w, at, x_tile, g_tile, t, freqs, acc);
  if constexpr (G > 2) {
    for (; t + 2 <= taps; t += 2) weight_grad_taps<T, 2, Unit, Real>(w, at, x_tile, g_tile, t, freqs, acc);
  }
  for (; t < taps; ++t) weight_grad_taps<T, 1, Unit, Real>(w, at, x_tile, g_tile, t, freqs, acc);
}

template <typename T>
void weight_grad_freq(const Window2d& w, int64_t freqs, bool even, int64_t k, int64_t filters, const T* spectrum,
                      const T* grad, int64_t grad_step, T* tile, T* acc, int64_t acc_step) {
  constexpr int64_t L = lanes_of<T>();
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const int64_t chunks = ceil_div(w.out_w, L);
  const int64_t x_rows = (w.out_h - 1) * w.stride_h + (w.kernel_h - 1) * w.dil_h + 1;
  const int64_t x_pitch = (chunks * L - 1) * w.stride_w + (w.kernel_w - 1) * w.dil_w + 1;
  const WeightGradTiles at{x_pitch, x_rows * x_pitch, chunks * L, w.out_h * chunks * L, chunks};
  T* x_tile = tile;
  T* g_tile = tile + 2 * at.x_plane;
  const bool real = real_frequency(k, freqs, even);  // (see forward_all_filters)
  fill_tile(spectrum + 2 * k * in_px, real ? nullptr : spectrum + (2 * k + 1) * in_px, w.in_h, w.in_w, -w.pad_h,
            -w.pad_w, x_rows, x_pitch, x_tile);
  for (int64_t f = 0; f < filters; ++f) {
    const T* g = grad + f * grad_step + 2 * k * out_px;
    if (w.out_w % L != 0) {
      fill_tile(g, real ? nullptr : g + out_px, w.out_h, w.out_w, 0, 0, w.out_h, at.g_pitch, g_tile);
      g = g_tile;
    }
    T* a = acc + f * acc_step;
    if (is_3x3(w) && w.stride_h == 1 && w.stride_w == 1 && w.dil_h == 1) {
      real ? weight_grad_3x3_rows<T, true>(w, at, x_tile, g, freqs, a)
           : weight_grad_3x3_rows<T, false>(w, at, x_tile, g, freqs, a);
      continue;
    }
    if (w.stride_w == 1) {
      real ? weight_grad_all_taps<T, true, true>(w, at, x_tile, g, freqs, a)
           : weight_grad_all_taps<T, true, false>(w, at, x_tile, g, freqs, a);
    } else {
      real ? weight_grad_all_taps<T, false, true>(w, at, x_tile, g, freqs, a)
           : weight_grad_all_taps<T, false, false>(w, at, x_tile, g, freqs, a);
    }
  }
}

template <typename T>
constexpr MicroKernels<T> make_micro_kernels() {
  return MicroKernels<T>{&analyze<T>,          &synthesize<T>,      &forward_rows<T>,
                         &input_grad_rows<T>,  &weight_grad_freq<T>, &analyze_masked<T>,
                         ROLLCONV_NATIVE_VECTOR_BYTES == 64 ? 8 : 4};
}

}  // namespace

extern const MicroKernels<float> micro_kernels_f32;  // declared in channel_fft.cpp too: external linkage
extern const MicroKernels<double> micro_kernels_f64;
const MicroKernels<float> micro_kernels_f32 = make_micro_kernels<float>();
const MicroKernels<double> micro_kernels_f64 = make_micro_kernels<double>();

}  // namespace ROLLCONV_ISA
}  // namespace rollconv::channel_fft
