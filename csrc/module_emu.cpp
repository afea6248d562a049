// The Python module fastxf._emu (built with FASTXF_EMULATOR=ON): the CUDA
// kernels compiled for the CPU emulator. Importing it registers fastxf_emu::*,
// the emulated CUDA implementations of fastxf's ops on CPU tensors (same
// schemas as fastxf::*; fastxf.testing.emulate_cuda() routes to them).
#include <Python.h>
#include <torch/library.h>

#include "gpu_host.h"
#include "schemas.h"

namespace fastxf {
namespace gpu {
std::vector<std::string>& dispatch_log() {
  static std::vector<std::string> log;
  return log;
}
std::mutex& dispatch_log_mutex() {
  static std::mutex mu;
  return mu;
}
}  // namespace gpu
}  // namespace fastxf

TORCH_LIBRARY(fastxf_emu, m) {
  m.def(FASTXF_SCHEMA_LAYER_NORM);
  m.def(FASTXF_SCHEMA_RMS_NORM);
  m.def(FASTXF_SCHEMA_ATTENTION);
  m.def(FASTXF_SCHEMA_ATTENTION_VARLEN);
}

namespace {

// dispatch_log() -> list[str]: what the host dispatch chose since the last call
// (see gpu::trace_dispatch), then cleared.
PyObject* dispatch_log(PyObject*, PyObject*) {
  std::vector<std::string> lines;
  {
    std::lock_guard<std::mutex> lock(fastxf::gpu::dispatch_log_mutex());
    lines.swap(fastxf::gpu::dispatch_log());
  }
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(lines.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < lines.size(); ++i) {
    PyObject* str = PyUnicode_FromString(lines[i].c_str());
    if (str == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), str);
  }
  return list;
}

PyMethodDef methods[] = {
    {"dispatch_log", dispatch_log, METH_NOARGS,
     "What the emulated CUDA dispatch chose since the last call (one line per kernel family call); clears it."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_emu",
                          "fastxf's CUDA kernels run by the CPU emulator (registered under torch.ops.fastxf_emu)", -1,
                          methods};

}  // namespace

PyMODINIT_FUNC PyInit__emu() { return PyModule_Create(&module_def); }
