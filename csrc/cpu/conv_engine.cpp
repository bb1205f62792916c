// The CPU convolution engine: the GEMM engine of cpu/gemm fed straight from the image, so
// that no (C*kh*kw x H_out*W_out) column matrix is ever built. Per call the extra memory is
// the packed weights plus, per thread, a panel or scratch of about kPanelBytes and the
// padded copies of the samples in use (PaddedImage, at most 8 MiB each: one in the forward,
// those of one dK chunk of ~1024 positions), whatever the batch size.
//
//   forward:  per (sample, block of output positions), every GEMM block (group, or band of
//             rolls) multiplies its packed weight rows with B, bias and ReLU applied in the
//             micro-kernel's write-back. At stride 1, B is read in place: its rows are
//             windows of the sample's zero-padded copy (PaddedImage), the results come over
//             padded-width positions and their pixels are copied out. Otherwise (strides,
//             1x1, large images) B panels are packed from the image (im2col), a roll window
//             that passes the last channel wrapping to the first as a second K segment.
//   dX:       (stride 1 runs the forward with the flipped weight instead: common/dx_by_forward.cpp)
//             per (sample, range of input channels): B = dY panel, A = W^T rows of those
//             channels, the product (a few column rows) is added into the input planes at
//             once (col2im of a tile). Each thread owns whole planes: no races, fixed order.
//   dK:       dW = dY * im2col(x)^T by the dot-product micro-kernel (both factors run along the
//             pixels, so nothing is transposed): A = dY rows, B = im2col rows (windows of
//             the padded copy at stride 1, else copied lines), over chunks of positions that
//             run across samples. Each thread owns a group of samples with its own
//             accumulator (summed in a fixed order afterwards) and, when the samples are
//             fewer than the threads, a range of dW's columns.
// Deterministic: the same inputs and thread count give bitwise the same result.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/conv_engine.h"
#include "common/device_primitives.h"
#include "cpu/blocking.h"
#include "cpu/gemm/gemm.h"
#include "cpu/im2col_span.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/streaming_store.h"

namespace rollconv {
namespace {

using gemm::AlignedBuffer;
using gemm::Epilogue;
using gemm::KSegment;
using gemm::MicroKernel;
using gemm::round_up;
using cpu::kDotLinesBytes;
using cpu::kPanelBytes;

// The row window of the column matrix a block reads, as K segments of the packed image
// columns (which hold only the real rows, channel x tap): a rolling window that runs past
// the last channel continues at the first.
int block_segments(const GemmBlock& blk, int64_t real_rows, KSegment* segments) {
  const int64_t first = std::min(blk.inner, real_rows - blk.col_row);
  segments[0] = KSegment{0, blk.col_row, first};
  if (first == blk.inner) return 1;
  segments[1] = KSegment{first, 0, blk.inner - first};
  return 2;
}

// Every block's weight rows packed once per call, as A strips.
template <typename T>
struct PackedBlocks {
  AlignedBuffer<T> data;
  std::vector<int64_t> offsets;

  // transposed = false: A = W[blk rows, 0:inner]; true: A = that block's W^T (inner x rows).
  PackedBlocks(const MicroKernel<T>& uk, const T* weight, int64_t weight_cols, const BlockPlan& plan,
               bool transposed)
      : data(total(uk, plan, transposed)) {
    struct Strip {
      const GemmBlock* blk;
      int64_t row, offset;  // first row of A, and where its strip goes
    };
    std::vector<Strip> strips;
    int64_t offset = 0;
    for (const GemmBlock& blk : plan.blocks) {
      offsets.push_back(offset);
      const int64_t rows = transposed ? blk.inner : blk.rows, depth = transposed ? blk.rows : blk.inner;
      for (int64_t row = 0; row < rows; row += uk.mr) strips.push_back(Strip{&blk, row, offset + row * depth});
      offset += size(uk, blk, transposed);
    }
    // Strip by strip in parallel: the weights are MBs at 256 channels (3x3), too much to
    // pack on one thread while the others wait.
    const int64_t count = int64_t(strips.size());
    const int threads = engine_threads(count, 16 * offset);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t s = 0; s < count; ++s) {
      const GemmBlock& blk = *strips[s].blk;
      const T* w = weight + blk.weight_row * weight_cols;
      T* dst = data.get() + strips[s].offset;
      if (transposed) {  // A = W^T: rows of A are columns of W
        gemm::pack_a(uk, w + strips[s].row, 1, weight_cols, std::min<int64_t>(uk.mr, blk.inner - strips[s].row),
                     blk.rows, dst);
      } else {
        gemm::pack_a(uk, w + strips[s].row * weight_cols, weight_cols, 1,
                     std::min<int64_t>(uk.mr, blk.rows - strips[s].row), blk.inner, dst);
      }
    }
  }
  const T* operator[](size_t b) const { return data.get() + offsets[b]; }

  static int64_t size(const MicroKernel<T>& uk, const GemmBlock& blk, bool transposed) {
    return transposed ? round_up(blk.inner, uk.mr) * blk.rows : round_up(blk.rows, uk.mr) * blk.inner;
  }
  static int64_t total(const MicroKernel<T>& uk, const BlockPlan& plan, bool transposed) {
    int64_t sum = 0;
    for (const GemmBlock& blk : plan.blocks) sum += size(uk, blk, transposed);
    return sum;
  }
};

// B panels of one sample's image columns: rows (channel, tap) for every real channel,
// columns = pixels [first, first + count), as strips [strip][row][NR] (im2col fused into
// the packing). The hot loop of the forward pass, so the geometry is hoisted: per strip,
// the output lines it crosses; per (channel, tap row, line), one input row serves every
// tap column.
template <typename T>
void pack_image_columns(const MicroKernel<T>& uk, const T* image, const ColumnLayout& L,
                        int64_t first, int64_t count, T* dst) {
  const Window2d& w = L.win;
  const int64_t kw = w.kernel_w, kk = w.kernel_h * kw, rows = L.channels * kk;
  const int64_t plane = w.in_h * w.in_w, nr = uk.nr, sw = w.stride_w;
  struct TapColumn {
    int64_t lo, hi, x0;  // valid output columns [lo, hi); input column = ow * sw + x0
  };
  struct Line {
    int64_t oh, a, b, off;  // output line oh, columns [a, b), at strip column off
  };
  std::vector<TapColumn> taps(kw);
  for (int64_t j = 0; j < kw; ++j) {
    valid_outputs(w.in_w, j, sw, w.pad_w, w.dil_w, w.out_w, &taps[j].lo, &taps[j].hi);
    taps[j].x0 = input_coord(0, j, sw, w.pad_w, w.dil_w);
  }
  std::vector<Line> lines;
  for (int64_t s = 0; s * nr < count; ++s) {
    const int64_t cols = std::min(nr, count - s * nr);
    T* strip = dst + s * nr * rows;
    lines.clear();
    for_each_output_line(w, first + s * nr, cols, [&](int64_t oh, int64_t a, int64_t b, int64_t off) {
      lines.push_back(Line{oh, a, b, off});
    });
    for (int64_t c = 0; c < L.channels; ++c) {
      for (int64_t i = 0; i < w.kernel_h; ++i) {
        T* row0 = strip + (c * kk + i * kw) * nr;  // row (c, i, j) is row0 + j * nr
        for (const Line& ln : lines) {
          const int64_t h = input_coord(ln.oh, i, w.stride_h, w.pad_h, w.dil_h);
          const T* src = h >= 0 && h < w.in_h ? image + c * plane + h * w.in_w : nullptr;
          for (int64_t j = 0; j < kw; ++j) {
            im2col_line(src ? src + taps[j].x0 : nullptr, sw, taps[j].lo, taps[j].hi, ln.a, ln.b,
                        row0 + j * nr + ln.off - ln.a);
          }
        }
      }
    }
    if (cols < nr) {
      for (int64_t r = 0; r < rows; ++r) std::fill(strip + r * nr + cols, strip + (r + 1) * nr, T(0));
    }
  }
}

// Stride 1, the image read in place: the im2col row of (channel c, tap i, j) over the
// output pixels, taken at padded-width positions q = oh * pitch + ow (pitch = in_w +
// 2 * pad_w), is the window of the sample's zero-padded image at offset(c, i, j) =
// c * c_size + i * dil_h * pitch + j * dil_w. Positions with ow >= out_w are no pixel (the
// window there holds the next line's values): the forward drops their results, dK gives
// them zero dY. This replaces the im2col copies (C * kh * kw values per pixel) by one copy of
// the image (C values per pixel) at the cost of the (pitch - out_w) / pitch extra positions.
struct PaddedImage {
  int64_t pitch, c_size, size;  // size: per sample, with kSlack past the last window
  bool usable;                  // stride 1, more than one tap, the copy within kImageBytes
  static constexpr int64_t kImageBytes = int64_t(8) << 20;
  // Elements read past the last channel's windows: a strip (NR <= 48) or a lane rounding.
  static constexpr int64_t kSlack = 64;

  PaddedImage(const Window2d& w, int64_t channels, int64_t element_bytes)
      : pitch(w.in_w + 2 * w.pad_w),
        c_size((w.in_h + 2 * w.pad_h) * pitch),
        // At stride 1, out_h + (kh - 1) * dil_h = in_h + 2 * pad_h: the last window of a
        // channel ends (kw - 1) * dil_w past out_h lines of the next.
        size(round_up(channels * c_size + (w.kernel_w - 1) * w.dil_w + kSlack, 16)) {
    usable = w.stride_h == 1 && w.stride_w == 1 && w.kernel_h * w.kernel_w > 1 &&
             channels * c_size * element_bytes <= kImageBytes;
  }

  // Every block's column rows as window offsets: [block][k] for k < blk.inner (a rolling
  // window's wrap to the first channel is in the offsets).
  std::vector<std::vector<int64_t>> block_offsets(const ColumnLayout& L, const BlockPlan& plan) const {
    std::vector<std::vector<int64_t>> offsets;
    for (const GemmBlock& blk : plan.blocks) {
      offsets.emplace_back(blk.inner);
      for (int64_t k = 0; k < blk.inner; ++k) offsets.back()[k] = offset(L.win, column_row_source(L, blk.col_row + k));
    }
    return offsets;
  }

  // Walks positions [q0, q1) line by line: run(q, end, pixel, valid) for each piece [q, end)
  // within one line, whose first `valid` positions are the output pixels from `pixel` on
  // (the rest, past out_w or past the last line, are no pixel).
  template <typename Run>
  void for_each_run(const Window2d& w, int64_t q0, int64_t q1, const Run& run) const {
    for (int64_t q = q0; q < q1;) {
      const int64_t oh = q / pitch, ow = q - oh * pitch, end = std::min(q1, q + pitch - ow);
      const int64_t valid = oh < w.out_h ? std::clamp<int64_t>(w.out_w - ow, 0, end - q) : 0;
      run(q, end, oh * w.out_w + ow, valid);
      q = end;
    }
  }

  int64_t offset(const Window2d& w, const RowSource& src) const {
    return src.channel * c_size + src.tap_h * w.dil_h * pitch + src.tap_w * w.dil_w;
  }

  template <typename T>
  void copy(const T* image, const Window2d& w, int64_t channels, T* dst) const {
    std::fill(dst, dst + size, T(0));
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t h = 0; h < w.in_h; ++h) {
        copy_span(dst + c * c_size + (h + w.pad_h) * pitch + w.pad_w, image + (c * w.in_h + h) * w.in_w, w.in_w);
      }
    }
  }
};

template <typename T>
void forward_typed(const at::Tensor& input, const at::Tensor& weight_mat, const at::Tensor& bias_rows,
                   const ColumnLayout& L, const BlockPlan& plan, bool relu, const at::Tensor& output) {
  const MicroKernel<T>& uk = gemm::micro_kernel<T>(cpu::active_isa());
  const Window2d& w = L.win;
  const int64_t batch = input.size(0), px = w.out_h * w.out_w, plane = w.in_h * w.in_w;
  const int64_t real_rows = L.channels * w.kernel_h * w.kernel_w, cout = plan.out_channels;
  const T* x = input.const_data_ptr<T>();
  const T* bias = bias_rows.defined() ? bias_rows.const_data_ptr<T>() : nullptr;
  T* y = output.data_ptr<T>();
  const PackedBlocks<T> weights(uk, weight_mat.const_data_ptr<T>(), plan.weight_cols, plan, false);

  // Stride 1: B is read in place from the padded image (PaddedImage), each block's rows
  // at the offsets of its column rows, into a scratch C over padded-width positions whose
  // pixels are then copied out. Otherwise (and for 1x1 kernels or large images) B is
  // packed from the image (im2col).
  const PaddedImage padded_image(w, L.channels, int64_t(sizeof(T)));
  const bool windows = padded_image.usable;
  const std::vector<std::vector<int64_t>> offsets =
      windows ? padded_image.block_offsets(L, plan) : std::vector<std::vector<int64_t>>();
  // Items: blocks of B strips (positions), as many as fit the budget of the packed panel (or
  // of the scratch C: a quarter of it, as the padded image shares L2 with it), fewer when
  // the batch alone does not give every thread two.
  const int64_t positions = windows ? (w.out_h - 1) * padded_image.pitch + w.out_w : px;
  const int64_t strips = ceil_div(positions, uk.nr);
  const int64_t strip_rows = windows ? cout : real_rows, budget = windows ? kPanelBytes / 4 : kPanelBytes;
  int64_t per_item = std::clamp<int64_t>(budget / (strip_rows * uk.nr * int64_t(sizeof(T))), 1, strips);
  while (per_item > 1 && batch * ceil_div(strips, per_item) < 2 * int64_t(at::get_num_threads())) {
    per_item = ceil_div(per_item, 2);
  }
  const int64_t per_sample = ceil_div(strips, per_item), items = batch * per_sample;
  const int threads = engine_threads(items, 2 * batch * px * cout * real_rows);
  struct Buffers {
    AlignedBuffer<T> scratch, image;
  };
  const auto buffers = [&] {
    return Buffers{AlignedBuffer<T>(per_item * uk.nr * strip_rows), AlignedBuffer<T>(windows ? padded_image.size : 1)};
  };
  parallel_with_state(threads, buffers, [&](Buffers& t) {
    AlignedBuffer<T>& scratch = t.scratch;
    AlignedBuffer<T>& image = t.image;
    int64_t image_sample = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / per_sample, first = (item % per_sample) * per_item * uk.nr;
      const int64_t count = std::min(per_item * uk.nr, positions - first);
      if (windows) {
        if (image_sample != n) padded_image.copy(x + n * L.channels * plane, w, L.channels, image.get());
        image_sample = n;
        for (size_t b = 0; b < plan.blocks.size(); ++b) {
          const GemmBlock& blk = plan.blocks[b];
          const KSegment segment{0, 0, blk.inner};
          gemm::multiply_windows(uk, blk.rows, count, &segment, 1, weights[b], blk.inner,
                                 image.get() + first, offsets[b].data(), scratch.get() + blk.out_row * count, count,
                                 Epilogue<T>{T(1), T(0), bias ? bias + blk.out_row : nullptr, relu});
        }
        // The pixels among the positions, into the output planes.
        padded_image.for_each_run(w, first, first + count, [&](int64_t q, int64_t, int64_t pixel, int64_t valid) {
          for (int64_t r = 0; valid > 0 && r < cout; ++r) {
            stream_span(y + (n * cout + r) * px + pixel, scratch.get() + r * count + q - first, valid);
          }
        });
        continue;
      }
      T* columns = scratch.get();
      pack_image_columns(uk, x + n * L.channels * plane, L, first, count, columns);
      for (size_t b = 0; b < plan.blocks.size(); ++b) {
        const GemmBlock& blk = plan.blocks[b];
        KSegment segments[2];
        const int nseg = block_segments(blk, real_rows, segments);
        gemm::multiply_packed(uk, blk.rows, count, segments, nseg, weights[b], blk.inner, columns,
                              real_rows, y + (n * cout + blk.out_row) * px + first, px,
                              Epilogue<T>{T(1), T(0), bias ? bias + blk.out_row : nullptr, relu});
      }
    }
    streaming_store_fence();
  });
}

template <typename T>
void backward_input_typed(const at::Tensor& grad_output, const at::Tensor& weight_mat,
                          const ColumnLayout& L, const BlockPlan& plan, const at::Tensor& grad_input) {
  const MicroKernel<T>& uk = gemm::micro_kernel<T>(cpu::active_isa());
  const Window2d& w = L.win;
  const int64_t batch = grad_output.size(0), px = w.out_h * w.out_w, plane = w.in_h * w.in_w;
  const int64_t kk = w.kernel_h * w.kernel_w, channels = L.channels, cout = plan.out_channels;
  const T* dy = grad_output.const_data_ptr<T>();
  T* dx = grad_input.data_ptr<T>();
  const PackedBlocks<T> weights(uk, weight_mat.const_data_ptr<T>(), plan.weight_cols, plan, true);

  // Items: (sample, range of input channels); ranges split the channels when the batch
  // alone does not give every thread two items.
  const int64_t threads_wanted = at::get_num_threads();
  const int64_t ranges = std::clamp<int64_t>(ceil_div(2 * threads_wanted, std::max<int64_t>(1, batch)), 1, channels);
  const int64_t per_range = ceil_div(channels, ranges);
  const int64_t tile_rows = per_range * kk + uk.mr;  // a range's column rows, from a strip start
  const int64_t pixels = std::clamp<int64_t>(
      kPanelBytes / ((tile_rows + cout) * int64_t(sizeof(T))) / uk.nr * uk.nr, uk.nr, round_up(px, uk.nr));
  const int64_t items = batch * ranges;
  const int threads = engine_threads(items, 2 * batch * px * cout * plan.weight_cols);
  struct Buffers {
    AlignedBuffer<T> panel, tile;
  };
  const auto buffers = [&] { return Buffers{AlignedBuffer<T>(pixels * cout), AlignedBuffer<T>(tile_rows * pixels)}; };
  parallel_with_state(threads, buffers, [&](Buffers& t) {
    AlignedBuffer<T>& panel = t.panel;
    AlignedBuffer<T>& tile = t.tile;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / ranges, c0 = (item % ranges) * per_range;
      const int64_t c1 = std::min(channels, c0 + per_range);
      if (c0 >= c1) continue;
      T* planes = dx + n * channels * plane;
      std::fill(planes + c0 * plane, planes + c1 * plane, T(0));
      for (int64_t first = 0; first < px; first += pixels) {
        const int64_t count = std::min(pixels, px - first);
        gemm::pack_b(uk, dy + n * cout * px + first, px, 1, cout, count, panel.get());
        for (size_t b = 0; b < plan.blocks.size(); ++b) {
          const GemmBlock& blk = plan.blocks[b];
          const int64_t v_lo = blk.col_row / kk, v_hi = (blk.col_row + blk.inner) / kk;
          // Virtual channels of this block that read channels [c0, c1): v or v - C in range.
          for (int64_t base = 0; base < L.col_channels; base += channels) {
            const int64_t va = std::max(v_lo, c0 + base), vb = std::min(v_hi, c1 + base);
            if (va >= vb) continue;
            const int64_t ra = va * kk - blk.col_row, rb = vb * kk - blk.col_row;
            const int64_t start = ra - ra % uk.mr;  // A strips start at multiples of MR
            const KSegment all{0, blk.out_row, blk.rows};
            gemm::multiply_packed(uk, rb - start, count, &all, 1, weights[b] + start * blk.rows,
                                  blk.rows, panel.get(), cout, tile.get(), count, Epilogue<T>{});
            for (int64_t r = ra; r < rb; ++r) {
              const int64_t row = blk.col_row + r, v = row / kk, tap = row - v * kk;
              col2im_span_add(tile.get() + (r - start) * count, w, tap / w.kernel_w, tap % w.kernel_w,
                              first, count, planes + (v % channels) * plane);
            }
          }
        }
      }
    }
  });
}

// dK's depth, per sample: the output pixels, as `depth` positions: padded-width positions
// (PaddedImage) when the image is read in place, with dY copied into the same layout with
// zeros in the positions that are no pixel and up to a whole number of lanes; otherwise
// the plain pixels, with the im2col rows copied (lines). (dY's zeros at the extra positions
// meet neighbouring pixels: an infinite or NaN pixel there gives NaN where PyTorch's dW is
// finite. Only non-finite inputs can tell the difference.)
struct DepthLayout {
  const PaddedImage& image;
  bool windows;   // B rows are windows of the padded image
  int64_t depth;  // positions per sample (windows: a lanes multiple)

  DepthLayout(const Window2d& w, const PaddedImage& padded, int64_t lanes)
      : image(padded),
        windows(padded.usable),
        depth(windows ? round_up(w.out_h * padded.pitch, lanes) : w.out_h * w.out_w) {}
};

// dst[q - q0] for depth positions [q0, q1) of one dY plane: the pixel at q, or zero in the
// positions of DepthLayout::windows that are no pixel.
template <typename T>
void copy_grad_depth(const T* plane, const Window2d& w, const DepthLayout& d, int64_t q0, int64_t q1, T* dst) {
  if (!d.windows) {
    copy_span(dst, plane + q0, q1 - q0);
    return;
  }
  d.image.for_each_run(w, q0, q1, [&](int64_t q, int64_t end, int64_t pixel, int64_t valid) {
    copy_span(dst + q - q0, plane + pixel, valid);
    std::fill(dst + q - q0 + valid, dst + end - q0, T(0));
  });
}

// A stretch of a chunk of dK's depth: positions [first, first + count) of a sample, at
// chunk offset `offset` (windows: in the sample's padded image in P slot `slot`).
struct DepthStretch {
  int64_t sample, first, count, offset, slot;
};

// dK's depth cut into chunks: consecutive stretches of positions that run across the
// samples [sample, end) of one group, at most `chunk_depth` positions per chunk.
struct ChunkWalk {
  int64_t sample, end, position = 0;

  // The next chunk's stretches into `chunk`; returns its length in positions (0: no more).
  int64_t next(int64_t depth, int64_t chunk_depth, std::vector<DepthStretch>& chunk) {
    chunk.clear();
    int64_t len = 0;
    while (sample < end && len < chunk_depth) {
      const int64_t count = std::min(depth - position, chunk_depth - len);
      chunk.push_back(DepthStretch{sample, position, count, len, int64_t(chunk.size())});
      len += count;
      position += count;
      if (position == depth) ++sample, position = 0;
    }
    return len;
  }
};

// A of one block over one chunk: row r is dY's plane (out_row + r) along the chunk's
// stretches, zero past the chunk's `len` positions up to `padded`.
template <typename T>
void fill_grad_rows(const T* dy, int64_t cout, int64_t px, const Window2d& w, const DepthLayout& d,
                    const GemmBlock& blk, const std::vector<DepthStretch>& chunk, int64_t len, int64_t padded,
                    T* a_panel) {
  for (int64_t r = 0; r < blk.rows; ++r) {
    T* row = a_panel + r * padded;
    for (const DepthStretch& st : chunk) {
      copy_grad_depth(dy + (st.sample * cout + blk.out_row + r) * px, w, d, st.first, st.first + st.count,
                      row + st.offset);
    }
    std::fill(row + len, row + padded, T(0));
  }
}

// B rows, first source (stride 1): windows of the padded copies of the chunk's samples,
// which live in P slots, one per sample a chunk can touch.
template <typename T>
struct WindowRows {
  const PaddedImage& image;
  T* slots;                          // P slots of image.size elements
  std::vector<int64_t> slot_sample;  // the sample each slot holds (-1: none yet)

  WindowRows(const PaddedImage& padded, T* slot_memory, int64_t count)
      : image(padded), slots(slot_memory), slot_sample(count, -1) {}

  // Copies the chunk's samples that their slots do not hold yet, and gives the dot pieces
  // that map each stretch's chunk positions to its slot: B's element p of a stretch is
  // row window + slot image + (first + p - offset).
  void load(const T* x, const ColumnLayout& L, const std::vector<DepthStretch>& chunk,
            std::vector<gemm::DotPiece>& pieces) {
    const Window2d& w = L.win;
    for (const DepthStretch& st : chunk) {
      if (slot_sample[st.slot] != st.sample) {
        image.copy(x + st.sample * L.channels * w.in_h * w.in_w, w, L.channels, slots + st.slot * image.size);
        slot_sample[st.slot] = st.sample;
      }
      pieces.push_back(gemm::DotPiece{st.offset, st.offset + st.count, st.slot * image.size + st.first - st.offset});
    }
  }

  // Every column's window at once: rows [0, round_up(cols, nr)) of b_rows for dW's columns
  // [col0, col0 + cols) of a block; rows past `cols` repeat the last (their results are dropped).
  void rows(const std::vector<int64_t>& block_offsets, int64_t col0, int64_t cols, int64_t nr,
            const T** b_rows) const {
    for (int64_t j = 0; j < round_up(cols, nr); ++j) b_rows[j] = slots + block_offsets[col0 + std::min(j, cols - 1)];
  }
};

// B rows, second source (strides, 1x1 kernels, large images): the im2col lines of column
// rows [first_row, first_row + cols) of the column matrix copied along the chunk into
// `lines` (nr lines of `padded`); b_rows[j] is line j, those past `cols` stay zero.
template <typename T>
void copy_column_lines(const T* x, const ColumnLayout& L, int64_t first_row, int64_t cols, int64_t nr,
                       const std::vector<DepthStretch>& chunk, int64_t len, int64_t padded, T* lines,
                       const T** b_rows) {
  const Window2d& w = L.win;
  const int64_t plane = w.in_h * w.in_w;
  for (int64_t j = 0; j < nr; ++j) {
    T* line = lines + j * padded;
    b_rows[j] = line;
    if (j >= cols) continue;
    const RowSource src = column_row_source(L, first_row + j);
    for (const DepthStretch& st : chunk) {
      im2col_span(x + (st.sample * L.channels + src.channel) * plane, w, src.tap_h, src.tap_w, st.first, st.count,
                  line + st.offset);
    }
    std::fill(line + len, line + padded, T(0));
  }
}

// dK: dW += dY * im2col(x)^T. Both factors run along the pixels, so the dot-product micro-kernel
// takes their rows as they are: A = a block's dY rows, B = image-column rows (windows of
// the padded image at stride 1, else im2col lines), nothing transposed. The depth of one
// product is a chunk of about `chunk_depth` positions taken across the samples of an
// item's group, so that the lanes are summed once per long chunk even on small images.
template <typename T>
void backward_weight_typed(const at::Tensor& grad_output, const at::Tensor& input,
                           const ColumnLayout& L, const BlockPlan& plan, const at::Tensor& grad_weight) {
  const gemm::DotMicroKernel<T>& dot = gemm::dot_micro_kernel<T>(cpu::active_isa());
  const Window2d& w = L.win;
  const int64_t batch = input.size(0), px = w.out_h * w.out_w;
  const int64_t cout = plan.out_channels, wcols = plan.weight_cols, wsize = plan.weight_rows * wcols;
  const T* x = input.const_data_ptr<T>();
  const T* dy = grad_output.const_data_ptr<T>();
  const PaddedImage padded_image(w, L.channels, int64_t(sizeof(T)));
  const DepthLayout d(w, padded_image, dot.lanes);
  const std::vector<std::vector<int64_t>> offsets =
      d.windows ? padded_image.block_offsets(L, plan) : std::vector<std::vector<int64_t>>();

  // Items: (group of samples, range of dW columns). Blocks that share dW rows (rolls) run
  // in order inside an item, so no two threads write the same element. Sample groups come
  // first (whole rows of dW per item: balanced); columns are split only when the batch is
  // smaller than the thread count.
  const int64_t threads_wanted = at::get_num_threads();
  const int64_t groups = std::clamp<int64_t>(threads_wanted, 1, std::max<int64_t>(1, batch));
  const int64_t pieces = std::min(ceil_div(threads_wanted, groups), ceil_div(wcols, dot.nr));
  const int64_t width = round_up(ceil_div(wcols, pieces), dot.nr);
  const int64_t per_group = ceil_div(batch, groups);
  int64_t max_rows = 0;
  for (const GemmBlock& blk : plan.blocks) max_rows = std::max(max_rows, blk.rows);
  const int64_t a_rows = round_up(max_rows, dot.mr);
  // Depth of a chunk: B's NR rows within half of L1, A's rows within L2.
  const int64_t chunk_depth = round_up(
      std::min(per_group * d.depth,
               std::max<int64_t>(16 * dot.lanes, std::min<int64_t>(kDotLinesBytes / (dot.nr * int64_t(sizeof(T))),
                                                                  kPanelBytes / (a_rows * int64_t(sizeof(T)))))),
      dot.lanes);
  // P slots: the samples one chunk can touch (windows only).
  const int64_t slots = d.windows ? std::min(per_group, ceil_div(chunk_depth, d.depth) + 1) : 0;
  // Group 0 accumulates into grad_weight, the others into their own buffers.
  std::vector<T> partial((groups - 1) * wsize, T(0));
  const int64_t items = groups * pieces;
  const int threads = engine_threads(items, 2 * batch * px * cout * wcols);
  struct Buffers {
    AlignedBuffer<T> a_panel, lines, images;
    std::vector<const T*> b_rows;
  };
  const auto buffers = [&] {
    return Buffers{AlignedBuffer<T>(a_rows * chunk_depth), AlignedBuffer<T>(d.windows ? 1 : dot.nr * chunk_depth),
                   AlignedBuffer<T>(slots * padded_image.size),
                   std::vector<const T*>(d.windows ? round_up(wcols, dot.nr) : dot.nr)};
  };
  parallel_with_state(threads, buffers, [&](Buffers& t) {
    // Zero-filled once: the depth past a chunk's pixels must read as zeros in both.
    std::fill(t.a_panel.get(), t.a_panel.get() + a_rows * chunk_depth, T(0));
    if (!d.windows) std::fill(t.lines.get(), t.lines.get() + dot.nr * chunk_depth, T(0));
    WindowRows<T> windows(padded_image, t.images.get(), slots);
    std::vector<DepthStretch> chunk;
    std::vector<gemm::DotPiece> dot_pieces;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t g = item / pieces, col0 = (item % pieces) * width;
      T* acc = g == 0 ? grad_weight.data_ptr<T>() : partial.data() + (g - 1) * wsize;
      ChunkWalk walk{g * per_group, std::min(batch, (g + 1) * per_group)};
      for (int64_t len; (len = walk.next(d.depth, chunk_depth, chunk)) > 0;) {
        const int64_t padded = round_up(len, dot.lanes);
        dot_pieces.clear();
        if (d.windows) {
          windows.load(x, L, chunk, dot_pieces);
        } else {
          dot_pieces.push_back(gemm::DotPiece{0, padded, 0});
        }
        for (size_t b = 0; b < plan.blocks.size(); ++b) {
          const GemmBlock& blk = plan.blocks[b];
          const int64_t ncols = std::min(blk.inner, col0 + width) - col0;
          if (ncols <= 0) continue;
          fill_grad_rows(dy, cout, px, w, d, blk, chunk, len, padded, t.a_panel.get());
          T* dw = acc + blk.weight_row * wcols + col0;
          if (d.windows) {
            windows.rows(offsets[b], col0, ncols, dot.nr, t.b_rows.data());
            gemm::multiply_dot(dot, blk.rows, ncols, dot_pieces.data(), int(dot_pieces.size()), t.a_panel.get(),
                               padded, t.b_rows.data(), dw, wcols, gemm::DotOrder::kARowsStay);
            continue;
          }
          for (int64_t j0 = 0; j0 < ncols; j0 += dot.nr) {
            const int64_t cols = std::min<int64_t>(dot.nr, ncols - j0);
            copy_column_lines(x, L, blk.col_row + col0 + j0, cols, dot.nr, chunk, len, padded, t.lines.get(),
                              t.b_rows.data());
            gemm::multiply_dot(dot, blk.rows, cols, dot_pieces.data(), int(dot_pieces.size()), t.a_panel.get(),
                               padded, t.b_rows.data(), dw + j0, wcols);
          }
        }
      }
    }
  });
  T* gw = grad_weight.data_ptr<T>();
  for (int64_t g = 1; g < groups; ++g) {  // fixed order: deterministic
    const T* part = partial.data() + (g - 1) * wsize;
    for (int64_t i = 0; i < wsize; ++i) gw[i] += part[i];
  }
}

bool engine_supports(at::ScalarType dtype) { return dtype == at::kFloat || dtype == at::kDouble; }

void engine_forward(const at::Tensor& input, const at::Tensor& weight_mat, const at::Tensor& bias_rows,
                    const ColumnLayout& L, const BlockPlan& plan, bool relu, const at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rollconv_engine_forward", [&] {
    forward_typed<scalar_t>(input, weight_mat, bias_rows, L, plan, relu, output);
  });
}

void engine_backward_input(const at::Tensor& grad_output, const at::Tensor& weight_mat,
                           const ColumnLayout& L, const BlockPlan& plan, const at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "rollconv_engine_backward_input", [&] {
    backward_input_typed<scalar_t>(grad_output, weight_mat, L, plan, grad_input);
  });
}

void engine_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                            const ColumnLayout& L, const BlockPlan& plan, const at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rollconv_engine_backward_weight", [&] {
    backward_weight_typed<scalar_t>(grad_output, input, L, plan, grad_weight);
  });
}

}  // namespace

const ConvEngine& cpu_conv_engine() {
  static const ConvEngine engine{engine_supports, engine_forward, engine_backward_input,
                                 engine_backward_weight};
  return engine;
}

}  // namespace rollconv
