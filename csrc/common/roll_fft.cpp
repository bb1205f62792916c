// roll_conv2d's algorithm 'fft': the fused engine, or ATen's FFTs around the device's
// per-frequency primitives. See roll_fft.h.
#include "common/roll_fft.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "common/ops.h"
#include "settings.h"

namespace rollconv::ops {
namespace {

bool uses_fft_engine(const DevicePrimitives& prims, const Tensor& t, const Window2d& w) {
  return prims.roll_fft_engine != nullptr && settings::engines_enabled() &&
         prims.roll_fft_engine->supports(t.scalar_type()) && prims.roll_fft_engine->fits(w, t.scalar_type());
}

// The transforms run in float32 for float16/bfloat16 operands: ATen's FFTs have no
// bfloat16 and take float16 only for power-of-two lengths (cuFFT). Such operands reach
// these functions on CUDA; the CPU converts every convolution's operands up front.
bool reduced(const Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }
Tensor as_float(const Tensor& t) { return t.to(at::kFloat); }

// rfft over the block index of dim 1, moved last after the position inside the block
// (contiguous, so the transforms need no gathers): (A, C, ...) real -> (A, ..., S, K) complex.
Tensor block_rfft(const Tensor& t, int64_t shift) {
  std::vector<int64_t> blocks{t.size(0), t.size(1) / shift, shift};
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < t.dim(); ++d) {
    blocks.push_back(t.size(d));
    order.push_back(d + 1);
  }
  order.push_back(2);
  order.push_back(1);
  return at::fft_rfft(t.reshape(blocks).permute(order).contiguous(), std::nullopt, -1);
}

// The inverse for dX and dK: (A, P, Q, S, K) complex -> (A, G, S, P, Q) real (a view), whose
// dims 1 and 2 are channel g*S + s.
Tensor block_irfft(const Tensor& spectrum, int64_t blocks) {
  return at::fft_irfft(spectrum, blocks, -1).permute({0, 4, 3, 1, 2});
}

// The transforms' temporaries of one sample (real copy, spectrum, result spectrum, result),
// in real elements; the batch goes through in chunks that fit a quarter of the workspace
// (on the CPU 4 MiB by default: as fast as larger chunks, and it keeps the peak memory
// below the filter-bank method's; on CUDA 32 MiB), so peak memory does not grow with N.
int64_t fft_samples_per_chunk(int64_t batch, int64_t channels, int64_t shift, int64_t filters,
                              const Window2d& w, const Tensor& like) {
  const int64_t blocks = channels / shift, freqs = blocks / 2 + 1;
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const int64_t per_sample = like.element_size() *
      (in_px * (channels + 2 * shift * freqs) + out_px * filters * (blocks + 2 * freqs));
  return std::max<int64_t>(1, std::min<int64_t>(batch, settings::workspace_bytes(like.is_cuda()) / 4 / std::max<int64_t>(1, per_sample)));
}

// Chunk of dY (b, R, F, oh, ow) -> rfft over the rolls: (b, oh, ow, F, K).
Tensor rolls_rfft(const Tensor& grad_chunk, int64_t rolls, int64_t filters, const Window2d& w) {
  return at::fft_rfft(grad_chunk.reshape({grad_chunk.size(0), rolls, filters, w.out_h, w.out_w})
                          .permute({0, 3, 4, 2, 1})
                          .contiguous(),
                      std::nullopt, -1);
}

// The fused engine serves S = 1 only (its kernels sum over one input per frequency).
bool fft_engine_for(const DevicePrimitives& prims, const Tensor& t, int64_t shift, const Window2d& w) {
  return shift == 1 && uses_fft_engine(prims, t, w);
}

}  // namespace

Tensor roll_fft_forward(const DevicePrimitives& prims, const Tensor& input, const Tensor& weight,
                        const std::optional<Tensor>& bias, int64_t shift, const Window2d& w, bool relu) {
  if (reduced(input)) {
    const std::optional<Tensor> b = bias.has_value() && bias->defined() ? std::optional<Tensor>(as_float(*bias)) : bias;
    return roll_fft_forward(prims, as_float(input), as_float(weight), b, shift, w, relu).to(input.scalar_type());
  }
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  const int64_t rolls = channels / shift;
  Tensor out = at::empty({batch, rolls * filters, w.out_h, w.out_w}, input.options());
  if (fft_engine_for(prims, input, shift, w)) {
    const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
    prims.roll_fft_engine->forward(input.contiguous(), weight.contiguous(), b, w, relu, out);
    return out;
  }
  const Tensor taps = block_rfft(weight, shift);  // (F, kh, kw, S, K)
  const int64_t chunk = fft_samples_per_chunk(batch, channels, shift, filters, w, input);
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    const Tensor spectrum = block_rfft(input.narrow(0, n0, b), shift);  // (b, H, W, S, K)
    Tensor out_spectrum = at::empty({b, w.out_h, w.out_w, filters, taps.size(4)}, spectrum.options());
    prims.fft_forward(spectrum, taps, out_spectrum, w);
    // A bias shared by all rolls is a constant over the roll axis: R * b at frequency 0.
    if (bias.has_value() && bias->defined()) {
      out_spectrum.select(4, 0).add_(bias->to(out_spectrum.scalar_type()) * static_cast<double>(rolls));
    }
    // irfft gives the rolls (b, oh, ow, F, R); one pass writes them roll-major, with ReLU.
    const Tensor rolled = at::fft_irfft(out_spectrum, rolls, -1).permute({0, 4, 3, 1, 2});
    Tensor out_view = out.narrow(0, n0, b).view({b, rolls, filters, w.out_h, w.out_w});
    if (relu) {
      at::clamp_min_out(out_view, rolled, 0);
    } else {
      out_view.copy_(rolled);
    }
  }
  return out;
}

Tensor roll_fft_backward_input(const DevicePrimitives& prims, const Tensor& grad_output, const Tensor& weight,
                               int64_t shift, const Window2d& w) {
  if (reduced(grad_output)) {
    return roll_fft_backward_input(prims, as_float(grad_output), as_float(weight), shift, w).to(grad_output.scalar_type());
  }
  const int64_t batch = grad_output.size(0), channels = weight.size(1), filters = weight.size(0);
  const int64_t rolls = channels / shift;
  Tensor grad_input = at::empty({batch, channels, w.in_h, w.in_w}, grad_output.options());
  if (fft_engine_for(prims, grad_output, shift, w)) {
    prims.roll_fft_engine->backward_input(grad_output.contiguous(), weight.contiguous(), w, grad_input);
    return grad_input;
  }
  const Tensor taps = block_rfft(weight, shift);
  const int64_t chunk = fft_samples_per_chunk(batch, channels, shift, filters, w, grad_output);
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    const Tensor grad_spectrum = rolls_rfft(grad_output.narrow(0, n0, b), rolls, filters, w);
    Tensor input_spectrum = at::empty({b, w.in_h, w.in_w, shift, taps.size(4)}, grad_spectrum.options());
    prims.fft_backward_input(grad_spectrum, taps, input_spectrum, w);
    grad_input.narrow(0, n0, b).view({b, rolls, shift, w.in_h, w.in_w}).copy_(block_irfft(input_spectrum, rolls));
  }
  return grad_input;
}

Tensor roll_fft_backward_weight(const DevicePrimitives& prims, const Tensor& grad_output, const Tensor& input,
                                Pair kernel, int64_t shift, const Window2d& w) {
  if (reduced(input)) {
    return roll_fft_backward_weight(prims, as_float(grad_output), as_float(input), kernel, shift, w).to(input.scalar_type());
  }
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t rolls = channels / shift, filters = grad_output.size(1) / rolls;
  if (fft_engine_for(prims, input, shift, w)) {
    Tensor grad_weight = at::empty({filters, channels, kernel.h, kernel.w}, input.options());
    prims.roll_fft_engine->backward_weight(grad_output.contiguous(), input.contiguous(), w, grad_weight);
    return grad_weight;
  }
  const int64_t freqs = rolls / 2 + 1;
  Tensor grad_taps = at::zeros({filters, kernel.h, kernel.w, shift, freqs},
                               input.options().dtype(c10::toComplexType(input.scalar_type())));
  Tensor chunk_taps = at::empty_like(grad_taps);
  const int64_t chunk = fft_samples_per_chunk(batch, channels, shift, filters, w, input);
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {  // chunks summed in order: deterministic
    const int64_t b = std::min(chunk, batch - n0);
    prims.fft_backward_weight(block_rfft(input.narrow(0, n0, b), shift),
                              rolls_rfft(grad_output.narrow(0, n0, b), rolls, filters, w), chunk_taps, w);
    grad_taps.add_(chunk_taps);
  }
  return block_irfft(grad_taps, rolls).reshape({filters, channels, kernel.h, kernel.w}).contiguous();
}

bool roll_fft_backward_fused(const DevicePrimitives& prims, const Tensor& grad_output,
                             const std::optional<Tensor>& output, const Tensor& input, const Tensor& weight,
                             int64_t shift, const Window2d& w, std::array<bool, 3> output_mask, Tensor& grad_input,
                             Tensor& grad_weight, Tensor& grad_bias) {
  if (reduced(input) || !fft_engine_for(prims, input, shift, w)) return false;
  const auto [want_dx, want_dk, want_db] = output_mask;
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  if (want_dx) grad_input = at::empty({batch, channels, w.in_h, w.in_w}, grad_output.options());
  if (want_dk) grad_weight = at::empty(weight.sizes(), input.options());
  if (want_db) grad_bias = at::empty({filters}, grad_output.options());
  const bool relu = output.has_value() && output->defined();
  // grad_output as it comes (the engine reads any strides: an expanded one is not copied whole)
  prims.roll_fft_engine->backward(grad_output, relu ? output->contiguous() : Tensor(), input.contiguous(),
                                  weight.contiguous(), w, grad_input, grad_weight, grad_bias);
  return true;
}

}  // namespace rollconv::ops
