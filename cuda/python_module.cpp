// The `vreason._C` Python module. The operators register with the dispatcher when the library
// loads (TORCH_LIBRARY in ops.cpp); this module only adds build and CPU-path introspection.
#include <Python.h>

#include "ops.h"

namespace {

PyObject* built_with_cuda(PyObject*, PyObject*) { return PyBool_FromLong(vreason::built_with_cuda()); }

PyObject* simd_available(PyObject*, PyObject*) { return PyBool_FromLong(vreason::simd_available()); }

PyObject* simd_enabled(PyObject*, PyObject*) { return PyBool_FromLong(vreason::simd_enabled()); }

PyObject* set_simd_enabled(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(vreason::set_simd_enabled(on != 0));
}

PyMethodDef methods[] = {
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {"simd_available", simd_available, METH_NOARGS, "Whether this CPU can run the AVX2 path."},
    {"simd_enabled", simd_enabled, METH_NOARGS, "Whether the CPU kernels use the AVX2 path."},
    {"set_simd_enabled", set_simd_enabled, METH_O,
     "Turn the AVX2 path on or off (no effect where unavailable); returns the previous setting."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "vreason's compiled operators (torch.ops.vreason).", -1,
                          methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
