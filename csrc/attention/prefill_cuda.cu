// Placeholder until the FlashAttention-2-style prefill kernel lands.
#include "attention/attention_cuda.h"

namespace fastxf {

void prefill_attention_cuda(const AttentionProblem& p) {
  TORCH_CHECK(false, "fastxf.attention: the CUDA prefill kernel is not implemented yet");
}

}  // namespace fastxf
