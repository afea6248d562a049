// The Python module fastxf._emu (built with FASTXF_EMULATOR=ON): the CUDA
// kernels compiled for the CPU emulator. Importing it registers fastxf_emu::*,
// the emulated CUDA implementations of fastxf's ops on CPU tensors (same
// schemas as fastxf::*; fastxf.testing.emulate_cuda() routes to them).
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(fastxf_emu, m) {
  m.def(FASTXF_SCHEMA_LAYER_NORM);
  m.def(FASTXF_SCHEMA_RMS_NORM);
  m.def(FASTXF_SCHEMA_ATTENTION);
}

namespace {

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_emu",
                          "fastxf's CUDA kernels run by the CPU emulator (registered under torch.ops.fastxf_emu)", -1,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__emu() { return PyModule_Create(&module_def); }
