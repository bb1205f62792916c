// The ISA-independent layers of the GEMM engine: packing, the blocked loops around the
// micro-kernel, the parallel plain GEMM, the peak measurement.
#include "cpu/gemm/gemm.h"

#include "cpu/blocking.h"
#include "cpu/parallel.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace rollconv::gemm {

// The per-ISA tables (micro_kernels_<isa>.cpp).
namespace portable {
extern const MicroKernelTable micro_kernels;
}  // namespace portable
namespace avx2 {
extern const MicroKernelTable micro_kernels;
}  // namespace avx2
namespace avx512 {
extern const MicroKernelTable micro_kernels;
}  // namespace avx512

const MicroKernelTable& micro_kernel_table(Isa isa) {
  return cpu::pick(isa, portable::micro_kernels, avx2::micro_kernels, avx512::micro_kernels);
}

template <>
const MicroKernel<float>& micro_kernel<float>(Isa isa) {
  return micro_kernel_table(isa).f32;
}
template <>
const MicroKernel<double>& micro_kernel<double>(Isa isa) {
  return micro_kernel_table(isa).f64;
}

template <>
const DotMicroKernel<float>& dot_micro_kernel<float>(Isa isa) {
  return micro_kernel_table(isa).dot_f32;
}
template <>
const DotMicroKernel<double>& dot_micro_kernel<double>(Isa isa) {
  return micro_kernel_table(isa).dot_f64;
}

// --- blocked loops around the micro-kernels ---------------------------------------------

// Where a tile's B comes from: packed strips of `depth` rows, or windows of an image.
template <typename T>
struct PackedB {
  const T* b;
  int64_t depth;
  void tile(const MicroKernel<T>& uk, int64_t kc, const T* a, int64_t j, int64_t k, T* c, int64_t ldc,
            const Epilogue<T>& ep, int m, int n) const {
    uk(kc, a, b + (j / uk.nr) * uk.nr * depth + k * uk.nr, c, ldc, ep, m, n);
  }
};

template <typename T>
struct WindowsB {
  const T* b;
  const int64_t* offsets;
  void tile(const MicroKernel<T>& uk, int64_t kc, const T* a, int64_t j, int64_t k, T* c, int64_t ldc,
            const Epilogue<T>& ep, int m, int n) const {
    uk.windows(kc, a, b + j, offsets + k, c, ldc, ep, m, n);
  }
};

// The blocked loops of multiply_packed and multiply_windows.
template <typename T, typename B>
void multiply_blocked(const MicroKernel<T>& uk, int64_t m, int64_t n, const KSegment* segments,
                      int num_segments, const T* a, int64_t a_depth, const B& b, T* c, int64_t ldc,
                      const Epilogue<T>& ep) {
  const int64_t mr = uk.mr, nr = uk.nr;
  const int64_t kc_max = std::max<int64_t>(16, cpu::kGemmDepthBytes / (nr * int64_t(sizeof(T))));
  int64_t total = 0;
  for (int s = 0; s < num_segments; ++s) total += segments[s].len;
  if (total == 0) {  // an empty sum: the epilogue of zero
    for (int64_t i = 0; i < m; i += mr)
      for (int64_t j = 0; j < n; j += nr)
        b.tile(uk, 0, a, j, 0, c + i * ldc + j, ldc,
               Epilogue<T>{ep.alpha, ep.beta, ep.bias ? ep.bias + i : nullptr, ep.relu}, int(std::min(mr, m - i)),
               int(std::min(nr, n - j)));
    return;
  }
  int64_t done = 0;
  for (int s = 0; s < num_segments; ++s) {
    const KSegment& seg = segments[s];
    for (int64_t p = 0; p < seg.len; p += kc_max) {
      const int64_t kc = std::min(kc_max, seg.len - p);
      const bool first = done == 0, last = done + kc == total;
      done += kc;
      Epilogue<T> pass{ep.alpha, first ? ep.beta : T(1), nullptr, last && ep.relu};
      // Rows in blocks whose A strips stay in L2 while every B micro-panel passes by.
      const int64_t mc = std::max<int64_t>(1, cpu::kGemmRowBlockBytes / (kc * mr * int64_t(sizeof(T)))) * mr;
      for (int64_t i0 = 0; i0 < m; i0 += mc) {
        const int64_t i1 = std::min(m, i0 + mc);
        for (int64_t j = 0; j < n; j += nr) {
          for (int64_t i = i0; i < i1; i += mr) {
            pass.bias = last && ep.bias ? ep.bias + i : nullptr;
            b.tile(uk, kc, a + (i / mr) * mr * a_depth + (seg.a_k + p) * mr, j, seg.b_k + p, c + i * ldc + j, ldc,
                   pass, int(std::min(mr, m - i)), int(std::min(nr, n - j)));
          }
        }
      }
    }
  }
}

template <typename T>
void multiply_packed(const MicroKernel<T>& uk, int64_t m, int64_t n, const KSegment* segments,
                     int num_segments, const T* a, int64_t a_depth, const T* b, int64_t b_depth,
                     T* c, int64_t ldc, const Epilogue<T>& ep) {
  multiply_blocked(uk, m, n, segments, num_segments, a, a_depth, PackedB<T>{b, b_depth}, c, ldc, ep);
}

template <typename T>
void multiply_windows(const MicroKernel<T>& uk, int64_t m, int64_t n, const KSegment* segments,
                      int num_segments, const T* a, int64_t a_depth, const T* b, const int64_t* b_offsets,
                      T* c, int64_t ldc, const Epilogue<T>& ep) {
  multiply_blocked(uk, m, n, segments, num_segments, a, a_depth, WindowsB<T>{b, b_offsets}, c, ldc, ep);
}

template <typename T>
void multiply_dot(const DotMicroKernel<T>& dot, int64_t m, int64_t n, const DotPiece* pieces, int num_pieces,
                  const T* a, int64_t lda, const T* const* b_rows, T* c, int64_t ldc, DotOrder order) {
  const auto tile = [&](int64_t i, int64_t j) {
    dot.tile(pieces, num_pieces, a + i * lda, lda, b_rows + j, c + i * ldc + j, ldc,
            int(std::min<int64_t>(dot.mr, m - i)), int(std::min<int64_t>(dot.nr, n - j)));
  };
  if (order == DotOrder::kBRowsStay) {
    for (int64_t j = 0; j < n; j += dot.nr)
      for (int64_t i = 0; i < m; i += dot.mr) tile(i, j);
  } else {
    for (int64_t i = 0; i < m; i += dot.mr)
      for (int64_t j = 0; j < n; j += dot.nr) tile(i, j);
  }
}

namespace {

// Both packings are the same operation: strips of `width` lanes (A: rows, B: columns), each
// strip laid out depth-major ([depth][width]) and zero-padded to a whole strip; element
// (lane, d) is src[lane * lane_stride + d * depth_stride].
template <typename T>
void pack_strips(int64_t width, const T* src, int64_t lane_stride, int64_t depth_stride,
                 int64_t lanes, int64_t depth, T* dst) {
  for (int64_t l0 = 0; l0 < lanes; l0 += width) {
    const int64_t used = std::min(width, lanes - l0);
    for (int64_t d = 0; d < depth; ++d, dst += width) {
      const T* from = src + l0 * lane_stride + d * depth_stride;
      if (lane_stride == 1) {
        std::memcpy(dst, from, used * sizeof(T));
      } else {
        for (int64_t l = 0; l < used; ++l) dst[l] = from[l * lane_stride];
      }
      for (int64_t l = used; l < width; ++l) dst[l] = T(0);
    }
  }
}

}  // namespace

template <typename T>
void pack_a(const MicroKernel<T>& uk, const T* a, int64_t row_stride, int64_t col_stride,
            int64_t m, int64_t k, T* dst) {
  pack_strips<T>(uk.mr, a, row_stride, col_stride, m, k, dst);
}

template <typename T>
void pack_b(const MicroKernel<T>& uk, const T* b, int64_t row_stride, int64_t col_stride,
            int64_t k, int64_t n, T* dst) {
  pack_strips<T>(uk.nr, b, col_stride, row_stride, n, k, dst);
}

// --- the plain parallel GEMM -----------------------------------------------------------

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int threads) {
  if (m <= 0 || n <= 0) return;
  const MicroKernel<T>& uk = micro_kernel<T>(cpu::active_isa());
  const int nthreads = threads > 0 ? threads : omp_get_max_threads();
  // A is packed once, whole (in parallel, by strips); the columns are split into items of
  // at most ~8 B strips, as many per thread, the strips spread evenly over the items (items
  // of a fixed ceil-rounded size would leave the last thread short); each thread packs its
  // items' B panels.
  const int64_t strips = (n + uk.nr - 1) / uk.nr;
  const int64_t items = round_up(std::max<int64_t>(1, (strips + 7) / 8), nthreads);
  const int64_t strips_per_item = (strips + items - 1) / items;  // the most an item gets
  AlignedBuffer<T> a_packed(round_up(m, uk.mr) * k);
  const KSegment all{0, 0, k};
  const Epilogue<T> ep{alpha, beta, nullptr, false};
  const auto buffers = [&] { return AlignedBuffer<T>(strips_per_item * uk.nr * k); };
  parallel_with_state(nthreads, buffers, [&](AlignedBuffer<T>& b_packed) {
#pragma omp for schedule(static)
    for (int64_t i0 = 0; i0 < m; i0 += uk.mr) {
      const T* src = a + (trans_a ? i0 : i0 * lda);
      pack_a(uk, src, trans_a ? 1 : lda, trans_a ? lda : 1, std::min<int64_t>(uk.mr, m - i0), k,
             a_packed.get() + i0 * k);
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t j0 = item * strips / items * uk.nr;
      const int64_t cols = std::min((item + 1) * strips / items * uk.nr, n) - j0;
      if (cols <= 0) continue;
      const T* src = b + (trans_b ? j0 * ldb : j0);
      pack_b(uk, src, trans_b ? 1 : ldb, trans_b ? ldb : 1, k, cols, b_packed.get());
      multiply_packed(uk, m, cols, &all, 1, a_packed.get(), k, b_packed.get(), k, c + j0, ldc, ep);
    }
  });
}

double measure_peak_gflops(bool is_double, int threads) {
  const auto loop = micro_kernel_table(cpu::active_isa()).peak_loop;
  const int64_t iterations = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    int64_t flops = 0;
    const auto t0 = std::chrono::steady_clock::now();
    // loop() lives in another translation unit and returns its chains' sum: the call and
    // its work cannot be optimized away even though the sum is not used here.
#pragma omp parallel num_threads(threads) reduction(+ : flops)
    {
      int64_t f = 0;
      (void)loop(is_double, iterations, &f);
      flops += f;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(flops) / seconds * 1e-9);
  }
  return best;
}

#define ROLLCONV_GEMM_INSTANTIATE(T)                                                              \
  template void multiply_packed<T>(const MicroKernel<T>&, int64_t, int64_t, const KSegment*, int, \
                                   const T*, int64_t, const T*, int64_t, T*, int64_t,            \
                                   const Epilogue<T>&);                                          \
  template void multiply_windows<T>(const MicroKernel<T>&, int64_t, int64_t, const KSegment*, int, \
                                    const T*, int64_t, const T*, const int64_t*, T*, int64_t,         \
                                    const Epilogue<T>&);                                              \
  template void multiply_dot<T>(const DotMicroKernel<T>&, int64_t, int64_t, const DotPiece*, int,     \
                                const T*, int64_t, const T* const*, T*, int64_t, DotOrder);      \
  template void pack_a<T>(const MicroKernel<T>&, const T*, int64_t, int64_t, int64_t, int64_t, T*); \
  template void pack_b<T>(const MicroKernel<T>&, const T*, int64_t, int64_t, int64_t, int64_t, T*); \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*,    \
                        int64_t, T, T*, int64_t, int);
ROLLCONV_GEMM_INSTANTIATE(float)
ROLLCONV_GEMM_INSTANTIATE(double)
#undef ROLLCONV_GEMM_INSTANTIATE

}  // namespace rollconv::gemm
