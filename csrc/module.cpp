// The Python extension module rollconv._C. Loading it runs the static registrations of
// the op library (registration.cpp, cpu/, cuda/); it also carries the facts of this
// build for rollconv.info(). Kept apart so the C++ tests link the ops without Python.
#include <Python.h>

// The Python module rollconv._C: loading it registers the ops; it also carries the
// facts of this build for rollconv.info().
#ifndef ROLLCONV_CUDA_ARCHS
#define ROLLCONV_CUDA_ARCHS ""
#endif

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "rollconv compiled ops", -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef ROLLCONV_WITH_CUDA
  PyModule_AddIntConstant(m, "with_cuda", 1);
#else
  PyModule_AddIntConstant(m, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(m, "cuda_archs", ROLLCONV_CUDA_ARCHS);
  PyModule_AddStringConstant(m, "version", ROLLCONV_VERSION);
  return m;
}
