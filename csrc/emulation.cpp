#include "emulation.h"

#include <atomic>

namespace fastxf {
namespace {
std::atomic<bool> g_emulating{false};
}  // namespace

bool emulating_cuda() { return g_emulating.load(std::memory_order_relaxed); }

bool set_emulating_cuda(bool on) { return g_emulating.exchange(on); }

}  // namespace fastxf
