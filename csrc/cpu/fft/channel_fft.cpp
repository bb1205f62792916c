// The ISA-independent part of the channel FFT: plans (factorization and twiddles) and the
// choice of the per-ISA kernel table.
#include "cpu/fft/channel_fft.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu/isa.h"

namespace rollconv::channel_fft {

// The per-ISA tables (micro_kernels_<isa>.cpp).
namespace portable {
extern const MicroKernels<float> micro_kernels_f32;
extern const MicroKernels<double> micro_kernels_f64;
}  // namespace portable
namespace avx2 {
extern const MicroKernels<float> micro_kernels_f32;
extern const MicroKernels<double> micro_kernels_f64;
}  // namespace avx2
namespace avx512 {
extern const MicroKernels<float> micro_kernels_f32;
extern const MicroKernels<double> micro_kernels_f64;
}  // namespace avx512

namespace {

// n as a product of radices: its power of two in as few stages (passes over the data) as
// radices up to `widest` (8 or 4) give, the widest first (4 x 4 rather than 8 x 2 for 16:
// the same passes, cheaper butterflies), then 3, 5, then other primes (each a plain DFT
// stage).
std::vector<int64_t> radices_of(int64_t n, int64_t widest) {
  std::vector<int64_t> radices;
  int64_t rest = n, twos = 0;
  while (rest % 2 == 0) {
    rest /= 2;
    ++twos;
  }
  int64_t eights = 0, fours = twos / 2, pairs = twos % 2;
  if (widest >= 8) {
    eights = twos / 3;
    fours = twos % 3 == 2 ? 1 : 0;
    pairs = twos % 3 == 1 ? 1 : 0;
    if (pairs == 1 && eights > 0) {  // 8 x 2 -> 4 x 4
      --eights;
      fours = 2;
      pairs = 0;
    }
  }
  radices.insert(radices.end(), size_t(eights), 8);
  radices.insert(radices.end(), size_t(fours), 4);
  radices.insert(radices.end(), size_t(pairs), 2);
  for (int64_t p : {3, 5}) {
    while (rest % p == 0) {
      radices.push_back(p);
      rest /= p;
    }
  }
  for (int64_t p = 7; p * p <= rest; p += 2) {
    while (rest % p == 0) {
      radices.push_back(p);
      rest /= p;
    }
  }
  if (rest > 1) radices.push_back(rest);
  return radices;
}

constexpr double kTwoPi = 6.283185307179586476925286766559;

}  // namespace

template <typename T>
Plan<T>::Plan(int64_t n_, int64_t widest_radix) : n(n_) {
  int64_t span = 1;
  auto push_unit = [&](double turns) {  // exp(-2 pi i turns)
    table.push_back(static_cast<T>(std::cos(kTwoPi * turns)));
    table.push_back(static_cast<T>(-std::sin(kTwoPi * turns)));
  };
  for (int64_t radix : radices_of(n, widest_radix)) {
    Stage s{radix, span, int64_t(table.size()), 0};
    for (int64_t jm = 0; jm < span; ++jm) {
      for (int64_t r = 0; r < radix; ++r) push_unit(double(r * jm) / double(span * radix));
    }
    if (!has_butterfly(radix)) {
      s.roots = int64_t(table.size());
      for (int64_t q = 0; q < radix; ++q) push_unit(double(q) / double(radix));
    }
    stages.push_back(s);
    max_radix = std::max(max_radix, radix);
    span *= radix;
  }
}

template struct Plan<float>;
template struct Plan<double>;

template <typename T>
const MicroKernels<T>& micro_kernels() {
  if constexpr (std::is_same_v<T, float>) {
    return cpu::pick(cpu::active_isa(), portable::micro_kernels_f32, avx2::micro_kernels_f32,
                     avx512::micro_kernels_f32);
  } else {
    return cpu::pick(cpu::active_isa(), portable::micro_kernels_f64, avx2::micro_kernels_f64,
                     avx512::micro_kernels_f64);
  }
}
template const MicroKernels<float>& micro_kernels<float>();
template const MicroKernels<double>& micro_kernels<double>();

}  // namespace rollconv::channel_fft
