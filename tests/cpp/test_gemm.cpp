// C++ tests of the GEMM engine (run by ctest), each ISA the CPU supports forced in turn:
//  - gemm() against a naive triple loop over odd sizes, both transposes, alpha and beta
//    (beta = 0 must ignore NaN already in C);
//  - multiply_packed's epilogue (bias per row, ReLU) and a product split into K segments;
//  - B read in place as windows of a buffer (multiply_windows);
//  - the dot-product micro-kernel (multiply_dot) against a naive loop;
//  - the measured peak is positive (the benchmark divides by it).
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

#include "expect.h"
#include <vector>

#include "cpu/gemm/gemm.h"

using namespace rollconv::gemm;
using namespace rollconv::cpu;

namespace {

using rollconv_test::expect;
using rollconv_test::failures;

template <typename T>
std::vector<T> random_vector(std::mt19937& rng, int64_t size) {
  std::uniform_real_distribution<double> dist(-1, 1);
  std::vector<T> v(size);
  for (T& x : v) x = T(dist(rng));
  return v;
}

template <typename T>
double tolerance(int64_t k) {
  return (sizeof(T) == 4 ? 2e-6 : 1e-14) * (k + 4);
}

template <typename T>
void test_gemm_against_naive(std::mt19937& rng) {
  const int64_t sizes[] = {1, 2, 7, 17, 33, 64, 255};
  for (int64_t m : sizes) {
    for (int64_t n : sizes) {
      for (int64_t k : {int64_t(1), int64_t(7), int64_t(130), int64_t(255)}) {
        if (m * n * k > 4'000'000) continue;
        const bool ta = (m + n) % 2, tb = (n + k) % 3 == 0;
        const T alpha = T((m % 3) + 0.5), beta = (k % 2) ? T(0) : T(-0.75);
        const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
        const auto a = random_vector<T>(rng, (ta ? k : m) * lda);
        const auto b = random_vector<T>(rng, (tb ? n : k) * ldb);
        auto c = random_vector<T>(rng, m * ldc);
        std::vector<T> expected = c;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double sum = 0;
            for (int64_t p = 0; p < k; ++p) {
              sum += double(ta ? a[p * lda + i] : a[i * lda + p]) * double(tb ? b[j * ldb + p] : b[p * ldb + j]);
            }
            expected[i * ldc + j] = T(alpha * sum + (beta != T(0) ? beta * double(c[i * ldc + j]) : 0));
          }
        }
        if (beta == T(0)) {  // BLAS semantics: C is not read
          for (int64_t i = 0; i < m; ++i) c[i * ldc] = std::numeric_limits<T>::quiet_NaN();
        }
        gemm<T>(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
        double err = 0;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < ldc; ++j) {
            const double d = std::abs(double(c[i * ldc + j]) - double(expected[i * ldc + j]));
            err = std::isnan(d) ? INFINITY : std::max(err, d);
          }
        char what[160];
        std::snprintf(what, sizeof what, "%s gemm<%s> m=%lld n=%lld k=%lld ta=%d tb=%d: err %g",
                      isa_name(active_isa()), sizeof(T) == 4 ? "float" : "double", (long long)m,
                      (long long)n, (long long)k, ta, tb, err);
        expect(err <= tolerance<T>(k), what);
      }
    }
  }
}

// The conv engine's uses of multiply_packed: bias + ReLU on the last pass, a product as
// two K segments (the rolling convolution's wrap-around), an empty product.
template <typename T>
void test_segments_and_epilogue(std::mt19937& rng) {
  const MicroKernel<T>& uk = micro_kernel<T>(active_isa());
  const int64_t m = 19, n = 53, k = 300, split = 170;
  const auto a = random_vector<T>(rng, m * k);
  const auto b = random_vector<T>(rng, k * n);
  const auto bias = random_vector<T>(rng, m);
  std::vector<T> a_packed(round_up(m, uk.mr) * k), b_packed(round_up(n, uk.nr) * k);
  pack_a(uk, a.data(), k, 1, m, k, a_packed.data());
  pack_b(uk, b.data(), n, 1, k, n, b_packed.data());
  // A's columns [0, k - split) meet B's rows [split, k), A's rest meets B's [0, split).
  const KSegment segments[2] = {{0, split, k - split}, {k - split, 0, split}};
  std::vector<T> c(m * n, std::numeric_limits<T>::quiet_NaN());
  multiply_packed(uk, m, n, segments, 2, a_packed.data(), k, b_packed.data(), k, c.data(), n,
                  Epilogue<T>{T(1), T(0), bias.data(), true});
  double err = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = bias[i];
      for (int64_t p = 0; p < k; ++p) sum += double(a[i * k + p]) * double(b[((p + split) % k) * n + j]);
      err = std::max(err, std::abs(std::max(sum, 0.0) - double(c[i * n + j])));
    }
  }
  expect(err <= tolerance<T>(k), std::string(isa_name(active_isa())) + " segments + bias + relu: err " + std::to_string(err));

  std::vector<T> empty(m * n, T(5));
  multiply_packed<T>(uk, m, n, segments, 0, a_packed.data(), k, b_packed.data(), k, empty.data(), n,
                     Epilogue<T>{T(1), T(0), bias.data(), false});
  bool ok = true;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) ok = ok && empty[i * n + j] == bias[i];
  expect(ok, std::string(isa_name(active_isa())) + " empty product = bias");
}

// multiply_windows: B's rows read in place at offsets into one buffer (overlapping windows,
// as a convolution's taps are), in two K segments, with the bias + ReLU epilogue.
template <typename T>
void test_windows(std::mt19937& rng) {
  const MicroKernel<T>& uk = micro_kernel<T>(active_isa());
  for (int64_t n : {int64_t(1), int64_t(uk.lanes + 3), int64_t(uk.nr), int64_t(3 * uk.nr + 5)}) {
    const int64_t m = 21, k = 77, split = 30;
    const auto a = random_vector<T>(rng, m * k);
    const auto image = random_vector<T>(rng, 4 * k + round_up(n, uk.nr) + 64);
    const auto bias = random_vector<T>(rng, m);
    std::vector<int64_t> offsets(k);
    for (int64_t r = 0; r < k; ++r) offsets[r] = (r * 37) % (3 * k) + r % 3;
    std::vector<T> a_packed(round_up(m, uk.mr) * k);
    pack_a(uk, a.data(), k, 1, m, k, a_packed.data());
    const KSegment segments[2] = {{0, 0, split}, {split, split, k - split}};
    std::vector<T> c(m * n, std::numeric_limits<T>::quiet_NaN());
    multiply_windows(uk, m, n, segments, 2, a_packed.data(), k, image.data(), offsets.data(), c.data(), n,
                     Epilogue<T>{T(1), T(0), bias.data(), true});
    double err = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double sum = bias[i];
        for (int64_t p = 0; p < k; ++p) sum += double(a[i * k + p]) * double(image[offsets[p] + j]);
        err = std::max(err, std::abs(std::max(sum, 0.0) - double(c[i * n + j])));
      }
    expect(err <= tolerance<T>(k), std::string(isa_name(active_isa())) + " multiply_windows n=" + std::to_string(n) +
                                       ": err " + std::to_string(err));
  }
}

// The dot-product kernel: C += A B^T with rows contiguous along the depth (lengths multiples
// of the lanes, rows readable up to whole tiles, as multiply_dot's callers provide), over one
// piece, and over pieces that take B's rows at other offsets; C's other entries, and the
// tile rows past m and n, are left alone.
template <typename T>
void test_dot_against_naive(std::mt19937& rng) {
  const DotMicroKernel<T>& dot = dot_micro_kernel<T>(active_isa());
  const int64_t lanes = dot.lanes;
  for (int64_t m : {1, 3, 4, 5, 17, 64}) {
    for (int64_t n : {1, 2, 6, 7, 13, 48}) {
      for (int64_t k : {lanes, 7 * lanes, 100 * lanes}) {
        for (bool split : {false, true}) {
          const DotOrder order = (m + n + k) % 2 ? DotOrder::kARowsStay : DotOrder::kBRowsStay;
          // split: A's depth [0, k) in two pieces; the second meets B 5 elements further on.
          const int64_t half = k / lanes / 2 * lanes, shift = split ? 5 : 0;
          const DotPiece pieces[2] = {{0, half, 0}, {half, k, shift}};
          const int64_t lda = k + 3 * lanes, ldb = k + lanes + shift, ldc = n + 5;
          const auto a = random_vector<T>(rng, round_up(m, dot.mr) * lda);
          const auto b = random_vector<T>(rng, round_up(n, dot.nr) * ldb);
          std::vector<const T*> b_rows;
          for (int64_t j = 0; j < round_up(n, dot.nr); ++j) b_rows.push_back(b.data() + j * ldb);
          auto c = random_vector<T>(rng, m * ldc);
          std::vector<T> expected = c;
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double sum = expected[i * ldc + j];
              for (int64_t p = 0; p < k; ++p) sum += double(a[i * lda + p]) * double(b[j * ldb + p + (p >= half ? shift : 0)]);
              expected[i * ldc + j] = T(sum);
            }
          multiply_dot(dot, m, n, pieces, 2, a.data(), lda, b_rows.data(), c.data(), ldc, order);
          double err = 0;
          for (int64_t i = 0; i < m * ldc; ++i) err = std::max(err, std::abs(double(c[i]) - double(expected[i])));
          char what[160];
          std::snprintf(what, sizeof what, "%s multiply_dot<%s> m=%lld n=%lld k=%lld split=%d order=%d: err %g",
                        isa_name(active_isa()), sizeof(T) == 4 ? "float" : "double", (long long)m, (long long)n,
                        (long long)k, int(split), int(order), err);
          expect(err <= tolerance<T>(k), what);
        }
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  int tested = 0;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!cpu_supports(isa)) {
      std::printf("skip %s: not supported by this CPU\n", isa_name(isa));
      continue;
    }
    force_isa(isa);
    test_gemm_against_naive<float>(rng);
    test_gemm_against_naive<double>(rng);
    test_segments_and_epilogue<float>(rng);
    test_segments_and_epilogue<double>(rng);
    test_windows<float>(rng);
    test_windows<double>(rng);
    test_dot_against_naive<float>(rng);
    test_dot_against_naive<double>(rng);
    expect(measure_peak_gflops(false, 1) > 0, "peak measured");
    ++tested;
    std::printf("%s: micro-kernel f32 %dx%d, f64 %dx%d\n", isa_name(isa), micro_kernel<float>(isa).mr,
                micro_kernel<float>(isa).nr, micro_kernel<double>(isa).mr, micro_kernel<double>(isa).nr);
  }
  std::printf("%d ISAs tested, %d failures\n", tested, failures);
  return failures == 0 ? 0 : 1;
}
