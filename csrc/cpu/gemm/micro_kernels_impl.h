// The register-tiled micro-kernel, written once with GCC vector extensions and compiled
// once per ISA: each micro_kernels_<isa>.cpp sets the target ISA (#pragma GCC target), names it
// (ROLLCONV_ISA: its namespace, and its entry of cpu/blocking.h's register tiles), then
// includes this file. Only the vector width and the tile shapes differ between ISAs; the
// code is the same.
//
// Everything here has internal linkage, except the table `kernels`, so no ISA-specific code
// can be picked by the linker for another translation unit.
#include "cpu/blocking.h"
#include "cpu/simd.h"

namespace rollconv::gemm {
namespace ROLLCONV_ISA {
namespace {

constexpr cpu::RegisterTiles kTiles = cpu::tiles::ROLLCONV_ISA;

// This ISA's vector of T (simd.h).
template <typename T>
using VecOf = simd::VecOf<T, kTiles.vector_bytes>;
using simd::load;
using simd::store;

// One MR x (NV * lanes) tile of C from an A strip ([k][MR]) and a B strip ([k][NV_FULL *
// lanes]); NV < NV_FULL for the narrow last strip of a row. Partial tiles (m < MR or
// n < NV * lanes) go through a local buffer so that C is never touched out of bounds.
template <typename T, int MR, int NV_FULL, int NV, bool WINDOWS>
void tile_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, const int64_t* b_offsets, T* c,
                 int64_t ldc, const Epilogue<T>& ep, int m, int n) {
  using V = typename VecOf<T>::type;
  constexpr int W = sizeof(V) / sizeof(T), NR = NV_FULL * W, TN = NV * W;
  if (ep.beta != T(0) && m == MR) {  // C is read at the end: start fetching it now
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      for (int off = 0; off < TN; off += 64 / int(sizeof(T))) __builtin_prefetch(c + i * ldc + off, 1);
    }
  }
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  }
  for (int64_t p = 0; p < kc; ++p, a += MR) {
    const T* b_row = WINDOWS ? b + b_offsets[p] : b + p * NR;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = load<V>(b_row + v * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }

  const bool full = m == MR && n == TN;
  alignas(64) T buffer[MR * TN];
  T* dst = full ? c : buffer;
  const int64_t ld = full ? ldc : TN;
  if (!full && ep.beta != T(0)) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) buffer[i * TN + j] = c[i * ldc + j];
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    const T bias = (ep.bias != nullptr && i < m) ? ep.bias[i] : T(0);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V r = acc[i][v] * ep.alpha;
      if (ep.beta != T(0)) r += ep.beta * load<V>(dst + i * ld + v * W);
      r += bias;
      if (ep.relu) r = r < T(0) ? V{} : r;  // NaN stays NaN, as in torch.relu
      store(dst + i * ld + v * W, r);
    }
  }
  if (!full) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[i * ldc + j] = buffer[i * TN + j];
  }
}

template <typename T, int MR, int NV>
constexpr MicroKernel<T> make_micro_kernel() {
  constexpr int W = sizeof(typename VecOf<T>::type) / sizeof(T);
  static_assert(NV >= 1 && NV <= 4, "1 to 4 vectors per tile row");
  return MicroKernel<T>{
      MR, NV * W, W,
      {&tile_kernel<T, MR, NV, 1, false>, &tile_kernel<T, MR, NV, (NV >= 2 ? 2 : NV), false>,
       &tile_kernel<T, MR, NV, (NV >= 3 ? 3 : NV), false>, &tile_kernel<T, MR, NV, NV, false>},
      {&tile_kernel<T, MR, NV, 1, true>, &tile_kernel<T, MR, NV, (NV >= 2 ? 2 : NV), true>,
       &tile_kernel<T, MR, NV, (NV >= 3 ? 3 : NV), true>, &tile_kernel<T, MR, NV, NV, true>}};
}

// --- the dot-product micro-kernel (DotMicroKernel in gemm.h) ---------------------------------------

// One step of a transposing lane reduction. Vectors a and b each hold W / B partial sums
// spread over blocks of B lanes; shuffle(a, b, lo) + shuffle(a, b, hi) holds the 2W / B
// sums of both (a's first) over blocks of B / 2 lanes.
template <int W, int B>
struct FoldMasks {
  int64_t lo[W], hi[W];
  constexpr FoldMasks() : lo(), hi() {
    constexpr int half = B / 2, blocks = W / B;
    for (int l = 0; l < W; ++l) {
      const int out_block = l / half, offset = l % half;
      const int src = out_block < blocks ? out_block * B : W + (out_block - blocks) * B;
      lo[l] = src + offset;
      hi[l] = src + half + offset;
    }
  }
};

template <typename T, int B, int... L>
inline typename VecOf<T>::type fold(typename VecOf<T>::type a, typename VecOf<T>::type b,
                                    std::integer_sequence<int, L...>) {
  using M = typename VecOf<T>::lane_index;
  static constexpr FoldMasks<sizeof...(L), B> masks;
  return __builtin_shuffle(a, b, M{masks.lo[L]...}) + __builtin_shuffle(a, b, M{masks.hi[L]...});
}

// COUNT vectors of blocks of B lanes -> COUNT / 2 vectors of blocks of B / 2, down to
// blocks of one lane: then lane l of v[g] is the sum of the lanes of the original v[g * W + l].
template <typename T, int B, int COUNT>
inline void fold_all(typename VecOf<T>::type* v) {
  if constexpr (B > 1) {
    constexpr int W = sizeof(typename VecOf<T>::type) / sizeof(T);
#pragma GCC unroll 32
    for (int q = 0; q < COUNT / 2; ++q) v[q] = fold<T, B>(v[2 * q], v[2 * q + 1], std::make_integer_sequence<int, W>{});
    fold_all<T, B / 2, COUNT / 2>(v);
  }
}

// One MR x NR tile of C += A B^T along the pieces of the depth (lengths multiples of the
// lanes), rows of A and B contiguous along it: MR + NR vector loads feed MR * NR FMAs per
// step, no packing needed.
template <typename T, int MR, int NR>
void dot_tile(const DotPiece* pieces, int num_pieces, const T* __restrict a, int64_t lda,
              const T* const* b_rows, T* c, int64_t ldc, int m, int n) {
  using V = typename VecOf<T>::type;
  constexpr int W = sizeof(V) / sizeof(T), TILE = MR * NR, PADDED = (TILE + W - 1) / W * W;
  V acc[PADDED];
#pragma GCC unroll 32
  for (int t = 0; t < PADDED; ++t) acc[t] = V{};
  for (int s = 0; s < num_pieces; ++s) {
    const T* b[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) b[j] = b_rows[j] + pieces[s].b_shift;
    for (int64_t p = pieces[s].begin; p < pieces[s].end; p += W) {
      V av[MR];
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) av[i] = load<V>(a + i * lda + p);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) {
        const V bv = load<V>(b[j] + p);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) acc[i * NR + j] += av[i] * bv;
      }
    }
  }
  fold_all<T, W, PADDED>(acc);
  alignas(64) T sums[PADDED];
  __builtin_memcpy(sums, acc, sizeof(sums));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) c[i * ldc + j] += sums[i * NR + j];
}

template <typename T, int MR, int NR>
constexpr DotMicroKernel<T> make_dot_micro_kernel() {
  return DotMicroKernel<T>{MR, NR, int(sizeof(typename VecOf<T>::type) / sizeof(T)), &dot_tile<T, MR, NR>};
}

// Independent FMA chains on registers only: the ISA's arithmetic peak, for the benchmark.
constexpr int kChains = 12;  // > FMA latency x pipes; with 2 operands, fits 16 registers

template <typename T>
T fma_chains(int64_t iterations, T seed) {
  using V = typename VecOf<T>::type;
  V acc[kChains];
  const V x = V{} + T(0.999999), y = V{} + T(1e-7);
#pragma GCC unroll 16
  for (int i = 0; i < kChains; ++i) acc[i] = V{} + seed * T(i);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * x + y;
  }
  V sum = V{};
  for (int i = 0; i < kChains; ++i) sum += acc[i];
  T total = 0;
  for (int l = 0; l < int(sizeof(V) / sizeof(T)); ++l) total += sum[l];
  return total;
}

// flops per call: iterations * chains * lanes * 2.
double peak_loop(bool is_double, int64_t iterations, int64_t* flops) {
  if (is_double) {
    *flops = iterations * kChains * int64_t(sizeof(VecOf<double>::type) / sizeof(double)) * 2;
    return fma_chains<double>(iterations, 1e-3);
  }
  *flops = iterations * kChains * int64_t(sizeof(VecOf<float>::type) / sizeof(float)) * 2;
  return fma_chains<float>(iterations, 1e-3f);
}

}  // namespace

extern const MicroKernelTable micro_kernels;  // declared in gemm.cpp too: external linkage
const MicroKernelTable micro_kernels{make_micro_kernel<float, kTiles.mr_f32, kTiles.nv_f32>(),
                           make_micro_kernel<double, kTiles.mr_f64, kTiles.nv_f64>(),
                           make_dot_micro_kernel<float, kTiles.dot_mr, kTiles.dot_nr>(),
                           make_dot_micro_kernel<double, kTiles.dot_mr, kTiles.dot_nr>(), &peak_loop};

}  // namespace ROLLCONV_ISA
}  // namespace rollconv::gemm
