// The Python module fastxf._C. Importing it runs the static TORCH_LIBRARY
// registrations of this shared library; its functions report how the library
// was built and flip the CUDA-emulation switch (fastxf.testing.emulate_cuda).
#include <Python.h>

#include "emulation.h"

namespace {

PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:s,s:O,s:s}", "version", FASTXF_VERSION, "cuda",
                       FASTXF_WITH_CUDA ? Py_True : Py_False, "cuda_archs", FASTXF_CUDA_ARCHS);
}

// _set_emulate_cuda(on: bool) -> bool (the previous value); see emulation.h.
PyObject* set_emulate_cuda(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(fastxf::set_emulating_cuda(on != 0));
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "How this extension was built: version, CUDA kernels, archs."},
    {"_set_emulate_cuda", set_emulate_cuda, METH_O,
     "Routes CPU calls of torch.ops.fastxf.* to the CUDA emulator (fastxf._emu); returns the previous setting."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastxf's compiled ops (registered under torch.ops.fastxf)",
                          -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
