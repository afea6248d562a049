// The switch that sends fastxf's CPU entry points to the CPU emulator of the
// CUDA kernels (fastxf._emu, built with FASTXF_EMULATOR=ON).
//
// Why a flag in C++ that the CPU kernels consult (rather than a Python-side
// redirect in fastxf.ops or a TorchDispatchMode): torch.ops.fastxf.* called
// directly, through torch.compile / autograd, or from another thread all end
// up in the CPU kernel, so checking there covers every caller with one branch
// per call and no per-op Python wrapper to keep in sync. The flag is
// process-wide (not thread-local) for the same reason: autograd and other
// worker threads must see the emulated path too. Set it with
// fastxf.testing.emulate_cuda() or FASTXF_EMULATE_CUDA=1.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

namespace fastxf {

// True while CPU calls of fastxf's ops should run the CUDA kernels emulated.
bool emulating_cuda();
// Sets the switch; returns its previous value (so nested contexts restore it).
bool set_emulating_cuda(bool on);

// fastxf_emu::<name>, the emulated CUDA implementation that fastxf._emu
// registers for CPU tensors (same schema as fastxf::<name>).
template <typename Sig>
c10::TypedOperatorHandle<Sig> emulated_op(const char* name) {
  const auto handle = c10::Dispatcher::singleton().findSchema({std::string("fastxf_emu::") + name, ""});
  TORCH_CHECK(handle.has_value(), "fastxf.", name,
              ": CUDA emulation is switched on but the emulator module fastxf._emu is not loaded; use "
              "fastxf.testing.emulate_cuda(), which loads it (build it with FASTXF_EMULATOR=ON)");
  return handle->typed<Sig>();
}

}  // namespace fastxf
