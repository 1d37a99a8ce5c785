// `import solrl_kernels._C` loads the extension library, whose static initializers
// (TORCH_LIBRARY in ops.cpp) register torch.ops.solrl_kernels.*; the module itself is empty.
// Kept apart from ops.cpp so that C++ tests can link the ops without libpython.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
