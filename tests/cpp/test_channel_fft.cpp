// C++ tests of the channel FFT (run by ctest), each ISA the CPU supports forced in turn:
// analyze (the real transform of rows of pixels, with and without a ReLU mask) and
// synthesize (its inverse, with bias and ReLU) against a naive DFT in double, for every
// length 1..40 and larger composite and prime lengths (each radix and the plain-DFT
// stages), with pixel counts that end inside a lane group.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/fft/channel_fft.h"
#include "cpu/isa.h"
#include "expect.h"

using namespace rollconv::channel_fft;
using rollconv::cpu::Isa;
using rollconv_test::expect;
using rollconv_test::failures;

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

template <typename T>
double tolerance(int64_t n) {
  return (sizeof(T) == 4 ? 3e-6 : 1e-13) * double(n + 4);
}

template <typename T>
std::vector<T> aligned_scratch(int64_t size) {
  return std::vector<T>(size + 64);  // analyze/synthesize need 64-byte aligned scratch
}
template <typename T>
T* align64(std::vector<T>& v) {
  auto p = reinterpret_cast<std::uintptr_t>(v.data());
  return reinterpret_cast<T*>((p + 63) / 64 * 64);
}

template <typename T>
void test_length(std::mt19937& rng, int64_t n, int64_t count) {
  std::uniform_real_distribution<double> dist(-1, 1);
  const MicroKernels<T>& micro = micro_kernels<T>();
  const Plan<T> plan(n, micro.widest_radix);
  const int64_t freqs = plan.freqs(), step = count + 3, plane = count + 5;
  auto scratch_store = aligned_scratch<T>(plan.scratch_size());
  T* scratch = align64(scratch_store);
  const std::string what = "n=" + std::to_string(n) + " count=" + std::to_string(count) +
                           (sizeof(T) == 4 ? " f32" : " f64");

  // analyze: spectrum[2k][p] + i spectrum[2k+1][p] = sum_c src[c][p] exp(-2 pi i k c / n);
  // analyze_masked: of src zeroed where mask <= 0 (a NaN in the mask keeps src).
  std::vector<T> src(n * step), mask(n * step);
  for (T& v : src) v = T(dist(rng));
  const T special[] = {T(-1), T(0), -T(0), T(NAN), T(1)};
  for (T& m : mask) m = special[rng() % 5];
  std::vector<T> spectrum(2 * freqs * plane, T(7));
  for (bool masked : {false, true}) {
    std::fill(spectrum.begin(), spectrum.end(), T(7));
    if (masked) {
      micro.analyze_masked(plan, src.data(), mask.data(), step, count, spectrum.data(), plane, scratch);
    } else {
      micro.analyze(plan, src.data(), step, count, spectrum.data(), plane, scratch);
    }
    double worst = 0;
    for (int64_t k = 0; k < freqs; ++k) {
      for (int64_t p = 0; p < count; ++p) {
        double re = 0, im = 0;
        for (int64_t c = 0; c < n; ++c) {
          const double angle = kTwoPi * double((k * c) % n) / double(n);
          const double x = masked && mask[c * step + p] <= T(0) ? 0.0 : double(src[c * step + p]);
          re += x * std::cos(angle);
          im -= x * std::sin(angle);
        }
        worst = std::max({worst, std::abs(re - spectrum[2 * k * plane + p]),
                          std::abs(im - spectrum[(2 * k + 1) * plane + p])});
      }
      for (int64_t p = count; p < plane; ++p) {  // past count: untouched
        worst = std::max(worst, std::abs(double(spectrum[2 * k * plane + p]) - 7.0));
      }
    }
    expect(worst <= tolerance<T>(n), std::string(masked ? "analyze_masked " : "analyze ") + what + ": error " +
                                         std::to_string(worst));
  }
  double worst = 0;

  // synthesize: dst[r][p] = relu(bias + sum over the full circle of S[k] exp(+2 pi i k r / n)),
  // S Hermitian from the half spectrum, imaginary parts at 0 and n/2 dropped (as irfft).
  for (T& v : spectrum) v = T(dist(rng));
  const T bias = T(0.25);
  // stream: rows of whole cache lines (line-aligned dst and step), written by streaming stores
  // except the last, partial lane vector.
  for (auto [relu, stream] : {std::pair{false, false}, std::pair{true, false}, std::pair{true, true}}) {
    constexpr int64_t kLine = 64 / int64_t(sizeof(T));
    const int64_t dst_step = stream ? (count + 3 + kLine - 1) / kLine * kLine : count + 3;
    std::vector<T> dst_store(n * dst_step + kLine, T(7));
    T* dst = align64(dst_store);
    micro.synthesize(plan, spectrum.data(), plane, count, dst, dst_step, bias, relu, stream, scratch);
    worst = 0;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t p = 0; p < count; ++p) {
        double sum = 0;
        for (int64_t k = 0; k < freqs; ++k) {
          const double re = spectrum[2 * k * plane + p], im = spectrum[(2 * k + 1) * plane + p];
          const double angle = kTwoPi * double((k * r) % n) / double(n);
          const bool self_conjugate = k == 0 || 2 * k == n;
          sum += (self_conjugate ? 1.0 : 2.0) * (re * std::cos(angle) - (self_conjugate ? 0.0 : im * std::sin(angle)));
        }
        double expected = sum + double(bias);
        if (relu) expected = std::max(expected, 0.0);
        worst = std::max(worst, std::abs(expected - dst[r * dst_step + p]));
      }
      for (int64_t p = count; p < dst_step; ++p) worst = std::max(worst, std::abs(double(dst[r * dst_step + p]) - 7.0));
    }
    expect(worst <= tolerance<T>(n), "synthesize " + what + (relu ? " relu" : "") + (stream ? " stream" : "") +
                                         ": error " + std::to_string(worst));
  }
}

template <typename T>
void test_lengths(std::mt19937& rng) {
  constexpr int64_t G = group_pixels<T>();
  std::vector<int64_t> lengths;
  for (int64_t n = 1; n <= 40; ++n) lengths.push_back(n);
  for (int64_t n : {48, 49, 60, 64, 96, 100, 121, 128, 210, 256, 257}) lengths.push_back(n);
  int64_t i = 0;
  for (int64_t n : lengths) {
    const int64_t counts[] = {1, G - 1, G, G + 5, 3 * G};
    test_length<T>(rng, n, counts[i++ % 5]);
  }
  test_length<T>(rng, 12, 2 * G + 3);
  for (int64_t count : {int64_t(1), G / 2 - 1, G / 2, G / 2 + 3, 2 * G, 5 * G + 7}) {
    test_length<T>(rng, 4, count);  // n = 4 has its own written-out path, lane vector by lane vector
  }
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  int tested = 0;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!rollconv::cpu::cpu_supports(isa)) {
      std::printf("skip %s: not supported by this CPU\n", rollconv::cpu::isa_name(isa));
      continue;
    }
    rollconv::cpu::force_isa(isa);
    test_lengths<float>(rng);
    test_lengths<double>(rng);
    ++tested;
  }
  std::printf("%d ISAs tested, %d failures\n", tested, failures);
  return failures == 0 ? 0 : 1;
}
