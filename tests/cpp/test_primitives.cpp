// C++ tests of the CPU primitives on their own (run by ctest):
//  - im2col against a direct evaluation of the definition;
//  - the adjoint identity <im2col(x), c> == <x, col2im(c)> for random geometries,
//    including the rolling convolution's wrapped virtual channels;
//  - max-pool backward (a gather) against the scatter of the forward's indices;
//  - the channel-FFT passes as the CPU calls them against the CUDA kernels' calls;
//  - the conv2d op through the dispatcher against at::conv2d;
//  - the streaming copy (cpu/streaming_store.h) at every alignment and length.
#include <ATen/ATen.h>
#include <c10/util/complex.h>

#include <cstdio>
#include <random>
#include <string>

#include "expect.h"

#include "common/device_primitives.h"
#include "common/fft_sums.h"
#include "common/max_pool_rules.h"
#include "common/ops.h"
#include "cpu/streaming_store.h"

using namespace rollconv;

namespace {

using rollconv_test::expect;
using rollconv_test::failures;

ColumnLayout random_layout(std::mt19937& rng, bool rolled) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  ColumnLayout L{};
  Window2d& w = L.win;
  w.kernel_h = pick(1, 4), w.kernel_w = pick(1, 4);
  w.stride_h = pick(1, 3), w.stride_w = pick(1, 3);
  w.dil_h = pick(1, 2), w.dil_w = pick(1, 2);
  w.pad_h = pick(0, 3), w.pad_w = pick(0, 3);
  w.in_h = pick(1, 9) + (w.kernel_h - 1) * w.dil_h;
  w.in_w = pick(1, 9) + (w.kernel_w - 1) * w.dil_w;
  w.out_h = (w.in_h + 2 * w.pad_h - w.dil_h * (w.kernel_h - 1) - 1) / w.stride_h + 1;
  w.out_w = (w.in_w + 2 * w.pad_w - w.dil_w * (w.kernel_w - 1) - 1) / w.stride_w + 1;
  L.channels = pick(1, 5);
  L.col_channels = rolled ? L.channels + pick(0, L.channels - 1) : L.channels;
  return L;
}

std::string describe(const ColumnLayout& L) {
  const Window2d& w = L.win;
  char text[256];
  std::snprintf(text, sizeof text,
                "C=%lld Cv=%lld in=%lldx%lld k=%lldx%lld s=%lldx%lld p=%lldx%lld d=%lldx%lld",
                (long long)L.channels, (long long)L.col_channels, (long long)w.in_h,
                (long long)w.in_w, (long long)w.kernel_h, (long long)w.kernel_w,
                (long long)w.stride_h, (long long)w.stride_w, (long long)w.pad_h,
                (long long)w.pad_w, (long long)w.dil_h, (long long)w.dil_w);
  return text;
}

void test_im2col_definition(std::mt19937& rng) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  for (int trial = 0; trial < 50; ++trial) {
    const ColumnLayout L = random_layout(rng, trial % 2 == 1);
    const Window2d& w = L.win;
    at::Tensor x = at::randn({2, L.channels, w.in_h, w.in_w}, opts);
    at::Tensor cols = at::empty({column_rows(L), 2 * column_cols(L)}, opts);
    cpu_primitives().im2col(x, cols, L);
    auto c = cols.accessor<double, 2>();
    auto xa = x.accessor<double, 4>();
    bool ok = true;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t v = 0; v < L.col_channels; ++v)
        for (int64_t i = 0; i < w.kernel_h; ++i)
          for (int64_t j = 0; j < w.kernel_w; ++j)
            for (int64_t oh = 0; oh < w.out_h; ++oh)
              for (int64_t ow = 0; ow < w.out_w; ++ow) {
                const int64_t h = oh * w.stride_h - w.pad_h + i * w.dil_h;
                const int64_t x_ = ow * w.stride_w - w.pad_w + j * w.dil_w;
                const bool inside = h >= 0 && h < w.in_h && x_ >= 0 && x_ < w.in_w;
                const double expected = inside ? xa[b][v % L.channels][h][x_] : 0.0;
                const int64_t row = (v * w.kernel_h + i) * w.kernel_w + j;
                ok = ok && c[row][b * column_cols(L) + oh * w.out_w + ow] == expected;
              }
    expect(ok, "im2col matches its definition for " + describe(L));
  }
}

void test_adjoint(std::mt19937& rng) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  for (int trial = 0; trial < 200; ++trial) {
    const ColumnLayout L = random_layout(rng, trial % 2 == 1);
    const int64_t batch = 1 + trial % 3;
    at::Tensor x = at::randn({batch, L.channels, L.win.in_h, L.win.in_w}, opts);
    at::Tensor c = at::randn({column_rows(L), batch * column_cols(L)}, opts);
    at::Tensor cols = at::empty_like(c);
    at::Tensor back = at::empty_like(x);
    cpu_primitives().im2col(x, cols, L);
    cpu_primitives().col2im(c, back, L);
    // The CUDA kernels' per-element functions, evaluated on the host, give the same.
    auto cols_a = cols.accessor<double, 2>();
    auto back_a = back.accessor<double, 4>();
    bool same = true;
    const int64_t ncols = column_cols(L);
    for (int64_t row = 0; row < column_rows(L); ++row)
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t p = 0; p < ncols; ++p)
          same = same && cols_a[row][b * ncols + p] ==
                             im2col_value(x[b].data_ptr<double>(), L.win, column_row_source(L, row),
                                          p / L.win.out_w, p % L.win.out_w);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t ch = 0; ch < L.channels; ++ch)
        for (int64_t h = 0; h < L.win.in_h; ++h)
          for (int64_t w = 0; w < L.win.in_w; ++w)
            same = same && std::abs(back_a[b][ch][h][w] -
                                    col2im_gather<double, double>(c.data_ptr<double>() + b * ncols,
                                                                  batch * ncols, L, ch, h, w)) < 1e-12;
    expect(same, "per-element im2col_value / col2im_gather agree with the CPU loops for " + describe(L));
    const double lhs = (cols * c).sum().item<double>();
    const double rhs = (x * back).sum().item<double>();
    expect(std::abs(lhs - rhs) <= 1e-10 * (1.0 + std::abs(lhs)),
           "adjoint identity (" + std::to_string(lhs) + " vs " + std::to_string(rhs) + ") for " +
               describe(L));
  }
}

void test_max_pool_gather(std::mt19937& rng) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  for (int trial = 0; trial < 50; ++trial) {
    ColumnLayout L = random_layout(rng, false);
    Window2d w = L.win;
    w.pad_h = std::min(w.pad_h, w.kernel_h / 2);
    w.pad_w = std::min(w.pad_w, w.kernel_w / 2);
    w.out_h = (w.in_h + 2 * w.pad_h - w.dil_h * (w.kernel_h - 1) - 1) / w.stride_h + 1;
    w.out_w = (w.in_w + 2 * w.pad_w - w.dil_w * (w.kernel_w - 1) - 1) / w.stride_w + 1;
    if (w.out_h <= 0 || w.out_w <= 0) continue;
    at::Tensor x = at::randn({3, w.in_h, w.in_w}, opts);
    at::Tensor y = at::empty({3, w.out_h, w.out_w}, opts);
    at::Tensor idx = at::empty({3, w.out_h, w.out_w}, opts.dtype(at::kLong));
    cpu_primitives().max_pool_forward(x, y, idx, w);
    at::Tensor g = at::randn({3, w.out_h, w.out_w}, opts);
    at::Tensor gathered = at::empty_like(x);
    cpu_primitives().max_pool_backward(g, idx, gathered, w);
    at::Tensor scattered = at::zeros({3, w.in_h * w.in_w}, opts)
                               .scatter_add_(1, idx.view({3, -1}), g.view({3, -1}))
                               .view_as(x);
    expect(at::allclose(gathered, scattered, 1e-12, 1e-12), "max-pool backward == scatter of the indices");
    // The CUDA kernel's per-element gather, evaluated on the host, gives the same.
    bool same = true;
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t h = 0; h < w.in_h; ++h)
        for (int64_t x_ = 0; x_ < w.in_w; ++x_)
          same = same && std::abs(gathered[p][h][x_].item<double>() -
                                  max_pool_gather<double, double>(g[p].data_ptr<double>(),
                                                                  idx[p].data_ptr<int64_t>(), w, h, x_)) < 1e-12;
    expect(same, "max_pool_gather agrees with the CPU backward");
    expect(at::equal(y.view({3, -1}), x.view({3, -1}).gather(1, idx.view({3, -1}))),
           "max-pool value at its index");
  }
}

// The channel-FFT passes: the CPU kernels (span = K frequencies per call) against the
// CUDA kernels' way of calling the same functions (span = 1, pointers offset to k).
void test_fft_spans(std::mt19937& rng) {
  using Z = c10::complex<double>;
  const auto opts = at::TensorOptions().dtype(at::kComplexDouble);
  for (int trial = 0; trial < 20; ++trial) {
    const Window2d w = random_layout(rng, false).win;
    const int64_t batch = 2, filters = 1 + trial % 3, inputs = 1 + trial % 4, freqs = 1 + trial % 5;
    const int64_t kk = w.kernel_h * w.kernel_w;
    at::Tensor x = at::randn({batch, w.in_h, w.in_w, inputs, freqs}, opts);
    at::Tensor taps = at::randn({filters, w.kernel_h, w.kernel_w, inputs, freqs}, opts);
    at::Tensor dy = at::randn({batch, w.out_h, w.out_w, filters, freqs}, opts);
    at::Tensor y = at::empty({batch, w.out_h, w.out_w, filters, freqs}, opts);
    at::Tensor gx = at::empty({batch, w.in_h, w.in_w, inputs, freqs}, opts);
    at::Tensor gt = at::empty({filters, w.kernel_h, w.kernel_w, inputs, freqs}, opts);
    cpu_primitives().fft_forward(x, taps, y, w);
    cpu_primitives().fft_backward_input(dy, taps, gx, w);
    cpu_primitives().fft_backward_weight(x, dy, gt, w);
    const Z *xp = x.data_ptr<Z>(), *tp = taps.data_ptr<Z>(), *dyp = dy.data_ptr<Z>();
    bool same = true;
    auto close = [](Z a, Z b) { return std::abs(a.real() - b.real()) + std::abs(a.imag() - b.imag()) < 1e-10; };
    for (int64_t i = 0; i < y.numel(); ++i) {
      const int64_t k = i % freqs, f = (i / freqs) % filters, p = i / (freqs * filters);
      const int64_t ow = p % w.out_w, oh = (p / w.out_w) % w.out_h, n = p / (w.out_w * w.out_h);
      Z one;
      fft_forward_span(&one, xp + n * w.in_h * w.in_w * inputs * freqs + k, tp + f * kk * inputs * freqs + k, inputs,
                       freqs, 1, w, oh, ow);
      same = same && close(one, y.data_ptr<Z>()[i]);
    }
    for (int64_t i = 0; i < gx.numel(); ++i) {
      const int64_t k = i % freqs, s = (i / freqs) % inputs, p = i / (freqs * inputs);
      const int64_t x_ = p % w.in_w, h = (p / w.in_w) % w.in_h, n = p / (w.in_w * w.in_h);
      Z one;
      fft_input_grad_span(&one, dyp + n * w.out_h * w.out_w * filters * freqs + k, tp + s * freqs + k, filters, inputs,
                          freqs, 1, w, h, x_);
      same = same && close(one, gx.data_ptr<Z>()[i]);
    }
    for (int64_t i = 0; i < gt.numel(); ++i) {
      const int64_t k = i % freqs, s = (i / freqs) % inputs, tap = (i / (freqs * inputs)) % kk;
      const int64_t f = i / (freqs * inputs * kk);
      Z one;
      fft_weight_grad_span(&one, xp + s * freqs + k, dyp + f * freqs + k, batch, filters, inputs, freqs, 1, w,
                           tap / w.kernel_w, tap % w.kernel_w);
      same = same && close(one, gt.data_ptr<Z>()[i]);
    }
    expect(same, "fft passes: span = K (CPU) == span = 1 (CUDA's calls)");
    // The forward against its definition: sum over inputs and taps of X conj(T).
    at::Tensor want = at::zeros_like(y);
    for (int64_t i = 0; i < w.kernel_h; ++i) {
      for (int64_t j = 0; j < w.kernel_w; ++j) {
        for (int64_t oh = 0; oh < w.out_h; ++oh) {
          for (int64_t ow = 0; ow < w.out_w; ++ow) {
            const int64_t h = input_coord(oh, i, w.stride_h, w.pad_h, w.dil_h);
            const int64_t x_ = input_coord(ow, j, w.stride_w, w.pad_w, w.dil_w);
            if (h < 0 || h >= w.in_h || x_ < 0 || x_ >= w.in_w) continue;
            // (batch, inputs, K) x (F, inputs, K) -> (batch, F, K)
            at::Tensor xs = x.select(1, h).select(1, x_).unsqueeze(1);
            at::Tensor ts = taps.select(1, i).select(1, j).conj().unsqueeze(0);
            want.select(1, oh).select(1, ow).add_((xs * ts).sum(2));
          }
        }
      }
    }
    expect(at::allclose(y, want, 1e-10, 1e-10), "fft_forward == sum over inputs and taps of X conj(T)");
  }
}

void test_conv2d_op() {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({3, 4, 11, 9}, opts);
  at::Tensor w = at::randn({6, 2, 3, 2}, opts);
  at::Tensor b = at::randn({6}, opts);
  at::Tensor ours = ops::conv2d_forward(cpu_primitives(), x, w, b, {2, 1}, {1, 2}, {1, 2}, 2);
  at::Tensor ref = at::conv2d(x, w, b, {2, 1}, {1, 2}, {1, 2}, 2);
  expect(at::allclose(ours, ref, 1e-10, 1e-10), "conv2d_forward == at::conv2d");
}

// stream_span copies exactly [0, len) whatever the alignment: whole lines streamed, the
// head and tail as ordinary stores; nothing around the span is written.
template <typename T>
void test_stream_span() {
  constexpr int64_t kMax = 200, kPad = 32;
  alignas(64) T src[kMax + kPad], dst[kMax + 2 * kPad];
  for (int64_t i = 0; i < kMax + kPad; ++i) src[i] = T(i + 1);
  for (int64_t offset = 0; offset < 16; ++offset) {
    for (int64_t len = 0; len <= kMax; ++len) {
      for (T& v : dst) v = T(-1);
      stream_span(dst + kPad + offset, src + (offset * 3) % 7, len);
      streaming_store_fence();
      bool ok = true;
      for (int64_t i = 0; i < kMax + 2 * kPad; ++i) {
        const int64_t j = i - kPad - offset;
        ok = ok && dst[i] == (j >= 0 && j < len ? src[(offset * 3) % 7 + j] : T(-1));
      }
      expect(ok, "stream_span<" + std::to_string(sizeof(T)) + "> offset " + std::to_string(offset) +
                     " len " + std::to_string(len));
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_im2col_definition(rng);
  test_adjoint(rng);
  test_max_pool_gather(rng);
  test_fft_spans(rng);
  test_conv2d_op();
  test_stream_span<float>();
  test_stream_span<double>();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
