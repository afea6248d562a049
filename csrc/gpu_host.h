// The host-side CUDA runtime calls of fastxf's dispatch code (norm_cuda_ops.cpp,
// attention_cuda.cu, decode_cuda.cu, prefill_cuda.cu and the kernels' launch
// helpers), for two builds of the SAME dispatch code:
//
//  - the CUDA build (fastxf._C): the real runtime on the current device and stream;
//  - the emulator build (fastxf._emu, -DFASTXF_EMULATOR): CPU tensors, kernels run
//    by the emulator in csrc/emu/, and the device properties of an H100 / H200
//    (132 SMs, compute capability 9.0, 227 KB of opt-in shared memory per
//    block) so that every heuristic (decode vs prefill, split count, which head
//    dims fit) decides as it does on the GPU the kernels are tuned for.
//
// Kernel launches themselves use FASTXF_LAUNCH from cuda/primitives.cuh; the
// kernels' own launch helpers need only gpu_launch.h.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <torch/library.h>

#include "gpu_launch.h"

#if defined(FASTXF_EMULATOR)
#include "emu/emu.h"
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fastxf {
namespace gpu {

// What the dispatch heuristics read from the device.
struct DeviceProps {
  int sms = 0;                // streaming multiprocessors
  int major = 0;              // compute capability
  int smem_optin = 0;         // max dynamic shared memory per block with the opt-in (bytes)
  int smem_per_sm = 0;        // shared memory per SM (bytes)
  int max_threads_per_sm = 0;
};

#if defined(FASTXF_EMULATOR)

// An H100 / H200 (sm_90): the GPUs the kernels' heuristics are tuned for.
inline DeviceProps device_props(int /*device*/) {
  DeviceProps d;
  d.sms = emulated::kSms;
  d.major = emulated::kMajor;
  d.smem_optin = emulated::kSmemOptin;
  d.smem_per_sm = emulated::kSmemPerSm;
  d.max_threads_per_sm = emulated::kMaxThreadsPerSm;
  return d;
}

inline cudaStream_t current_stream(int /*device*/) { return nullptr; }

// Nothing to select: the emulator runs on the calling thread.
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

#else

// Queried once per device: attribute queries are cheap but not free, and the
// decode step is launch-latency sensitive.
inline DeviceProps device_props(int device) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceProps> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceProps d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  cache.emplace(device, d);
  return d;
}

inline cudaStream_t current_stream(int device) { return c10::cuda::getCurrentCUDAStream(device).stream(); }

using DeviceGuard = c10::cuda::CUDAGuard;

#endif

// What the dispatch chose (kernel family and its compile-time / launch
// parameters), one line per call, so the emulated tests can check that every
// dispatched variant ran. Recorded in the emulator only; read (and cleared) from
// Python with fastxf._emu.dispatch_log().
#if defined(FASTXF_EMULATOR)
std::vector<std::string>& dispatch_log();
std::mutex& dispatch_log_mutex();
template <typename... A>
void trace_dispatch(const A&... parts) {
  std::string line;
  ((line += c10::str(parts)), ...);
  std::lock_guard<std::mutex> lock(dispatch_log_mutex());
  dispatch_log().push_back(std::move(line));
}
#else
template <typename... A>
inline void trace_dispatch(const A&...) {}
#endif

// The global memory a launch may touch. In the emulator each tensor's extent
// (its first to last element, for non-negative strides) is registered with the
// checker for the lifetime of this object, so an access outside every
// registered tensor is reported; views that overlap (k and v slices of one
// fused buffer) are merged into one region. On the GPU it does nothing.
class KernelBuffers {
 public:
  KernelBuffers& add(const at::Tensor& t, const char* name, bool writable) {
#if defined(FASTXF_EMULATOR)
    if (!t.defined() || t.numel() == 0) return *this;
    int64_t last = 0;  // offset of the last element, in elements
    for (int64_t d = 0; d < t.dim(); ++d) {
      TORCH_CHECK(t.stride(d) >= 0 || t.size(d) <= 1, "fastxf emulator: negative strides are not supported (", name,
                  ")");
      last += (t.size(d) - 1) * t.stride(d);
    }
    const auto lo = reinterpret_cast<uintptr_t>(t.data_ptr());
    spans_.push_back({lo, lo + static_cast<uintptr_t>((last + 1) * t.element_size()), name, writable});
#else
    (void)t;
    (void)name;
    (void)writable;
#endif
    return *this;
  }

  // Registers what was added (call once, after the last add, before launching).
  void commit() {
#if defined(FASTXF_EMULATOR)
    std::sort(spans_.begin(), spans_.end(), [](const Span& a, const Span& b) { return a.lo < b.lo; });
    std::vector<Span> merged;
    for (const Span& s : spans_) {
      if (!merged.empty() && s.lo < merged.back().hi) {
        merged.back().hi = std::max(merged.back().hi, s.hi);
        merged.back().name += "+" + s.name;
        merged.back().writable = merged.back().writable || s.writable;
      } else {
        merged.push_back(s);
      }
    }
    for (const Span& s : merged)
      regions_.emplace_back(
          std::make_unique<emu::GlobalBuffer>(reinterpret_cast<const void*>(s.lo), s.hi - s.lo, s.name, s.writable));
#endif
  }

 private:
#if defined(FASTXF_EMULATOR)
  struct Span {
    uintptr_t lo, hi;
    std::string name;
    bool writable;
  };
  std::vector<Span> spans_;
  std::vector<std::unique_ptr<emu::GlobalBuffer>> regions_;
#endif
};

}  // namespace gpu
}  // namespace fastxf
