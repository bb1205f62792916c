// rollconv's CPU GEMM engine: packed panels, a register-tiled micro-kernel per ISA
// (AVX-512, AVX2+FMA, portable), picked at run time from the CPU's features (cpu/isa.h);
// the tile shapes and cache blocking are in cpu/blocking.h.
//
// The classic layered design (Goto / BLIS): C (m x n, row-major, ldc) += A (m x k) B (k x n)
// where A is packed in strips of MR rows ([strip][k][MR]) and B in strips of NR columns
// ([strip][k][NR]), zero-padded, and a micro-kernel computes one MR x NR tile of C from one
// A strip and one B strip, keeping the tile in registers. Everything above the micro-kernel
// (packing, blocking, threads) is ISA-independent; the convolution engine
// (cpu/conv_engine.cpp) packs B straight from the input image instead of from a matrix.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>  // std::integer_sequence, for micro_kernels_impl.h (included after a target pragma)

#include "cpu/isa.h"

namespace rollconv::gemm {

using cpu::Isa;

// What the micro-kernel does with a tile on its way to memory:
//   C = alpha * AB + (beta != 0 ? beta * C : 0) + bias[row], then max(., 0) if relu.
// With beta == 0, C is not read (BLAS semantics: NaN in C does not leak).
template <typename T>
struct Epilogue {
  T alpha = 1, beta = 0;
  const T* bias = nullptr;  // indexed by the tile's row (already offset to the tile)
  bool relu = false;
};

template <typename T>
struct MicroKernel {
  int mr, nr, lanes;  // nr = lanes * vectors
  // Tile of m <= mr valid rows and n <= nr valid columns; kc >= 0 (0: C = epilogue(0)).
  // B's row p is at b + p * nr (a packed strip) or, with b_offsets, at b + b_offsets[p]
  // (a window of an image, read in place: see multiply_windows).
  using Fn = void (*)(int64_t kc, const T* a, const T* b, const int64_t* b_offsets, T* c, int64_t ldc,
                      const Epilogue<T>& ep, int m, int n);
  Fn by_vectors[4];          // [v - 1]: computes only the first v vectors of the strip (narrow edges)
  Fn windows_by_vectors[4];  // the same, B as windows

  void operator()(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, const Epilogue<T>& ep,
                  int m, int n) const {
    by_vectors[(n + lanes - 1) / lanes - 1](kc, a, b, nullptr, c, ldc, ep, m, n);
  }
  void windows(int64_t kc, const T* a, const T* b, const int64_t* b_offsets, T* c, int64_t ldc,
               const Epilogue<T>& ep, int m, int n) const {
    windows_by_vectors[(n + lanes - 1) / lanes - 1](kc, a, b, b_offsets, c, ldc, ep, m, n);
  }
};

// The dot-product micro-kernel, for products whose depth is contiguous in both operands
// (the convolution's dK: dY rows times image-column rows, both along the pixels), so that
// neither operand needs a transposed packing: one MR x NR tile of
//   C (m x n, ldc) += sum over pieces of A[:, begin:end] B[:, begin + b_shift : end + b_shift]^T
// where A's rows lie at a stride (lda) and B's rows anywhere (b_rows: NR row pointers; a
// row may be a window of an image, and the pieces may take B from several images). The tile
// is kept as MR x NR vector accumulators along the depth, summed across the lanes once at
// the end (so the pieces should add up to hundreds of lanes). Preconditions, for speed:
// every piece's length is a multiple of `lanes`; A has MR readable rows and b_rows NR
// readable rows (the products of rows past m or n are dropped).
struct DotPiece {
  int64_t begin, end, b_shift;
};

template <typename T>
struct DotMicroKernel {
  int mr, nr, lanes;
  using Fn = void (*)(const DotPiece* pieces, int num_pieces, const T* a, int64_t lda,
                      const T* const* b_rows, T* c, int64_t ldc, int m, int n);
  Fn tile;
};

// One ISA's micro-kernels (micro_kernels_<isa>.cpp).
struct MicroKernelTable {
  MicroKernel<float> f32;
  MicroKernel<double> f64;
  DotMicroKernel<float> dot_f32;
  DotMicroKernel<double> dot_f64;
  // Independent FMA chains on registers only, `iterations` long: the ISA's arithmetic peak
  // (*flops: the flops done). Returns the chains' sum, so that the work cannot be dropped.
  double (*peak_loop)(bool is_double, int64_t iterations, int64_t* flops);
};

const MicroKernelTable& micro_kernel_table(Isa isa);
template <typename T>
const MicroKernel<T>& micro_kernel(Isa isa);
template <typename T>
const DotMicroKernel<T>& dot_micro_kernel(Isa isa);

// Pairs A's columns [a_k, a_k + len) with B's rows [b_k, b_k + len): a product may be a
// sum of such segments (the rolling convolution's wrap-around), all in packed form.
struct KSegment {
  int64_t a_k, b_k, len;
};

// C (m x n) = epilogue(sum over segments of A_packed B_packed). a: strips of MR rows
// over a_depth columns; b: strips of NR columns over b_depth rows. Single-threaded; k is
// blocked so a B micro-panel stays in L1 while the A strips stream through.
template <typename T>
void multiply_packed(const MicroKernel<T>& uk, int64_t m, int64_t n, const KSegment* segments,
                     int num_segments, const T* a, int64_t a_depth, const T* b, int64_t b_depth,
                     T* c, int64_t ldc, const Epilogue<T>& ep);

// multiply_packed with B read in place as windows of an image: B's row r (of the segments'
// b_k range) is the n contiguous elements at b + b_offsets[r]. For a stride-1 convolution
// over a zero-padded image these are its im2col rows, so B needs no packing at all
// (cpu/conv_engine.cpp). Every row must be readable for round_up(n, lanes) elements.
template <typename T>
void multiply_windows(const MicroKernel<T>& uk, int64_t m, int64_t n, const KSegment* segments,
                      int num_segments, const T* a, int64_t a_depth, const T* b, const int64_t* b_offsets,
                      T* c, int64_t ldc, const Epilogue<T>& ep);

// C (m x n) += the DotMicroKernel's sum for every tile. Single-threaded; b_rows holds
// round_up(n, nr) readable row pointers. The tile order keeps one operand's rows in L1:
//   kBRowsStay: B's NR rows while A's rows stream past (B rows built per tile column);
//   kARowsStay: A's MR rows while B's rows stream past (B rows read in place as windows of
//               an image: neighbouring windows overlap, so they bring few new cache lines).
enum class DotOrder { kBRowsStay, kARowsStay };
template <typename T>
void multiply_dot(const DotMicroKernel<T>& dot, int64_t m, int64_t n, const DotPiece* pieces, int num_pieces,
                  const T* a, int64_t lda, const T* const* b_rows, T* c, int64_t ldc,
                  DotOrder order = DotOrder::kBRowsStay);

// Packing of strided matrices: element (i, j) of A is a[i * row_stride + j * col_stride].
template <typename T>
void pack_a(const MicroKernel<T>& uk, const T* a, int64_t row_stride, int64_t col_stride,
            int64_t m, int64_t k, T* dst);
template <typename T>
void pack_b(const MicroKernel<T>& uk, const T* b, int64_t row_stride, int64_t col_stride,
            int64_t k, int64_t n, T* dst);

// Packed sizes (elements), padded to whole strips.
inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// A 64-byte aligned scratch buffer for packed panels.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t elements)
      : data_(static_cast<T*>(std::aligned_alloc(64, round_up((elements > 0 ? elements : 1) * int64_t(sizeof(T)), 64)))) {
    if (!data_) throw std::bad_alloc();
  }
  T* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
};

// C = alpha * op(A) op(B) + beta * C, row-major, parallel over `threads` OpenMP threads
// (<= 0: the OpenMP default). op(X) = X or X^T. The reference for the C++ tests and the
// GEMM the benchmark measures.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int threads = 0);

// Measured FMA throughput of the active ISA's registers (GFLOP/s over `threads` threads):
// the peak the benchmark reports the GEMM against.
double measure_peak_gflops(bool is_double, int threads);

}  // namespace rollconv::gemm
