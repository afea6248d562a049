"""The ops' C++ autograd kernels (csrc/autograd.cpp) and their fastxf::*_backward ops.

- a call that records no graph never enters Python (no torch.library autograd
  layer, no fastxf Python code): checked with a profiler hook, which does see
  the Python backward when a gradient is asked for;
- gradients with only some inputs requiring grad match the float64 reference's,
  and the inputs that do not require grad get none;
- a compiled training step (attention + rms_norm, fullgraph, static and dynamic
  shapes) traces the backward ops through their fakes and matches eager;
- opcheck of the backward ops (fake vs real, AOT dispatch);
- what did not work before still fails loudly (double backward, forward AD).
Gradients of every option are in tests/test_attention*.py and tests/test_norm.py.
"""

from __future__ import annotations

import sys

import pytest
import torch

import fastxf.ops
from fastxf.ops import reference
from fastxf.ops.attention_varlen import reference_attention_varlen

OPS = ("attention", "attention_varlen", "layer_norm", "rms_norm")


def attention_inputs():
    q = torch.randn(2, 4, 5, 16)
    k, v = torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    return q, k, v


def varlen_inputs():
    cu_q = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 6, 11], dtype=torch.int32)
    return torch.randn(8, 4, 16), torch.randn(11, 2, 16), torch.randn(11, 2, 16), cu_q, cu_k


def calls(name, q, k, v, x, w, b, r):
    """One call of torch.ops.fastxf.<name> with the given tensors."""
    if name == "attention":
        return torch.ops.fastxf.attention(q, k, v, None, None, True, None, 0, 0.0, None)
    if name == "attention_varlen":
        cu = torch.tensor([0, 2, 5], dtype=torch.int32)
        return torch.ops.fastxf.attention_varlen(q[0].transpose(0, 1)[:5], k[0].transpose(0, 1)[:5],
                                                 v[0].transpose(0, 1)[:5], cu, cu, 3, 3, True, None, 0, 0.0)
    if name == "layer_norm":
        return torch.ops.fastxf.layer_norm(x, w, b, 1e-5, r, None)
    return torch.ops.fastxf.rms_norm(x, w, 1e-6, r, False, None)


def python_files_entered(fn):
    """The Python source files whose functions ran during fn(), outside this test file
    and torch/_ops.py (OpOverloadPacket.__call__, the Python entry of every torch.ops call)."""
    seen = set()

    def hook(frame, event, arg):
        if event == "call":
            seen.add(frame.f_code.co_filename)

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return {f for f in seen if not f.endswith(("test_autograd.py", "torch/_ops.py"))}


@pytest.mark.parametrize("name", OPS)
def test_autograd_kernel_is_cpp(name):
    dump = torch._C._dispatch_dump(f"fastxf::{name}")
    line = next(line for line in dump.splitlines() if line.startswith("Autograd"))
    # A Python kernel (torch.library.register_autograd) is registered from
    # torch/library.py and is boxed only.
    assert "csrc/autograd.cpp" in line and "unboxed" in line, line
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastxf::{name}_backward", "CompositeExplicitAutograd")


@pytest.mark.parametrize("name", OPS)
def test_no_graph_no_python(name):
    q, k, v = attention_inputs()
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    w, b = torch.randn(16), torch.randn(16)
    plain = (q, k, v, x, w, b, r)
    grad = [t.clone().requires_grad_() for t in plain]
    calls(name, *plain)  # warm-up (lazy imports)

    entered = python_files_entered(lambda: calls(name, *plain))  # grad mode on, no input requires grad
    with torch.no_grad():
        entered |= python_files_entered(lambda: calls(name, *grad))
    with torch.inference_mode():
        entered |= python_files_entered(lambda: calls(name, *grad))
    assert entered == set()

    def training():  # the hook does see Python: the backward op's implementation
        out = calls(name, *grad)
        out = out if isinstance(out, torch.Tensor) else out[0]
        out.sum().backward()

    assert any("fastxf" in f for f in python_files_entered(training))


def grads_vs_reference(fn, ref_fn, inputs, wanted):
    """Runs fn (fastxf, float32) and ref_fn (float64) with inputs[i] requiring grad for i in
    wanted; compares their gradients, and checks the other inputs got none."""
    leaves = [t.clone().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
    ref_leaves = [t.double().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
    outs, ref_outs = fn(*leaves), ref_fn(*ref_leaves)
    weights = [torch.randn(o.shape, dtype=torch.float64) for o in ref_outs]
    sum(((o.double() * w).sum() for o, w in zip(outs, weights)), torch.zeros((), dtype=torch.float64)).backward()
    sum(((o * w).sum() for o, w in zip(ref_outs, weights)), torch.zeros((), dtype=torch.float64)).backward()
    for i, (a, b) in enumerate(zip(leaves, ref_leaves)):
        if i in wanted:
            assert a.grad is not None and a.grad.dtype == a.dtype, i
            torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5, msg=f"grad of input {i}")
        else:
            assert a.grad is None, i


@pytest.mark.parametrize("wanted", [{2}, {0}, {1}, {0, 2}])
def test_attention_some_inputs_require_grad(wanted):
    q, k, v = attention_inputs()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :2] = False
    slopes = torch.rand(4)
    kw = dict(causal=True, softcap=5.0, alibi_slopes=slopes)
    grads_vs_reference(
        lambda q, k, v: (fastxf.ops.attention(q, k, v, key_padding_mask=mask, **kw),),
        lambda q, k, v: (reference.attention(q, k, v, mask, None, **kw),),
        [q, k, v],
        wanted,
    )


@pytest.mark.parametrize("wanted", [{1}, {2}])
def test_attention_varlen_some_inputs_require_grad(wanted):
    q, k, v, cu_q, cu_k = varlen_inputs()
    grads_vs_reference(
        lambda q, k, v: (fastxf.ops.attention_varlen(q, k, v, cu_q, cu_k, 5, 5, causal=True, window=3),),
        lambda q, k, v: (reference_attention_varlen(q, k, v, cu_q, cu_k, causal=True, window=3),),
        [q, k, v],
        wanted,
    )


@pytest.mark.parametrize("wanted", [{1}, {2}, {0, 1}, {3}])
def test_layer_norm_some_inputs_require_grad(wanted):
    x, r = torch.randn(5, 24), torch.randn(5, 24)
    w, b = torch.randn(24), torch.randn(24)
    grads_vs_reference(
        lambda x, w, b, r: fastxf.ops.layer_norm(x, w, b, 1e-5, residual=r),
        lambda x, w, b, r: reference.layer_norm(x, w, b, 1e-5, r),
        [x, w, b, r],
        wanted,
    )


@pytest.mark.parametrize("wanted", [{1}, {2}, {0}])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_norm_some_inputs_require_grad(wanted, unit_offset):
    x, w, r = torch.randn(5, 24), torch.randn(24), torch.randn(5, 24)
    grads_vs_reference(
        lambda x, w, r: fastxf.ops.rms_norm(x, w, 1e-6, residual=r, unit_offset=unit_offset),
        lambda x, w, r: reference.rms_norm(x, w, 1e-6, r, unit_offset),
        [x, w, r],
        wanted,
    )


def test_norm_only_residual_output_used():
    # The normalised output is unused (its gradient arrives undefined): x and the
    # residual get the new residual's gradient, the weight zeros.
    x, w, r = (t.requires_grad_() for t in (torch.randn(3, 8), torch.randn(8), torch.randn(3, 8)))
    _, new_r = fastxf.ops.rms_norm(x, w, 1e-6, residual=r)
    g = torch.randn(3, 8)
    new_r.backward(g)
    torch.testing.assert_close(x.grad, g, rtol=0, atol=0)
    torch.testing.assert_close(r.grad, g, rtol=0, atol=0)
    assert x.grad.data_ptr() != g.data_ptr() and r.grad.data_ptr() != g.data_ptr()
    torch.testing.assert_close(w.grad, torch.zeros(8), rtol=0, atol=0)


def test_alibi_slopes_get_no_grad():
    # As before the C++ kernels: an output that depends on slopes requiring grad
    # requires grad, but the slopes get no gradient (the backward returns None).
    q, k, v = attention_inputs()
    slopes = torch.rand(4, requires_grad=True)
    out = fastxf.ops.attention(q, k, v, causal=True, alibi_slopes=slopes)
    assert out.requires_grad
    out.sum().backward()
    assert slopes.grad is None


class Block(torch.nn.Module):
    def __init__(self, heads=4, kv_heads=2, head_dim=8):
        super().__init__()
        hidden = heads * head_dim
        self.shape = heads, kv_heads, head_dim
        self.norm_weight = torch.nn.Parameter(torch.rand(hidden) + 0.5)
        self.qkv = torch.nn.Linear(hidden, (heads + 2 * kv_heads) * head_dim)
        self.out = torch.nn.Linear(hidden, hidden)

    def forward(self, x, residual):
        heads, kv_heads, d = self.shape
        h, residual = fastxf.ops.rms_norm(x, self.norm_weight, 1e-6, residual=residual)
        B, S, _ = h.shape
        q, k, v = self.qkv(h).split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
        q = q.view(B, S, heads, d).transpose(1, 2)
        k = k.view(B, S, kv_heads, d).transpose(1, 2)
        v = v.view(B, S, kv_heads, d).transpose(1, 2)
        a = fastxf.ops.attention(q, k, v, causal=True)
        return self.out(a.transpose(1, 2).reshape(B, S, -1)), residual


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_training_step(dynamic):
    from torch._dynamo.backends.common import aot_autograd

    backward_graphs = []

    def bw_compiler(gm, example_inputs):
        backward_graphs.append(str(gm.graph))
        return gm

    backend = aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=bw_compiler)
    torch._dynamo.reset()
    block = Block()
    x, residual = torch.randn(2, 6, 32), torch.randn(2, 6, 32, requires_grad=True)

    def step(model):
        out, new_residual = model(x, residual)
        loss = (out * out).mean() + new_residual.mean()
        loss.backward()
        return loss.detach()

    # Training-style compile: AOTAutograd traces forward and backward (the
    # backward ops through their fakes); the backward runs the compiled graph.
    loss = step(torch.compile(block, fullgraph=True, dynamic=dynamic, backend=backend))
    grads = {n: p.grad.clone() for n, p in block.named_parameters()}
    grad_residual = residual.grad.clone()
    block.zero_grad(set_to_none=True)
    residual.grad = None
    torch.testing.assert_close(loss, step(block))
    for n, p in block.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)
    torch.testing.assert_close(grad_residual, residual.grad, rtol=1e-5, atol=1e-6)
    assert len(backward_graphs) == 1
    assert "fastxf.attention_backward" in backward_graphs[0] and "fastxf.rms_norm_backward" in backward_graphs[0]


def backward_op_cases():
    q, k, v = attention_inputs()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 3:] = False
    vq, vk, vv, cu_q, cu_k = varlen_inputs()
    x, r, w, b = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16), torch.randn(16)
    return [
        (torch.ops.fastxf.attention_backward.default,
         (torch.randn(2, 4, 5, 16), q, k, v, mask, None, True, None, 0, 0.0, None, [True, False, True])),
        (torch.ops.fastxf.attention_varlen_backward.default,
         (torch.randn(8, 4, 16), vq, vk, vv, cu_q, cu_k, 5, 5, True, 0.3, 0, 0.0, [False, True, True])),
        (torch.ops.fastxf.layer_norm_backward.default,
         (torch.randn(3, 16), None, x, w, b, 1e-5, r, None, [True, True, False, True])),
        (torch.ops.fastxf.rms_norm_backward.default,
         (None, torch.randn(3, 16), x, w, 1e-6, r, True, torch.float32, [True, True, True])),
    ]


@pytest.mark.parametrize("case", range(4), ids=[f"{n}_backward" for n in OPS])
def test_opcheck_backward_ops(case):
    op, args = backward_op_cases()[case]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_backward_under_dispatch_mode():
    # A TorchDispatchMode runs the backward ops' kernels with autograd excluded;
    # their recompute must still work (it did with the Python autograd kernels).
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = (t.requires_grad_() for t in attention_inputs())
    w = torch.randn(16, requires_grad=True)
    with FlopCounterMode(display=False):
        out = fastxf.ops.attention(q, k, v, causal=True)
        out, _ = fastxf.ops.rms_norm(out, w, 1e-6, residual=out)
        out.sum().backward()
    assert all(t.grad is not None for t in (q, k, v, w))
    grads = [t.grad for t in (q, k, v, w)]
    for t in (q, k, v, w):
        t.grad = None
    out = fastxf.ops.attention(q, k, v, causal=True)
    out, _ = fastxf.ops.rms_norm(out, w, 1e-6, residual=out)
    out.sum().backward()
    for got, t in zip(grads, (q, k, v, w)):
        torch.testing.assert_close(got, t.grad, rtol=0, atol=0)


def test_double_backward_raises():
    # Never supported (the backward's recompute is detached); it must not pass silently.
    q, k, v = (t.requires_grad_() for t in attention_inputs())
    (g,) = torch.autograd.grad(fastxf.ops.attention(q, k, v).sum(), q, create_graph=True)
    assert not g.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        g.sum().backward()


def test_forward_ad_raises():
    import torch.autograd.forward_ad as fwAD

    q, k, v = attention_inputs()
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="jvp"):
        fastxf.ops.attention(fwAD.make_dual(q, torch.randn_like(q)), k, v)
