// The `vreason._C` Python module. The operators register with the dispatcher when the library
// loads (the schemas in ops.cpp, each backend's kernels beside them in cpu/ and gpu/); this
// module only adds build and CPU-path introspection.
#include <Python.h>

#include <algorithm>

#include "cpu/cpu_ops.h"
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

PyObject* max_simd_level(PyObject*, PyObject*) { return PyLong_FromLong(vreason::max_simd_level()); }

PyObject* simd_level(PyObject*, PyObject*) { return PyLong_FromLong(vreason::simd_level()); }

PyObject* set_simd_level(PyObject*, PyObject* arg) {
  const long level = PyLong_AsLong(arg);
  if (level == -1 && PyErr_Occurred()) return nullptr;
  return PyLong_FromLong(vreason::set_simd_level(static_cast<int>(std::clamp(level, -1L, 1024L))));
}

PyMethodDef methods[] = {
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {"simd_available", simd_available, METH_NOARGS, "Whether this CPU can run the AVX2 path."},
    {"simd_enabled", simd_enabled, METH_NOARGS, "Whether the CPU kernels use a SIMD path (AVX2 or AVX-512F)."},
    {"set_simd_enabled", set_simd_enabled, METH_O,
     "Turn the SIMD path (the best available) on or off (no effect where unavailable); returns the previous setting."},
    {"max_simd_level", max_simd_level, METH_NOARGS, "The best CPU path available: 0 scalar, 1 AVX2, 2 AVX-512F."},
    {"simd_level", simd_level, METH_NOARGS, "The CPU path in use: 0 scalar, 1 AVX2, 2 AVX-512F (float32)."},
    {"set_simd_level", set_simd_level, METH_O,
     "Select the CPU path (0 scalar, 1 AVX2, 2 AVX-512F; clamped to max_simd_level()); returns the previous level."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "vreason's compiled operators (torch.ops.vreason).", -1,
                          methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
