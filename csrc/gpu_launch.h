// Error checks of CUDA runtime calls and launches, and where the ops register,
// for the CUDA build and the CPU emulator build (see gpu_host.h). Light enough
// for the kernels' .cuh files (no ATen).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#if !defined(FASTXF_EMULATOR)
#include <c10/cuda/CUDAException.h>
#endif

#if defined(FASTXF_EMULATOR)
// The emulated ops are fastxf_emu::<op> on CPU (declared in csrc/module_emu.cpp);
// fastxf::<op>'s CPU kernel forwards to them while emulation is on (emulation.h).
#define FASTXF_GPU_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastxf_emu, CPU, m)
// A runtime call: the emulator's shims return cudaSuccess or throw themselves.
#define FASTXF_CUDA_CHECK(expr) static_cast<void>(expr)
// An emulated launch runs to completion and throws on any finding.
#define FASTXF_KERNEL_LAUNCH_CHECK() static_cast<void>(0)
#else
#define FASTXF_GPU_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastxf, CUDA, m)
#define FASTXF_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#define FASTXF_KERNEL_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#endif


namespace fastxf {
namespace gpu {

#if defined(FASTXF_EMULATOR)

// The device the emulator stands in for: an H100 / H200 (sm_90), the GPUs the
// kernels' heuristics are tuned for.
namespace emulated {
constexpr int kSms = 132;
constexpr int kMajor = 9;
constexpr int kSmemOptin = 232448;  // 227 KB of dynamic shared memory per block with the opt-in
constexpr int kSmemPerSm = 233472;  // 228 KB per SM
constexpr int kMaxThreadsPerSm = 2048;
constexpr int kMaxBlocksPerSm = 32;
constexpr int kSmemReservedPerBlock = 1024;  // taken by the system on sm_80+
}  // namespace emulated

// Resident CTAs per SM of a kernel with `threads` threads and `smem` bytes of
// dynamic shared memory, from the emulated device's thread, block and shared
// memory limits. Registers are not modelled: the kernels are written to stay
// within the register budget of their intended occupancy (check with ptxas -v,
// scripts/ptxas_report.sh).
template <typename Kernel>
int occupancy(Kernel, int threads, int smem) {
  const int by_threads = emulated::kMaxThreadsPerSm / threads;
  const int by_smem = emulated::kSmemPerSm / (smem + emulated::kSmemReservedPerBlock);
  return std::max(0, std::min({by_threads, by_smem, emulated::kMaxBlocksPerSm}));
}

#else

template <typename Kernel>
int occupancy(Kernel kernel, int threads, int smem) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  return blocks;
}

#endif

}  // namespace gpu
}  // namespace fastxf
