// Makes the op library importable as the Python module `diffdet._C`. Importing it runs the
// TORCH_LIBRARY / TORCH_LIBRARY_IMPL registrations of every other translation unit; the module itself
// exposes nothing. The CMake build (a plain shared library for torch.ops.load_library) leaves it out.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
