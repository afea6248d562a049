// The Python module fastxf._C. Importing it runs the static TORCH_LIBRARY
// registrations of this shared library; its only function reports how the
// library was built.
#include <Python.h>

namespace {

PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:s,s:O,s:s}", "version", FASTXF_VERSION, "cuda",
                       FASTXF_WITH_CUDA ? Py_True : Py_False, "cuda_archs", FASTXF_CUDA_ARCHS);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "How this extension was built: version, CUDA kernels, archs."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastxf's compiled ops (registered under torch.ops.fastxf)",
                          -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module_def); }
