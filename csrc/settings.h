// The library's run-time switches. Each starts from its environment variable, read once when
// the library loads; rollconv._C changes them at run time (rollconv.backends.flags in
// Python, for a `with` block):
//   ROLLCONV_CPU_ENGINE=0     the convolutions on the CPU take the composed path that CUDA
//                             takes (im2col + ATen GEMMs, ATen FFTs around the per-frequency
//                             primitives) instead of the CPU's fused engines: for comparison,
//                             and to keep that path tested on the CPU;
//   ROLLCONV_WORKSPACE_MB=N   the composed path's workspace per call, in MiB, on every device
//                             (default: 16 on the CPU, 128 on CUDA);
//   ROLLCONV_GEMM_ISA=NAME    the CPU engines' vector code: portable, avx2 or avx512
//                             (cpu/isa.h; default: the best the CPU has).
#pragma once

#include <cstdint>
#include <string>

namespace rollconv::settings {

// Whether a device's fused engines (DevicePrimitives::conv_engine and roll_fft_engine; only
// the CPU has them) run where they serve the dtype.
bool engines_enabled();
void set_engines_enabled(bool enabled);

// Upper bound of the composed path's workspace per call on a CUDA device (cuda) or the
// CPU, in bytes: the batch goes through in chunks of samples that fit it. The set value
// applies to every device; -1 (the default) is each device's own default.
int64_t workspace_bytes(bool cuda);
constexpr int64_t kMaxWorkspaceMb = INT64_MAX >> 20;  // the most whose bytes fit an int64
int64_t workspace_setting();  // bytes, or -1
void set_workspace_setting(int64_t bytes_or_default);
// Whether ROLLCONV_WORKSPACE_MB was set, when the library loaded, to text other than a
// whole number of MiB (the defaults are used then; rollconv.backends warns at import).
bool workspace_environment_rejected();

// ROLLCONV_GEMM_ISA as it was when the library loaded ("" if unset). cpu/isa.cpp applies it
// at first use, so that a bad value is an error where the engines run, not at import.
const std::string& gemm_isa_from_environment();

}  // namespace rollconv::settings
