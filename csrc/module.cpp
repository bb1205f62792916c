// The Python extension module rollconv._C. Loading it runs the static registrations of
// the op library (registration.cpp, cpu/, cuda/); it also carries the facts of this
// build for rollconv.info(). Kept apart so the C++ tests link the ops without Python.
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include "settings.h"

#ifndef ROLLCONV_EMULATE_CUDA  // the emulated CUDA build has no CPU engine (see setup.py)
#include "cpu/gemm/gemm.h"
#include "cpu/isa.h"
#endif

// The Python module rollconv._C: loading it registers the ops; it also carries the
// facts of this build for rollconv.info().
#ifndef ROLLCONV_CUDA_ARCHS
#define ROLLCONV_CUDA_ARCHS ""
#endif

namespace {

// Runs work() without the GIL (the engine's C++ code needs no Python); a C++ exception
// becomes a RuntimeError, raised after the GIL is back. Returns false if one was thrown.
template <typename Work>
bool run_without_gil(const Work& work) {
  std::string error;
  Py_BEGIN_ALLOW_THREADS
  try {
    work();
  } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS
  if (error.empty()) return true;
  PyErr_SetString(PyExc_RuntimeError, error.c_str());
  return false;
}

// The run-time switches (settings.h), for rollconv.backends.flags.
// _C.engines_enabled() -> bool, _C.set_engines_enabled(bool)
PyObject* engines_enabled(PyObject*, PyObject*) { return PyBool_FromLong(rollconv::settings::engines_enabled()); }
PyObject* set_engines_enabled(PyObject*, PyObject* args) {
  int enabled;
  if (!PyArg_ParseTuple(args, "p", &enabled)) return nullptr;
  rollconv::settings::set_engines_enabled(enabled);
  Py_RETURN_NONE;
}

// _C.workspace_bytes() -> int (-1: each device's default), _C.set_workspace_bytes(int >= -1)
PyObject* workspace_bytes(PyObject*, PyObject*) { return PyLong_FromLongLong(rollconv::settings::workspace_setting()); }
PyObject* workspace_environment_rejected(PyObject*, PyObject*) {
  return PyBool_FromLong(rollconv::settings::workspace_environment_rejected());
}
PyObject* set_workspace_bytes(PyObject*, PyObject* args) {
  long long bytes;
  if (!PyArg_ParseTuple(args, "L", &bytes)) return nullptr;
  if (bytes < -1 || (bytes >= 0 && (bytes >> 20) > rollconv::settings::kMaxWorkspaceMb)) {
    PyErr_SetString(PyExc_ValueError, "the workspace size must be non-negative (or -1: the default)");
    return nullptr;
  }
  rollconv::settings::set_workspace_setting(bytes);
  Py_RETURN_NONE;
}

// _C.needs_derivatives(*args) -> bool: whether the ops' Autograd kernel (rollconv/_autograd.py)
// must record its autograd function: grad mode on and a tensor argument requires grad, or
// forward grad mode on and a tensor argument carries a forward-mode tangent (level 0, as
// torch.autograd.forward_ad and torch.func.jvp use). Asked of the tensors themselves, as
// _unpack_dual does, without building its view: the check runs on every op call.
PyObject* needs_derivatives(PyObject*, PyObject* args) {
  const bool grad = at::GradMode::is_enabled(), forward_grad = c10::AutogradState::get_tls_state().get_fw_grad_mode();
  for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(args); i < n && (grad || forward_grad); ++i) {
    PyObject* arg = PyTuple_GET_ITEM(args, i);
    if (!THPVariable_Check(arg)) continue;
    const at::Tensor& tensor = THPVariable_Unpack(arg);
    if ((grad && tensor.requires_grad()) || (forward_grad && tensor._fw_grad(0).defined())) Py_RETURN_TRUE;
  }
  Py_RETURN_FALSE;
}

#ifndef ROLLCONV_EMULATE_CUDA
// _C.gemm_isa() -> str: the CPU engines' micro-kernels in use (GEMM and channel FFT).
PyObject* gemm_isa(PyObject*, PyObject*) {
  const char* name = nullptr;
  if (!run_without_gil([&] { name = rollconv::cpu::isa_name(rollconv::cpu::active_isa()); })) return nullptr;
  return PyUnicode_FromString(name);
}

// _C.set_gemm_isa(name): force the CPU engines' micro-kernels ('portable', 'avx2', 'avx512').
PyObject* set_gemm_isa(PyObject*, PyObject* args) {
  const char* name;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  rollconv::cpu::Isa isa;
  if (!rollconv::cpu::parse_isa(name, &isa)) {
    PyErr_Format(PyExc_ValueError, "the ISA must be portable, avx2 or avx512, not '%s'", name);
    return nullptr;
  }
  if (!run_without_gil([&] { rollconv::cpu::force_isa(isa); })) return nullptr;
  Py_RETURN_NONE;
}

// _C.gemm_seconds(m, n, k, double, threads, repeats) -> list of seconds: the engine's
// plain GEMM C = A B (row-major) timed on its own, for the benchmark.
PyObject* gemm_seconds(PyObject*, PyObject* args) {
  long long m, n, k;
  int is_double, threads, repeats;
  if (!PyArg_ParseTuple(args, "LLLpii", &m, &n, &k, &is_double, &threads, &repeats)) return nullptr;
  std::vector<double> seconds;
  auto run = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> a(m * k, T(0.5)), b(k * n, T(0.25)), c(m * n);
    for (int r = 0; r <= repeats; ++r) {  // the first run warms up
      const auto t0 = std::chrono::steady_clock::now();
      rollconv::gemm::gemm<T>(false, false, m, n, k, T(1), a.data(), k, b.data(), n, T(0), c.data(), n, threads);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) seconds.push_back(s);
    }
  };
  if (!run_without_gil([&] { is_double ? run(0.0) : run(0.0f); })) return nullptr;
  PyObject* list = PyList_New(0);
  for (double s : seconds) {
    PyObject* value = PyFloat_FromDouble(s);
    PyList_Append(list, value);
    Py_DECREF(value);
  }
  return list;
}

// _C.peak_gflops(double, threads) -> float: measured FMA throughput of the engine's ISA.
PyObject* peak_gflops(PyObject*, PyObject* args) {
  int is_double, threads;
  if (!PyArg_ParseTuple(args, "pi", &is_double, &threads)) return nullptr;
  double gflops = 0;
  if (!run_without_gil([&] { gflops = rollconv::gemm::measure_peak_gflops(is_double, threads); })) return nullptr;
  return PyFloat_FromDouble(gflops);
}

#endif

PyMethodDef methods[] = {
    {"engines_enabled", engines_enabled, METH_NOARGS, "whether the CPU's fused engines run (ROLLCONV_CPU_ENGINE)"},
    {"set_engines_enabled", set_engines_enabled, METH_VARARGS, "turn the CPU's fused engines on or off"},
    {"workspace_bytes", workspace_bytes, METH_NOARGS, "the composed path's workspace per call in bytes (ROLLCONV_WORKSPACE_MB); -1: each device's default"},
    {"workspace_environment_rejected", workspace_environment_rejected, METH_NOARGS,
     "whether ROLLCONV_WORKSPACE_MB held text other than a whole number of MiB at load (the defaults are used)"},
    {"needs_derivatives", needs_derivatives, METH_VARARGS,
     "whether an op call on these arguments must record its autograd function (requires grad, or a tangent)"},
    {"set_workspace_bytes", set_workspace_bytes, METH_VARARGS, "set the composed path's workspace per call, bytes; -1: each device's default"},
#ifndef ROLLCONV_EMULATE_CUDA
    {"gemm_isa", gemm_isa, METH_NOARGS, "ISA of the CPU engines' micro-kernels (ROLLCONV_GEMM_ISA)"},
    {"set_gemm_isa", set_gemm_isa, METH_VARARGS, "force the CPU engines' micro-kernels: portable, avx2 or avx512"},
    {"gemm_seconds", gemm_seconds, METH_VARARGS, "time the CPU GEMM engine: (m, n, k, double, threads, repeats)"},
    {"peak_gflops", peak_gflops, METH_VARARGS, "measured FMA peak of the engine's ISA: (double, threads)"},
#endif
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "rollconv compiled ops", -1, methods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef ROLLCONV_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
#ifdef ROLLCONV_EMULATE_CUDA  // the CUDA kernels compiled for the host, on CPU tensors
  PyModule_AddIntConstant(m, "emulated_cuda", 1);
#else
  PyModule_AddIntConstant(m, "emulated_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cuda_archs", ROLLCONV_CUDA_ARCHS);
#ifdef ROLLCONV_DEBUG
  PyModule_AddIntConstant(m, "debug", 1);  // DEBUG=1 build: -O0, debug info kept
#else
  PyModule_AddIntConstant(m, "debug", 0);
#endif
  PyModule_AddStringConstant(m, "version", ROLLCONV_VERSION);
  // The largest workspace setting in MiB (its bytes fit an int64): rollconv.backends checks against it.
  PyObject* max_workspace_mb = PyLong_FromLongLong(rollconv::settings::kMaxWorkspaceMb);
  if (max_workspace_mb == nullptr || PyModule_AddObject(m, "max_workspace_mb", max_workspace_mb) < 0) {
    Py_XDECREF(max_workspace_mb);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
