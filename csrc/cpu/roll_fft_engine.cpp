// The CPU's fused channel-FFT rolling convolution (RollFftEngine, conv_engine.h), on the
// channel transforms and per-frequency kernels of cpu/fft. The batch goes through in
// chunks of samples whose spectra fit kSpectrumBytes; per chunk, two parallel phases:
//
//   analysis:  the spectra of the chunk's operands (input over its channels, dY over its
//              rolls), per (sample, pixel range), as frequency planes [K][re|im][pixels];
//   synthesis: forward: per (sample, block of output rows), for each filter: the block's
//              per-frequency sums over the taps (a tile of K x pixels that stays in cache),
//              then the inverse transform over the rolls, bias and ReLU, written once into
//              the roll-major output. dX: the same per block of input rows, summed over the
//              filters. dK: per (filter, frequency): the sums over the chunk's samples and
//              pixels, added to dK's spectrum.
// Before and after, on one thread: the taps (the weight's transform over its channels) and
// dK from its spectrum, by the same channel transforms.
//
// On several threads whose shares of the batch are (nearly) equal, the forward and the
// combined backward go sample by sample on each thread instead (by_samples): each thread
// analyzes its sample's rows just before the blocks that read them and waits for no other
// thread until the end (or, in the backward, a round of samples, whose dK and bias sums it
// keeps per sample and adds up in sample order). The same blocks, items and orders: the
// same bits as the chunked passes.
//
// The 1/C of the inverse transform is folded into the taps. Every sum has a fixed order
// that does not depend on the thread count: results are bitwise reproducible for any.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/conv_engine.h"
#include "common/device_primitives.h"
#include "cpu/fft/channel_fft.h"
#include "cpu/gemm/gemm.h"
#include "cpu/parallel.h"

namespace rollconv {
namespace {

using channel_fft::MicroKernels;
using channel_fft::Plan;
using gemm::AlignedBuffer;

// The spectra of one chunk of samples (at least one sample; 1 MiB, two chunks' worth in a
// multi-threaded forward, keeps the peak memory below the filter-bank method's, which
// materializes the bank's output, and costs no speed here: peak memory does not grow with
// the batch), and one thread's tile of K x pixels of a row block (L2-sized).
constexpr int64_t kSpectrumBytes = int64_t(1) << 20;
constexpr int64_t kTileBytes = int64_t(128) << 10;

template <typename T>
constexpr int64_t analysis_pixels() {  // pixels per analysis work item
  return 4 * channel_fft::group_pixels<T>();
}

int64_t samples_per_chunk(int64_t batch, int64_t bytes_per_sample) {
  return std::clamp<int64_t>(kSpectrumBytes / std::max<int64_t>(1, bytes_per_sample), 1, batch);
}

// Samples per thread from which a pass goes sample by sample on each thread even where the
// threads' shares differ by one.
constexpr int64_t kSamplesPerThread = 4;
// Whether a pass goes sample by sample on each thread (the forward and the combined
// backward): on several threads, where their shares of the batch are equal or differ by
// one of several. (On one thread, the chunked passes measured as fast or faster.)
inline bool by_samples(int64_t batch, int threads) {
  return threads > 1 && (batch % threads == 0 || batch >= kSamplesPerThread * threads);
}
// Outputs (y, dX) from this size on are written by streaming stores (MicroKernels::synthesize):
// larger than the caches keep, they would otherwise be read from memory before each line is
// written, and evict the spectra and tiles the passes work in.
constexpr int64_t kStreamingOutputBytes = int64_t(4) << 20;
inline bool streams_output(const at::Tensor& out) {
  return out.numel() * int64_t(out.element_size()) >= kStreamingOutputBytes;
}

// Rows per synthesis block: as many as the tile holds, fewer when the blocks would be too
// few to share among threads. Then, where a block's pixels (rows * width) would end inside
// a transform group, a count of rows that does not: fewer, or else up to twice as many
// where that still gives enough blocks. (Otherwise every block's synthesis takes the
// partial path for its last group, and the next block's rows start off a cache line, so
// that its stores cannot stream: at width 24 the forward took 15-25% longer; see
// bench/roll_conv2d_limits.md.) Failing both, a count that keeps the blocks' starts on
// cache lines. Not a function of the thread count: the block bounds decide which pixels
// share an inverse transform (and so its rounding).
constexpr int64_t kMinBlocks = 8;
template <typename T>
int64_t rows_per_block(int64_t rows, int64_t row_bytes, int64_t samples, int64_t width) {
  int64_t per_block = std::clamp<int64_t>(kTileBytes / std::max<int64_t>(1, row_bytes), 1, std::max<int64_t>(1, rows));
  while (per_block > 1 && samples * ceil_div(rows, per_block) < kMinBlocks) per_block = ceil_div(per_block, 2);
  // The fewest rows whose pixels fill whole units of `pixels`.
  const auto rows_filling = [&](int64_t pixels) { return pixels / std::gcd(pixels, width); };
  const int64_t group_rows = rows_filling(channel_fft::group_pixels<T>());
  const int64_t line_rows = rows_filling(channel_fft::kLaneBytes / int64_t(sizeof(T)));
  if (per_block >= rows || per_block % group_rows == 0) return per_block;
  if (per_block >= group_rows) return per_block - per_block % group_rows;
  if (2 * per_block >= group_rows && group_rows <= rows && samples * ceil_div(rows, group_rows) >= kMinBlocks) {
    return group_rows;
  }
  return per_block >= line_rows ? per_block - per_block % line_rows : per_block;
}

// The analysis items of `planes` transforms of `pixels` pixels each, per sample.
struct AnalysisItem {
  int64_t sample, plane, first, count;
};
template <typename T>
AnalysisItem analysis_item(int64_t item, int64_t planes, int64_t pixels) {
  const int64_t ranges = ceil_div(pixels, analysis_pixels<T>());
  const int64_t range = item % ranges, rest = item / ranges;
  const int64_t first = range * analysis_pixels<T>();
  return AnalysisItem{rest / planes, rest % planes, first, std::min(analysis_pixels<T>(), pixels - first)};
}
template <typename T>
int64_t analysis_items(int64_t samples, int64_t planes, int64_t pixels) {
  return samples * planes * ceil_div(pixels, analysis_pixels<T>());
}

// One analysis item of the input (over its channels) or of dY (over its rolls: roll r of
// filter f is channel r * F + f), into the chunk's spectra [sample][plane][K][2][pixels].
template <typename T>
void analyze_input(const MicroKernels<T>& micro, const Plan<T>& plan, const AnalysisItem& it, const T* x_chunk,
                   int64_t pixels, T* spectra, T* scratch) {
  const int64_t channels = plan.n, size = 2 * plan.freqs() * pixels;
  micro.analyze(plan, x_chunk + it.sample * channels * pixels + it.first, pixels, it.count,
               spectra + it.sample * size + it.first, pixels, scratch);
}
// Where an analysis item of dY writes in the chunk's spectra.
template <typename T>
T* grad_spectrum(const Plan<T>& plan, const AnalysisItem& it, int64_t filters, int64_t pixels, T* spectra) {
  return spectra + (it.sample * filters + it.plane) * 2 * plan.freqs() * pixels + it.first;
}
// mask_chunk (laid out as dy_chunk; null: none): dY zeroed where mask <= 0 as it is read.
template <typename T>
void analyze_grad(const MicroKernels<T>& micro, const Plan<T>& plan, const AnalysisItem& it, const T* dy_chunk,
                  const T* mask_chunk, int64_t filters, int64_t pixels, T* spectra, T* scratch) {
  const int64_t at = (it.sample * plan.n * filters + it.plane) * pixels + it.first;
  T* spectrum = grad_spectrum(plan, it, filters, pixels, spectra);
  if (mask_chunk == nullptr) {
    micro.analyze(plan, dy_chunk + at, filters * pixels, it.count, spectrum, pixels, scratch);
  } else {
    micro.analyze_masked(plan, dy_chunk + at, mask_chunk + at, filters * pixels, it.count, spectrum, pixels, scratch);
  }
}

// The input's spectra of a chunk's nb samples, for dK. Called inside a parallel region: its
// threads share the items statically and go on without a barrier, each to its share of dY's
// analysis, whose loop's barrier then covers both (one loop over both would give one thread
// the input's items and the other dY's).
template <typename T>
void analyze_input_items(const MicroKernels<T>& micro, const Plan<T>& plan, int64_t nb, const T* x_chunk,
                         int64_t pixels, T* spectra, T* scratch) {
#pragma omp for schedule(static) nowait
  for (int64_t item = 0; item < analysis_items<T>(nb, 1, pixels); ++item) {
    analyze_input(micro, plan, analysis_item<T>(item, 1, pixels), x_chunk, pixels, spectra, scratch);
  }
}

// dY's spectra of a chunk's nb samples (contiguous, no mask: the separate dX and dK passes).
// Called inside a parallel region; ends with a barrier, after which the spectra are complete.
template <typename T>
void analyze_grad_items(const MicroKernels<T>& micro, const Plan<T>& plan, int64_t nb, const T* dy_chunk,
                        int64_t filters, int64_t pixels, T* spectra, T* scratch) {
#pragma omp for schedule(static)
  for (int64_t item = 0; item < analysis_items<T>(nb, filters, pixels); ++item) {
    analyze_grad(micro, plan, analysis_item<T>(item, filters, pixels), dy_chunk, static_cast<const T*>(nullptr),
                 filters, pixels, spectra, scratch);
  }
}

// dst[x] = read(row, x), zeroed where mask[x] <= 0 (mask: null for none).
template <typename T, typename Read>
inline void select_row(const T* row, const T* mask, int64_t n, T* dst, Read read) {
  if (mask == nullptr) {
    for (int64_t x = 0; x < n; ++x) dst[x] = read(row, x);
  } else {
    for (int64_t x = 0; x < n; ++x) {
      const T v = read(row, x);  // read first: a select, not an unpredictable branch
      dst[x] = mask[x] <= T(0) ? T(0) : v;
    }
  }
}
// One analysis item's rows of a dY of any strides (an expanded grad_output, as y.sum()'s
// or y.mean()'s backward hands over, or a channels_last one), so that it is read in place
// instead of first made contiguous whole: rows [roll][it.count] into rows, zeroed where
// mask <= 0 as threshold_backward(dY, mask, 0) does (mask: the contiguous output, or null).
// The analysis of these rows gives the bits of the contiguous path's.
template <typename T>
void gather_grad_rows(const at::Tensor& grad_output, const T* mask, int64_t sample, const AnalysisItem& it,
                      int64_t rolls, int64_t filters, int64_t out_w, T* rows) {
  const T* dy = grad_output.const_data_ptr<T>();
  const auto s = grad_output.strides();
  const int64_t pixels = grad_output.size(2) * out_w;
  for (int64_t r = 0; r < rolls; ++r) {
    const int64_t c = r * filters + it.plane;
    const T* plane = dy + sample * s[0] + c * s[1];
    const T* mask_plane = mask ? mask + (sample * rolls * filters + c) * pixels : nullptr;
    T* dst = rows + r * it.count;
    // (the same rows of the thread's next item, as the kernels' analysis does)
    if (mask_plane != nullptr) channel_fft::prefetch_next_block(mask_plane + it.first, it.count);
    for (int64_t q = 0, p = it.first; q < it.count;) {  // output row by output row
      const int64_t h = p / out_w, x0 = p % out_w, run = std::min(out_w - x0, it.count - q);
      const T* src = plane + h * s[2] + x0 * s[3];
      const T* m = mask_plane ? mask_plane + h * out_w + x0 : nullptr;
      T* d = dst + q;
      // (the unit-stride and the broadcast row vectorize)
      if (s[3] == 1) {
        select_row(src, m, run, d, [](const T* row, int64_t x) { return row[x]; });
      } else if (s[3] == 0) {
        select_row(src, m, run, d, [](const T* row, int64_t) { return row[0]; });
      } else {
        select_row(src, m, run, d, [&](const T* row, int64_t x) { return row[x * s[3]]; });
      }
      q += run;
      p += run;
    }
  }
}

// One thread's buffers: the transforms' scratch, a zero-padded tile of the operand the sums
// read, the sums of a block, and (strided dY only) an analysis item's gathered rows.
template <typename T>
struct ThreadBuffers {
  ThreadBuffers(const Plan<T>& plan, int64_t tile_size, int64_t sums_size, int64_t rows_size = 0)
      : scratch(plan.scratch_size()), tile(tile_size), sums(sums_size), rows(rows_size) {}
  AlignedBuffer<T> scratch, tile, sums, rows;
};

// The taps: the weight's rfft over its channels, / C, as (re, im) pairs [F][kh * kw][K],
// by the channel transform the engine uses for the input (filter f's weight is C rows of
// kh * kw pixels). Not a torch.fft call: on small layers its per-call set-up cost more
// than the convolution, and this keeps every result independent of the thread count.
template <typename T>
AlignedBuffer<T> scaled_taps(const MicroKernels<T>& micro, const Plan<T>& plan, const at::Tensor& weight) {
  const int64_t filters = weight.size(0), kk = weight.size(2) * weight.size(3), freqs = plan.freqs();
  const T scale = T(1.0 / double(plan.n));
  AlignedBuffer<T> taps(filters * kk * 2 * freqs), spectrum(2 * freqs * kk), scratch(plan.scratch_size());
  const T* wp = weight.const_data_ptr<T>();
  for (int64_t f = 0; f < filters; ++f) {
    micro.analyze(plan, wp + f * plan.n * kk, kk, kk, spectrum.get(), kk, scratch.get());
    for (int64_t t = 0; t < kk; ++t) {
      T* pairs = taps.get() + 2 * (f * kk + t) * freqs;
      for (int64_t k = 0; k < freqs; ++k) {
        pairs[2 * k] = spectrum.get()[2 * k * kk + t] * scale;
        pairs[2 * k + 1] = plan.real_frequency(k) ? T(0) : spectrum.get()[(2 * k + 1) * kk + t] * scale;
      }
    }
  }
  return taps;
}

// dK (F, C, kh, kw) from its spectrum acc ((re, im) pairs [F][kh * kw][K]): the inverse
// transform over the channels (irfft, with its 1 / C), by the engine's synthesis.
template <typename T>
void weight_from_spectrum(const MicroKernels<T>& micro, const Plan<T>& plan, const T* acc, const at::Tensor& grad_weight) {
  const int64_t filters = grad_weight.size(0), kk = grad_weight.size(2) * grad_weight.size(3), freqs = plan.freqs();
  const T scale = T(1.0 / double(plan.n));
  AlignedBuffer<T> spectrum(2 * freqs * kk), scratch(plan.scratch_size());
  T* dw = grad_weight.data_ptr<T>();
  for (int64_t f = 0; f < filters; ++f) {
    for (int64_t t = 0; t < kk; ++t) {
      const T* pairs = acc + 2 * (f * kk + t) * freqs;
      for (int64_t k = 0; k < freqs; ++k) {
        spectrum.get()[2 * k * kk + t] = pairs[2 * k] * scale;
        spectrum.get()[(2 * k + 1) * kk + t] = pairs[2 * k + 1] * scale;
      }
    }
    micro.synthesize(plan, spectrum.get(), kk, kk, dw + f * plan.n * kk, kk, T(0), false, false, scratch.get());
  }
}

// dK's spectrum accumulator, zeroed: (re, im) pairs [F][kh * kw][K].
template <typename T>
AlignedBuffer<T> weight_spectrum_sums(const Plan<T>& plan, int64_t filters, const Window2d& w) {
  const int64_t size = filters * w.kernel_h * w.kernel_w * 2 * plan.freqs();
  AlignedBuffer<T> acc(size);
  std::fill(acc.get(), acc.get() + size, T(0));
  return acc;
}

// Real flops of the per-frequency sums of one pass (every pass does the same amount):
// what engine_threads weighs against waking the threads.
int64_t sum_flops(int64_t batch, int64_t filters, int64_t freqs, const Window2d& w) {
  return 8 * batch * filters * freqs * w.out_h * w.out_w * w.kernel_h * w.kernel_w;
}

// The forward's work on one block of output rows [oh0, oh1) of one sample, from its input
// spectrum: every filter's sums over the taps, then the inverse transform over the rolls,
// bias and ReLU, into the roll-major output y_sample (roll r of filter f is output channel
// r * F + f).
template <typename T>
void forward_block(const MicroKernels<T>& micro, const Plan<T>& plan, const Window2d& w, int64_t filters,
                   const T* spectrum, const T* taps, const T* bias, bool relu, int64_t oh0, int64_t oh1,
                   T* y_sample, bool stream, ThreadBuffers<T>& t) {
  const int64_t freqs = plan.freqs(), out_px = w.out_h * w.out_w, count = (oh1 - oh0) * w.out_w;
  micro.forward_rows(w, freqs, plan.even(), filters, spectrum, taps, oh0, oh1, t.tile.get(), t.sums.get());
  for (int64_t f = 0; f < filters; ++f) {
    micro.synthesize(plan, t.sums.get() + f * 2 * freqs * count, count, count, y_sample + f * out_px + oh0 * w.out_w,
                     filters * out_px, bias ? bias[f] : T(0), relu, stream, t.scratch.get());
  }
}

// The analysis items (pixel ranges) of the input that output rows [0, oh1) read.
template <typename T>
int64_t input_items_for_rows(const Window2d& w, int64_t oh1) {
  const int64_t last_row = std::min(w.in_h - 1, input_coord(oh1 - 1, w.kernel_h - 1, w.stride_h, w.pad_h, w.dil_h));
  return ceil_div(std::max<int64_t>(0, last_row + 1) * w.in_w, analysis_pixels<T>());
}

template <typename T>
void forward_typed(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                   const Window2d& w, bool relu, const at::Tensor& output) {
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const MicroKernels<T>& micro = channel_fft::micro_kernels<T>();
  const Plan<T> plan(channels, micro.widest_radix);
  const int64_t freqs = plan.freqs(), spectrum_size = 2 * freqs * in_px;
  const AlignedBuffer<T> tap_pairs = scaled_taps(micro, plan, weight);
  const T* tp = tap_pairs.get();
  const T* x = input.const_data_ptr<T>();
  const T* b = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  T* y = output.data_ptr<T>();
  const bool stream = streams_output(output);

  const int64_t chunk = samples_per_chunk(batch, spectrum_size * int64_t(sizeof(T)));
  const int64_t rows = rows_per_block<T>(w.out_h, filters * 2 * freqs * w.out_w * int64_t(sizeof(T)), chunk, w.out_w);
  const int64_t blocks = ceil_div(w.out_h, rows), block_px = rows * w.out_w;
  const int threads = engine_threads(chunk * blocks, sum_flops(batch, filters, freqs, w));
  const auto buffers = [&] { return ThreadBuffers<T>(plan, channel_fft::tile_size<T>(w, rows), filters * 2 * freqs * block_px); };
  const auto block = [&](const T* spectrum, int64_t sample, int64_t oh0, ThreadBuffers<T>& t) {
    forward_block(micro, plan, w, filters, spectrum, tp, b, relu, oh0, std::min(w.out_h, oh0 + rows),
                  y + sample * channels * filters * out_px, stream, t);
  };
  if (by_samples(batch, threads)) {
    // Sample by sample on each thread, the analysis of each block's input rows just before
    // its synthesis: the spectrum is read while it is still in the thread's caches, and no
    // thread waits for another. The same blocks and analysis items as below: the same bits.
    AlignedBuffer<T> spectra(threads * spectrum_size);
    parallel_with_state(threads, buffers, [&](ThreadBuffers<T>& t) {
      T* spectrum = spectra.get() + omp_get_thread_num() * spectrum_size;
#pragma omp for schedule(dynamic, 1)
      for (int64_t s = 0; s < batch; ++s) {
        for (int64_t bl = 0, item = 0; bl < blocks; ++bl) {
          const int64_t needed = input_items_for_rows<T>(w, std::min(w.out_h, (bl + 1) * rows));
          for (; item < needed; ++item) {
            analyze_input(micro, plan, analysis_item<T>(item, 1, in_px), x + s * channels * in_px, in_px, spectrum,
                          t.scratch.get());
          }
          block(spectrum, s, bl * rows, t);
        }
      }
    });
    return;
  }
  // Two chunks' spectra when several threads share several chunks: a thread done with its
  // share of one chunk's synthesis goes on to the next chunk's analysis (into the other
  // buffer) instead of waiting at a barrier for the others.
  const int64_t in_flight = threads > 1 && batch > chunk ? 2 : 1;
  AlignedBuffer<T> spectra(in_flight * chunk * spectrum_size);
  parallel_with_state(threads, buffers, [&](ThreadBuffers<T>& t) {
    for (int64_t n0 = 0, index = 0; n0 < batch; n0 += chunk, ++index) {
      const int64_t nb = std::min(chunk, batch - n0);
      T* chunk_spectra = spectra.get() + (index % in_flight) * chunk * spectrum_size;
      // Dynamic: the threads done first with the previous chunk's synthesis take more of
      // this analysis. Its barrier also orders chunk index + 1's analysis (into the buffer
      // of chunk index - 1) after every thread's synthesis of chunk index - 1.
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < analysis_items<T>(nb, 1, in_px); ++item) {
        analyze_input(micro, plan, analysis_item<T>(item, 1, in_px), x + n0 * channels * in_px, in_px,
                      chunk_spectra, t.scratch.get());
      }
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t item = 0; item < nb * blocks; ++item) {
        const int64_t s = item / blocks;
        block(chunk_spectra + s * spectrum_size, n0 + s, (item % blocks) * rows, t);
      }
    }
  });
}

// dX of one sample's input rows [h0, h1) from its dY spectrum: the sums over the filters,
// then the inverse transform into dx_sample.
template <typename T>
void input_grad_block(const MicroKernels<T>& micro, const Plan<T>& plan, const Window2d& w, int64_t filters,
                      const T* dy_spectrum, const T* taps, int64_t h0, int64_t h1, T* dx_sample, bool stream,
                      ThreadBuffers<T>& t) {
  const int64_t in_px = w.in_h * w.in_w, count = (h1 - h0) * w.in_w;
  micro.input_grad_rows(w, plan.freqs(), plan.even(), filters, dy_spectrum, taps, h0, h1, t.tile.get(), t.sums.get());
  micro.synthesize(plan, t.sums.get(), count, count, dx_sample + h0 * w.in_w, in_px, T(0), false, stream,
                   t.scratch.get());
}

// dX of a chunk's nb samples from their dY spectra (dy_size apart), one item per (sample,
// block of `rows` input rows). Called inside a parallel region: its threads share the
// items, and go on without a barrier at the end (the caller orders what must follow all of
// them).
template <typename T>
void input_grad_items(const MicroKernels<T>& micro, const Plan<T>& plan, const Window2d& w, int64_t filters,
                      int64_t nb, int64_t rows, const T* dy_spectra, int64_t dy_size, const T* taps, T* dx_chunk,
                      bool stream, ThreadBuffers<T>& t) {
  const int64_t in_px = w.in_h * w.in_w, blocks = ceil_div(w.in_h, rows);
#pragma omp for schedule(dynamic, 1) nowait
  for (int64_t item = 0; item < nb * blocks; ++item) {
    const int64_t s = item / blocks, h0 = (item % blocks) * rows;
    input_grad_block(micro, plan, w, filters, dy_spectra + s * dy_size, taps, h0, std::min(w.in_h, h0 + rows),
                     dx_chunk + s * plan.n * in_px, stream, t);
  }
}

template <typename T>
void backward_input_typed(const at::Tensor& grad_output, const at::Tensor& weight, const Window2d& w,
                          const at::Tensor& grad_input) {
  const int64_t batch = grad_input.size(0), channels = grad_input.size(1), filters = weight.size(0);
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const MicroKernels<T>& micro = channel_fft::micro_kernels<T>();
  const Plan<T> plan(channels, micro.widest_radix);
  const int64_t freqs = plan.freqs(), spectrum_size = filters * 2 * freqs * out_px;
  const AlignedBuffer<T> tap_pairs = scaled_taps(micro, plan, weight);
  const T* tp = tap_pairs.get();
  const T* dy = grad_output.const_data_ptr<T>();
  T* dx = grad_input.data_ptr<T>();
  const bool stream = streams_output(grad_input);

  const int64_t chunk = samples_per_chunk(batch, spectrum_size * int64_t(sizeof(T)));
  const int64_t rows = rows_per_block<T>(w.in_h, 2 * freqs * w.in_w * int64_t(sizeof(T)), chunk, w.in_w);
  const int64_t blocks = ceil_div(w.in_h, rows);
  AlignedBuffer<T> spectra(chunk * spectrum_size);
  const int threads = engine_threads(chunk * blocks, sum_flops(batch, filters, freqs, w));
  const auto buffers = [&] { return ThreadBuffers<T>(plan, channel_fft::tile_size<T>(w, rows), 2 * freqs * rows * w.in_w); };
  parallel_with_state(threads, buffers, [&](ThreadBuffers<T>& t) {
    for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, batch - n0);
      analyze_grad_items(micro, plan, nb, dy + n0 * channels * filters * out_px, filters, out_px, spectra.get(),
                         t.scratch.get());
      input_grad_items(micro, plan, w, filters, nb, rows, spectra.get(), spectrum_size, tp, dx + n0 * channels * in_px,
                       stream, t);
#pragma omp barrier  // before the next chunk's analysis overwrites the spectra
    }
  });
}

// Filters per dK item: as many as share a tile of X's spectrum while each thread still gets
// kItemsPerThread items; where the items are few, a count of them that the threads share
// evenly (C = 16, F = 16 on two threads: 2 groups of 8, 18 items, instead of 9 items of 16
// filters, of which one thread took 5 and the other waited).
constexpr int64_t kItemsPerThread = 4;
constexpr int64_t kManyItemsPerThread = 16;  // enough that the last item's wait is small
int64_t filters_per_group(int64_t filters, int64_t freqs, int64_t threads) {
  int64_t groups = std::clamp<int64_t>(ceil_div(kItemsPerThread * threads, freqs), 1, filters);
  while (groups < filters && (groups * freqs) % threads != 0 && groups * freqs < kManyItemsPerThread * threads) {
    ++groups;
  }
  return ceil_div(filters, groups);
}

// dK's sums over a chunk's nb samples, added into acc ((re, im) pairs [F][kh * kw][K]). One
// item per (frequency, group of filters): the group shares the tile of X's spectrum. Called
// inside a parallel region: its threads share the items. Each sum runs over the samples in
// order, whatever the groups: the result does not depend on the thread count.
template <typename T>
void weight_grad_items(const MicroKernels<T>& micro, const Plan<T>& plan, const Window2d& w, int64_t filters,
                       int64_t nb, const T* x_spectra, int64_t x_size, const T* dy_spectra, int64_t dy_size,
                       T* tile, T* acc) {
  const int64_t kk = w.kernel_h * w.kernel_w, out_px = w.out_h * w.out_w, freqs = plan.freqs();
  const int64_t group = filters_per_group(filters, freqs, omp_get_num_threads());
  const int64_t groups = ceil_div(filters, group);
#pragma omp for schedule(dynamic, 1)
  for (int64_t item = 0; item < groups * freqs; ++item) {
    const int64_t f0 = (item / freqs) * group, k = item % freqs, count = std::min(group, filters - f0);
    for (int64_t s = 0; s < nb; ++s) {
      micro.weight_grad_freq(w, freqs, plan.even(), k, count, x_spectra + s * x_size,
                             dy_spectra + s * dy_size + f0 * 2 * freqs * out_px, 2 * freqs * out_px, tile,
                             acc + 2 * (f0 * kk * freqs + k), 2 * kk * freqs);
    }
  }
}

template <typename T>
void backward_weight_typed(const at::Tensor& grad_output, const at::Tensor& input, const Window2d& w,
                           const at::Tensor& grad_weight) {
  const int64_t batch = input.size(0), channels = input.size(1), filters = grad_weight.size(0);
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const MicroKernels<T>& micro = channel_fft::micro_kernels<T>();
  const Plan<T> plan(channels, micro.widest_radix);
  const int64_t freqs = plan.freqs();
  const int64_t x_size = 2 * freqs * in_px, dy_size = filters * 2 * freqs * out_px;
  const T* x = input.const_data_ptr<T>();
  const T* dy = grad_output.const_data_ptr<T>();
  AlignedBuffer<T> sums = weight_spectrum_sums(plan, filters, w);
  T* acc = sums.get();

  const int64_t chunk = samples_per_chunk(batch, (x_size + dy_size) * int64_t(sizeof(T)));
  AlignedBuffer<T> x_spectra(chunk * x_size), dy_spectra(chunk * dy_size);
  const int threads = engine_threads(filters * freqs, sum_flops(batch, filters, freqs, w));
  const auto buffers = [&] { return ThreadBuffers<T>(plan, channel_fft::tile_size<T>(w, 1), 0); };
  parallel_with_state(threads, buffers, [&](ThreadBuffers<T>& t) {
    for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
      const int64_t nb = std::min(chunk, batch - n0);
      analyze_input_items(micro, plan, nb, x + n0 * channels * in_px, in_px, x_spectra.get(), t.scratch.get());
      analyze_grad_items(micro, plan, nb, dy + n0 * channels * filters * out_px, filters, out_px, dy_spectra.get(),
                         t.scratch.get());
      weight_grad_items(micro, plan, w, filters, nb, x_spectra.get(), x_size, dy_spectra.get(), dy_size,
                        t.tile.get(), acc);
    }
  });
  weight_from_spectrum(micro, plan, acc, grad_weight);
}

// One analysis item of the combined backward's dY, of the samples from n0 on: read in
// place whatever its strides (gather_grad_rows), zeroed where the mask (the output, laid
// out as a contiguous dY; null: none) is <= 0.
template <typename T>
void analyze_grad_any(const MicroKernels<T>& micro, const Plan<T>& plan, const at::Tensor& grad_output,
                      const T* mask, int64_t n0, const AnalysisItem& it, int64_t filters, const Window2d& w,
                      T* spectra, ThreadBuffers<T>& t) {
  const int64_t out_px = w.out_h * w.out_w, offset = n0 * plan.n * filters * out_px;
  if (grad_output.is_contiguous()) {
    analyze_grad(micro, plan, it, grad_output.const_data_ptr<T>() + offset, mask ? mask + offset : nullptr, filters,
                 out_px, spectra, t.scratch.get());
  } else {
    gather_grad_rows(grad_output, mask, n0 + it.sample, it, plan.n, filters, w.out_w, t.rows.get());
    micro.analyze(plan, t.rows.get(), it.count, it.count, grad_spectrum(plan, it, filters, out_px, spectra), out_px,
                  t.scratch.get());
  }
}

// The bias gradient's sum over one sample of filter f's dY: frequency 0 of the transform
// over the rolls is their sum, summed over the pixels in order (in double).
template <typename T>
double bias_sum(const T* dy_spectrum, int64_t f, int64_t freqs, int64_t out_px) {
  const T* dc = dy_spectrum + f * 2 * freqs * out_px;
  double sum = 0;
  for (int64_t p = 0; p < out_px; ++p) sum += double(dc[p]);
  return sum;
}

// The analysis ranges of dY (analysis_pixels each) that dX's input rows [0, h1) read.
template <typename T>
int64_t grad_ranges_for_rows(const Window2d& w, int64_t h1) {
  const int64_t last_row = std::min(w.out_h - 1, (h1 - 1 + w.pad_h) / w.stride_h);
  return ceil_div((last_row + 1) * w.out_w, analysis_pixels<T>());
}

// Samples whose dK and bias contributions the by-sample backward keeps before adding them
// up in order: about this many bytes of them, and at least one per thread.
constexpr int64_t kContributionBytes = int64_t(4) << 20;

// What the combined backward computes, and where.
template <typename T>
struct BackwardJob {
  const at::Tensor& grad_output;
  const T* mask;  // the output (ReLU's derivative), or null
  const T* x;
  const T* taps;  // dX's (null without dX)
  T* dx;          // null without dX
  bool stream_dx;  // dX by streaming stores (streams_output)
  T* acc;         // dK's spectrum sums ((re, im) pairs [F][kh * kw][K]), null without dK
  double* bias_sums;  // null without the bias gradient
};

// The combined backward sample by sample on each thread (as the forward's by_samples
// path): per sample, dY's spectra range by range, each block of dX right after the ranges
// it reads, then the bias's sums and dK's over the whole sample, kept per sample and added
// up in sample order after each round of samples: the bits of the chunked path's.
template <typename T, typename MakeBuffers>
void backward_by_samples(const MicroKernels<T>& micro, const Plan<T>& plan, const Window2d& w, int64_t batch,
                         int64_t filters, int64_t rows, int threads, const BackwardJob<T>& job,
                         const MakeBuffers& buffers) {
  const int64_t channels = plan.n, freqs = plan.freqs(), in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const int64_t kk = w.kernel_h * w.kernel_w;
  const int64_t x_size = job.acc ? 2 * freqs * in_px : 0, dy_size = filters * 2 * freqs * out_px;
  const int64_t acc_size = job.acc ? filters * kk * 2 * freqs : 0, bias_size = job.bias_sums ? filters : 0;
  const int64_t ranges = ceil_div(out_px, analysis_pixels<T>());
  const int64_t round = std::clamp<int64_t>(kContributionBytes / std::max<int64_t>(1, acc_size * int64_t(sizeof(T))),
                                            threads, std::max<int64_t>(1, batch));
  AlignedBuffer<T> spectra(threads * (x_size + dy_size)), weight_parts(round * acc_size);
  std::vector<double> bias_parts(round * bias_size);
  parallel_with_state(threads, buffers, [&](ThreadBuffers<T>& t) {
    T* x_spectrum = spectra.get() + omp_get_thread_num() * (x_size + dy_size);
    T* dy_spectrum = x_spectrum + x_size;
    for (int64_t s0 = 0; s0 < batch; s0 += round) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t s = s0; s < std::min(batch, s0 + round); ++s) {
        int64_t analyzed = 0;
        // (plane by plane: each plane's ranges in a row, as the analysis prefetches them)
        const auto analyze_ranges = [&](int64_t upto) {
          for (int64_t f = 0; f < filters; ++f) {
            for (int64_t range = analyzed; range < upto; ++range) {
              const int64_t first = range * analysis_pixels<T>();
              const AnalysisItem it{0, f, first, std::min(analysis_pixels<T>(), out_px - first)};
              analyze_grad_any(micro, plan, job.grad_output, job.mask, s, it, filters, w, dy_spectrum, t);
            }
          }
          analyzed = std::max(analyzed, upto);
        };
        if (job.dx != nullptr) {
          for (int64_t h0 = 0; h0 < w.in_h; h0 += rows) {
            const int64_t h1 = std::min(w.in_h, h0 + rows);
            analyze_ranges(grad_ranges_for_rows<T>(w, h1));
            input_grad_block(micro, plan, w, filters, dy_spectrum, job.taps, h0, h1, job.dx + s * channels * in_px,
                             job.stream_dx, t);
          }
        }
        analyze_ranges(ranges);
        for (int64_t f = 0; f < bias_size; ++f) bias_parts[(s - s0) * filters + f] = bias_sum(dy_spectrum, f, freqs, out_px);
        if (job.acc != nullptr) {
          micro.analyze(plan, job.x + s * channels * in_px, in_px, in_px, x_spectrum, in_px, t.scratch.get());
          T* part = weight_parts.get() + (s - s0) * acc_size;
          std::fill(part, part + acc_size, T(0));
          for (int64_t k = 0; k < freqs; ++k) {
            micro.weight_grad_freq(w, freqs, plan.even(), k, filters, x_spectrum, dy_spectrum, 2 * freqs * out_px,
                                   t.tile.get(), part + 2 * k, 2 * kk * freqs);
          }
        }
      }
      const int64_t ns = std::min(round, batch - s0);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < acc_size; ++i) {
        for (int64_t s = 0; s < ns; ++s) job.acc[i] += weight_parts.get()[s * acc_size + i];
      }
#pragma omp single
      for (int64_t f = 0; f < bias_size; ++f) {
        for (int64_t s = 0; s < ns; ++s) job.bias_sums[f] += bias_parts[s * filters + f];
      }
    }
  });
}

// The combined backward (RollFftEngine::backward): per chunk, one analysis phase (the
// input's spectra when dK is wanted, the masked dY's always), the bias gradient from dY's
// spectra at frequency 0 (the sums over the rolls), then dX's synthesis and dK's sums, as in
// the separate passes (the same chunks, blocks and orders: bitwise the same dX and dK).
// grad_output may have any strides (read in place, gather_grad_rows); output is contiguous.
// Sample by sample on each thread where the batch allows (backward_by_samples).
template <typename T>
void backward_typed(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                    const at::Tensor& weight, const Window2d& w, const at::Tensor& grad_input,
                    const at::Tensor& grad_weight, const at::Tensor& grad_bias) {
  const bool want_dx = grad_input.defined(), want_dk = grad_weight.defined(), want_db = grad_bias.defined();
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const MicroKernels<T>& micro = channel_fft::micro_kernels<T>();
  const Plan<T> plan(channels, micro.widest_radix);
  const int64_t freqs = plan.freqs();
  const int64_t x_size = want_dk ? 2 * freqs * in_px : 0, dy_size = filters * 2 * freqs * out_px;
  const AlignedBuffer<T> tap_pairs = want_dx ? scaled_taps(micro, plan, weight) : AlignedBuffer<T>(0);
  AlignedBuffer<T> sums = weight_spectrum_sums(plan, want_dk ? filters : 0, w);
  std::vector<double> bias_sums(want_db ? filters : 0, 0.0);
  const BackwardJob<T> job{grad_output,
                           output.defined() ? output.const_data_ptr<T>() : nullptr,
                           input.const_data_ptr<T>(),
                           tap_pairs.get(),
                           want_dx ? grad_input.data_ptr<T>() : nullptr,
                           want_dx && streams_output(grad_input),
                           want_dk ? sums.get() : nullptr,
                           want_db ? bias_sums.data() : nullptr};

  // dK's chunks when dK is wanted (so that its sums run in the separate pass's order), dX's otherwise.
  const int64_t chunk = samples_per_chunk(batch, (x_size + dy_size) * int64_t(sizeof(T)));
  const int64_t rows = rows_per_block<T>(w.in_h, 2 * freqs * w.in_w * int64_t(sizeof(T)), chunk, w.in_w);
  const int64_t blocks = ceil_div(w.in_h, rows);
  const int64_t passes = int64_t(want_dx) + int64_t(want_dk);
  const int threads = engine_threads(std::max(chunk * blocks, filters * freqs),
                                     std::max<int64_t>(1, passes) * sum_flops(batch, filters, freqs, w));
  const auto buffers = [&] {
    return ThreadBuffers<T>(plan, channel_fft::tile_size<T>(w, rows), want_dx ? 2 * freqs * rows * w.in_w : 0,
                            grad_output.is_contiguous() ? 0 : channels * analysis_pixels<T>());
  };
  if (by_samples(batch, threads)) {
    backward_by_samples(micro, plan, w, batch, filters, rows, threads, job, buffers);
  } else {
    AlignedBuffer<T> x_spectra(chunk * x_size), dy_spectra(chunk * dy_size);
    parallel_with_state(threads, buffers, [&](ThreadBuffers<T>& t) {
      for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
        const int64_t nb = std::min(chunk, batch - n0);
        if (want_dk) analyze_input_items(micro, plan, nb, job.x + n0 * channels * in_px, in_px, x_spectra.get(), t.scratch.get());
#pragma omp for schedule(static)
        for (int64_t item = 0; item < analysis_items<T>(nb, filters, out_px); ++item) {
          analyze_grad_any(micro, plan, grad_output, job.mask, n0, analysis_item<T>(item, filters, out_px), filters, w,
                           dy_spectra.get(), t);
        }
        // The bias and dX items go on without a barrier (a thread done with its share takes
        // more of the next loop's items): they only read the spectra. dK's loop closes the
        // chunk with one (without dK, the barrier below).
        if (want_db) {
#pragma omp for schedule(static) nowait
          for (int64_t f = 0; f < filters; ++f) {
            for (int64_t s = 0; s < nb; ++s) bias_sums[f] += bias_sum(dy_spectra.get() + s * dy_size, f, freqs, out_px);
          }
        }
        if (want_dx) {
          input_grad_items(micro, plan, w, filters, nb, rows, dy_spectra.get(), dy_size, job.taps,
                           job.dx + n0 * channels * in_px, job.stream_dx, t);
        }
        if (want_dk) {
          weight_grad_items(micro, plan, w, filters, nb, x_spectra.get(), x_size, dy_spectra.get(), dy_size,
                            t.tile.get(), job.acc);
        } else {
#pragma omp barrier  // before the next chunk's analysis overwrites the spectra
        }
      }
    });
  }
  if (want_dk) weight_from_spectrum(micro, plan, job.acc, grad_weight);
  if (want_db) {
    T* db = grad_bias.data_ptr<T>();
    for (int64_t f = 0; f < filters; ++f) db[f] = T(bias_sums[f]);
  }
}

bool fft_engine_supports(at::ScalarType dtype) { return dtype == at::kFloat || dtype == at::kDouble; }

bool fft_engine_fits(const Window2d& window, at::ScalarType dtype) {
  return dtype == at::kDouble ? channel_fft::fits_tiles<double>(window) : channel_fft::fits_tiles<float>(window);
}

void fft_engine_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                        const Window2d& window, bool relu, const at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rollconv_roll_fft_forward", [&] {
    forward_typed<scalar_t>(input, weight, bias, window, relu, output);
  });
}

void fft_engine_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                               const Window2d& window, const at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "rollconv_roll_fft_backward_input", [&] {
    backward_input_typed<scalar_t>(grad_output, weight, window, grad_input);
  });
}

void fft_engine_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                const Window2d& window, const at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rollconv_roll_fft_backward_weight", [&] {
    backward_weight_typed<scalar_t>(grad_output, input, window, grad_weight);
  });
}

void fft_engine_backward(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                         const at::Tensor& weight, const Window2d& window, const at::Tensor& grad_input,
                         const at::Tensor& grad_weight, const at::Tensor& grad_bias) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rollconv_roll_fft_backward", [&] {
    backward_typed<scalar_t>(grad_output, output, input, weight, window, grad_input, grad_weight, grad_bias);
  });
}

}  // namespace

const RollFftEngine& cpu_roll_fft_engine() {
  static const RollFftEngine engine{fft_engine_supports,        fft_engine_fits,           fft_engine_forward,
                                    fft_engine_backward_input,  fft_engine_backward_weight, fft_engine_backward};
  return engine;
}

}  // namespace rollconv
