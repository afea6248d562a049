// fastxf::attention_varlen: attention over packed (variable-length) sequences,
// FlashAttention-2's flash_attn_varlen_func convention. Sequence b owns rows
// [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q and [cu_seqlens_k[b], cu_seqlens_k[b+1])
// of k / v, and attends only inside itself.
//
// CPU: no kernel of its own. Each sequence is a (1, Hq, n, D) zero-copy view of
// the packed tensors (q.narrow(0, s, n).transpose(0, 1).unsqueeze(0) keeps the
// head dim contiguous), handed to the dense fastxf::attention op through the
// dispatcher, and the result is copied into its rows of the packed output. So
// the masking, GQA, causal alignment, window and softcap rules are the dense
// op's, and this op gets faster whenever the dense CPU kernel does.
//
// CUDA: the varlen variant of the prefill kernel (attention_varlen_cuda.cu,
// one CTA per (query tile, head, sequence), no padding copies). Under
// fastxf.testing.emulate_cuda() this CPU entry forwards to that CUDA code run by
// the emulator (fastxf_emu::attention_varlen), before reading any offset.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "attention/cpu/work_queue.h"
#include "common.h"
#include "emulation.h"

namespace fastxf {
namespace {

constexpr const char* kOp = "fastxf.attention_varlen";

// Checks one cu_seqlens tensor's metadata and values; returns its values.
// Reading the values needs them on the host: cheap on CPU (batch + 1 ints).
std::vector<int64_t> read_cu_seqlens(const at::Tensor& cu, const char* name, int64_t total, int64_t max_seqlen,
                                     const char* max_name, const at::Tensor& q) {
  TORCH_CHECK(cu.scalar_type() == at::kInt, kOp, ": ", name, " must be int32, got ", cu.scalar_type());
  TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 1, kOp, ": ", name, " must be 1-D (batch + 1,), got shape ",
              cu.sizes());
  TORCH_CHECK(cu.device() == q.device(), kOp, ": ", name, " is on ", cu.device(), " but q is on ", q.device());
  const at::Tensor c = cu.contiguous();
  const int32_t* p = c.data_ptr<int32_t>();
  std::vector<int64_t> out(c.size(0));
  TORCH_CHECK(p[0] == 0, kOp, ": ", name, "[0] must be 0, got ", p[0]);
  for (int64_t i = 0; i < c.size(0); ++i) {
    out[i] = p[i];
    if (i == 0) continue;
    const int64_t len = out[i] - out[i - 1];
    TORCH_CHECK(len >= 0, kOp, ": ", name, " must be non-decreasing, got ", name, "[", i, "] = ", out[i], " < ",
                name, "[", i - 1, "] = ", out[i - 1]);
    TORCH_CHECK(len <= max_seqlen, kOp, ": ", max_name, " = ", max_seqlen, " is smaller than sequence ", i - 1,
                "'s length ", len);
  }
  TORCH_CHECK(out.back() == total, kOp, ": the last entry of ", name, " must equal the number of packed rows (",
              total, "), got ", out.back());
  return out;
}

at::Tensor attention_varlen_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                int64_t max_seqlen_k, bool causal, std::optional<double> scale, int64_t window,
                                double softcap) {
  if (emulating_cuda()) {  // fastxf.testing.emulate_cuda(): the CUDA kernel, run by the emulator
    return emulated_op<decltype(attention_varlen_cpu)>("attention_varlen")
        .call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, window, softcap);
  }
  TORCH_CHECK(q.dim() == 3, kOp, ": q must be 3-D (total_q, q_heads, head_dim), got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 3, kOp, ": k must be 3-D (total_k, kv_heads, head_dim), got shape ", k.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), kOp, ": k and v must have the same shape, got ", k.sizes(), " and ",
              v.sizes());
  TORCH_CHECK(is_float_type(q.scalar_type()), kOp, ": q must be float32, float16 or bfloat16, got ",
              q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), kOp,
              ": q, k and v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), kOp, ": q, k and v must be on one device, got ",
              q.device(), ", ", k.device(), ", ", v.device());
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, kOp, ": max_seqlen_q / max_seqlen_k must be >= 0, got ",
              max_seqlen_q, " / ", max_seqlen_k);
  TORCH_CHECK(cu_seqlens_q.dim() == 1 && cu_seqlens_q.size(0) >= 1, kOp,
              ": cu_seqlens_q must be 1-D (batch + 1,), got shape ", cu_seqlens_q.sizes());
  TORCH_CHECK(cu_seqlens_k.dim() == 1 && cu_seqlens_k.size(0) >= 1, kOp,
              ": cu_seqlens_k must be 1-D (batch + 1,), got shape ", cu_seqlens_k.sizes());
  TORCH_CHECK(cu_seqlens_q.sizes() == cu_seqlens_k.sizes(), kOp,
              ": cu_seqlens_q and cu_seqlens_k must have the same length (batch + 1), got shapes ",
              cu_seqlens_q.sizes(), " and ", cu_seqlens_k.sizes());
  const auto cq = read_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.size(0), max_seqlen_q, "max_seqlen_q", q);
  const auto ck = read_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.size(0), max_seqlen_k, "max_seqlen_k", q);
  // Head counts, head_dim and strides are checked by the dense op on the first
  // sequence; check them here too so that an all-empty batch still rejects them.
  TORCH_CHECK(k.size(2) == q.size(2) && q.size(2) > 0, kOp, ": k has head_dim ", k.size(2), " but q has head_dim ",
              q.size(2), " (must match and be > 0)");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, kOp, ": q_heads (", q.size(1),
              ") must be a multiple of kv_heads (", k.size(1), ")");

  at::Tensor out = at::empty(q.sizes(), q.options());
  const int64_t batch = static_cast<int64_t>(cq.size()) - 1;
  static auto dense = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("fastxf::attention", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool,
                                            std::optional<double>, int64_t, double,
                                            const std::optional<at::Tensor>&)>();

  auto run_one = [&](int64_t b) {
    const int64_t q0 = cq[b], nq = cq[b + 1] - cq[b], k0 = ck[b], nk = ck[b + 1] - ck[b];
    if (nq == 0) return;  // an empty sequence owns no output rows
    at::Tensor dst = out.narrow(0, q0, nq);
    if (nk == 0) {  // queries with no key at all: zeros, as the dense op gives for fully masked rows
      dst.zero_();
      return;
    }
    auto as_dense = [](const at::Tensor& t, int64_t start, int64_t n) {
      return t.narrow(0, start, n).transpose(0, 1).unsqueeze(0);  // (1, H, n, D), last dim still contiguous
    };
    const at::Tensor o = dense.call(as_dense(q, q0, nq), as_dense(k, k0, nk), as_dense(v, k0, nk), std::nullopt,
                                    std::nullopt, causal, scale, window, softcap, std::nullopt);
    dst.copy_(o.select(0, 0).transpose(0, 1));  // o is a view of a contiguous (1, nq, Hq, D) buffer: a plain copy
  };

  // The dense op parallelises over its (head, query-block) tiles. When there are
  // many sequences, one parallel region over sequences is cheaper: it avoids a
  // region (and its barrier, where idle threads spin) per sequence; the dense op
  // then runs single-threaded inside each worker. With few sequences, each one is
  // spread over all threads instead, so a single long sequence still uses them.
  // InferenceMode: the per-sequence calls must not record autograd (this kernel
  // sits below fastxf's autograd formula already), and worker threads do not
  // inherit the caller's dispatch state.
  const int64_t threads = at::get_num_threads();
  if (batch >= 4 * threads) {
    // A sequence costs ~ nq * nk, and real batches mix lengths (e.g. 16..512:
    // costs 1000x apart), so handing each thread a contiguous block of sequences
    // (at::parallel_for's split) leaves some threads idle while one finishes its
    // long ones. Instead every thread takes the next sequence from a shared
    // counter, longest first (the classic longest-processing-time order), so the
    // threads finish within about one short sequence of each other.
    std::vector<int64_t> order(batch);
    for (int64_t b = 0; b < batch; ++b) order[b] = b;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return (cq[a + 1] - cq[a]) * (ck[a + 1] - ck[a]) > (cq[b + 1] - cq[b]) * (ck[b + 1] - ck[b]);
    });
    parallel_take(batch, threads, [&](auto next) {
      c10::InferenceMode no_autograd;
      for (int64_t i; (i = next()) < batch;) run_one(order[i]);
    });
  } else {
    c10::InferenceMode no_autograd;
    for (int64_t b = 0; b < batch; ++b) run_one(b);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastxf, CPU, m) { m.impl("attention_varlen", &attention_varlen_cpu); }

}  // namespace fastxf
