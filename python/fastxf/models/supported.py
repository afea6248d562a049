"""The architectures fastxf.optimize is tested on: one table, used by
tests/test_models.py (which builds, optimizes and checks each entry) and by
`python -m fastxf.models.supported [--write]`, which prints (or writes) the
README's list, docs/supported_models.md. A test fails if that file is stale.

Each entry builds a tiny random model from its config (no download).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

# Shared tiny sizes: hidden 64, 2 layers, 4 heads (2 KV heads where GQA exists), vocab 128.
_DEC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
            max_position_embeddings=128)


HF_NOT_INTERFACE = "HF (attention does not go through AttentionInterface)"
# Attention modules outside the interface, run on fastxf by fastxf.models.adapters.
FASTXF_ADAPTER = "fastxf (adapter)"
HF_POSITION_BIAS = "HF per call (learned position bias the kernel does not take)"
_SMALL = dict(static_cache=False, generate="greedy")
_LATER = "transformers 5.17 still has its own attention here (stays on HF there); 5.24 uses the interface"


@dataclass(frozen=True)
class Arch:
    name: str  # what the README shows
    model_type: str  # transformers config model_type
    model_class: str  # transformers class to instantiate
    task: str  # "causal_lm", "encoder", "seq2seq", "speech_seq2seq", "vision"
    config: dict = field(default_factory=dict)
    attention: str = "fastxf"  # "fastxf", or why it stays on HF: HF_NOT_INTERFACE, HF_POSITION_BIAS
    generate: str = "greedy, beam, sampling"  # what the test runs (generating tasks)
    fused_residual: bool = False  # residual add fused into the post-attention norm
    static_cache: bool = True  # greedy generate with cache_implementation="static" is tested (generating tasks)
    notes: str = ""


ARCHS: list[Arch] = [
    Arch("GPT-2", "gpt2", "GPT2LMHeadModel", "causal_lm",
         dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=128, bos_token_id=1, eos_token_id=2)),
    Arch("OPT", "opt", "OPTForCausalLM", "causal_lm",
         dict(hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4, vocab_size=128,
              max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2, eos_token_id=2)),
    Arch("Llama", "llama", "LlamaForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2),
         fused_residual=True, notes="GQA"),
    Arch("Mistral", "mistral", "MistralForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2, sliding_window=5),
         fused_residual=True, notes="sliding window 5 (shorter than the test prompts)"),
    Arch("Qwen2", "qwen2", "Qwen2ForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2),
         fused_residual=True, static_cache=True),
    Arch("Qwen3", "qwen3", "Qwen3ForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2, head_dim=16),
         fused_residual=True, notes="per-head q/k RMSNorms"),
    Arch("Gemma", "gemma", "GemmaForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=1, head_dim=16),
         fused_residual=True, notes="(1 + weight) RMSNorm, MQA"),
    Arch("Gemma 2", "gemma2", "Gemma2ForCausalLM", "causal_lm",
         dict(_DEC, num_key_value_heads=2, head_dim=16, sliding_window=5, query_pre_attn_scalar=16,
              attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
         notes="softcap, alternating sliding-window layers; four norms per layer, so no fused residual"),
    Arch("Phi-3", "phi3", "Phi3ForCausalLM", "causal_lm",
         dict(_DEC, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
         notes="residual dropouts in the layer: residual not fused"),
    Arch("GPT-NeoX", "gpt_neox", "GPTNeoXForCausalLM", "causal_lm",
         dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
              max_position_embeddings=128, rotary_pct=0.5), notes="parallel residual"),
    Arch("StarCoder2", "starcoder2", "Starcoder2ForCausalLM", "causal_lm",
         dict(_DEC, num_key_value_heads=2, sliding_window=5, bos_token_id=1, eos_token_id=2), fused_residual=True,
         notes="LayerNorm with bias (fused residual via layer_norm), sliding window"),
    Arch("BERT", "bert", "BertModel", "encoder",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
              max_position_embeddings=64)),
    Arch("RoBERTa", "roberta", "RobertaModel", "encoder",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
              max_position_embeddings=64, pad_token_id=1)),
    Arch("DistilBERT", "distilbert", "DistilBertModel", "encoder",
         dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=128, max_position_embeddings=64)),
    Arch("ViT", "vit", "ViTModel", "vision",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
              patch_size=8)),
    Arch("BART", "bart", "BartForConditionalGeneration", "seq2seq",
         dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=128, max_position_embeddings=64),
         notes="self, causal and cross attention"),
    Arch("Whisper", "whisper", "WhisperForConditionalGeneration", "speech_seq2seq",
         dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=128, num_mel_bins=16, max_source_positions=16,
              max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
              suppress_tokens=None, begin_suppress_tokens=None),
         static_cache=False, notes="cross attention"),
    # Further architectures through the interface (lighter checks: forward + greedy generate).
    Arch("OLMo 2", "olmo2", "Olmo2ForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2), **_SMALL,
         notes="post-norms and q/k norms: residual not fused"),
    Arch("Granite", "granite", "GraniteForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2),
         fused_residual=True, **_SMALL, notes="fused only because residual_multiplier is 1.0 here (probe-checked)"),
    Arch("SmolLM3", "smollm3", "SmolLM3ForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2, pad_token_id=0),
         fused_residual=True, **_SMALL),
    Arch("Gemma 3 (text)", "gemma3_text", "Gemma3ForCausalLM", "causal_lm",
         dict(_DEC, num_key_value_heads=2, head_dim=16, sliding_window=5), **_SMALL),
    Arch("Qwen2-MoE", "qwen2_moe", "Qwen2MoeForCausalLM", "causal_lm",
         dict(_DEC, num_key_value_heads=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
              num_experts_per_tok=2), fused_residual=True, **_SMALL),
    Arch("GPT-BigCode", "gpt_bigcode", "GPTBigCodeForCausalLM", "causal_lm",
         dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=128, bos_token_id=1, eos_token_id=2),
         **_SMALL, notes="multi-query"),
    Arch("GPT-J", "gptj", "GPTJForCausalLM", "causal_lm",
         dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, rotary_dim=8, bos_token_id=1, eos_token_id=2), **_SMALL,
         notes=_LATER),
    Arch("CodeGen", "codegen", "CodeGenForCausalLM", "causal_lm",
         dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=128, n_ctx=128, rotary_dim=8, bos_token_id=1,
              eos_token_id=2), **_SMALL),
    Arch("Cohere", "cohere", "CohereForCausalLM", "causal_lm",
         dict(_DEC, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2), **_SMALL),
    Arch("ELECTRA", "electra", "ElectraModel", "encoder",
         dict(hidden_size=64, embedding_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              vocab_size=128, max_position_embeddings=64)),
    Arch("XLM-RoBERTa", "xlm-roberta", "XLMRobertaModel", "encoder",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
              max_position_embeddings=64, pad_token_id=1)),
    Arch("mBART", "mbart", "MBartForConditionalGeneration", "seq2seq",
         dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=128, max_position_embeddings=64), **_SMALL),
    # Norms on fastxf, attention left on HF (and why).
    Arch("T5", "t5", "T5ForConditionalGeneration", "seq2seq",
         dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=128, decoder_start_token_id=0),
         attention=HF_POSITION_BIAS, **_SMALL, notes=_LATER),
    # Attention modules that bypass AttentionInterface: fastxf.models.adapters (tests/test_adapters.py goes further:
    # left and right padding, beam and seeded sampling compared token for token, fallbacks).
    Arch("BLOOM", "bloom", "BloomForCausalLM", "causal_lm", dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=128),
         attention=FASTXF_ADAPTER, notes="ALiBi (positions over real tokens)"),
    Arch("Falcon", "falcon", "FalconForCausalLM", "causal_lm",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128), attention=FASTXF_ADAPTER,
         notes="multi-query, parallel attention"),
    Arch("Falcon (new decoder architecture)", "falcon", "FalconForCausalLM", "causal_lm",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, new_decoder_architecture=True,
              num_kv_heads=2), attention=FASTXF_ADAPTER, notes="grouped KV heads"),
    Arch("Falcon-RW (ALiBi)", "falcon", "FalconForCausalLM", "causal_lm",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128, alibi=True, multi_query=False,
              parallel_attn=False, bias=True), attention=FASTXF_ADAPTER, static_cache=False,
         notes="HF eager applies the ALiBi slope twice, sdpa once: the adapter follows the configured one; HF's own "
         "static-cache generate fails here"),
    Arch("MPT", "mpt", "MptForCausalLM", "causal_lm", dict(d_model=64, n_heads=4, n_layers=2, vocab_size=128),
         attention=FASTXF_ADAPTER, notes="ALiBi"),
    Arch("GPT-Neo", "gpt_neo", "GPTNeoForCausalLM", "causal_lm",
         dict(hidden_size=64, num_layers=2, num_heads=4, vocab_size=128, max_position_embeddings=128,
              attention_types=[[["global", "local"], 1]], window_size=4, bos_token_id=1, eos_token_id=2),
         attention=FASTXF_ADAPTER, static_cache=False, notes="unscaled scores, local layers (window 4); static cache: prefill on HF (its causal buffer is "
         "bottom-right aligned)"),
    Arch("XGLM", "xglm", "XGLMForCausalLM", "causal_lm",
         dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, vocab_size=128, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=1, eos_token_id=2), attention=FASTXF_ADAPTER),
    Arch("FSMT", "fsmt", "FSMTForConditionalGeneration", "seq2seq",
         dict(langs=["en", "de"], src_vocab_size=128, tgt_vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2,
              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
              max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2),
         attention=FASTXF_ADAPTER, static_cache=False, notes="fairseq layout, self and cross attention"),
    Arch("RemBERT", "rembert", "RemBertModel", "encoder",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
              max_position_embeddings=64, input_embedding_size=32, output_embedding_size=32),
         attention=FASTXF_ADAPTER, notes="BERT-style self-attention outside the interface (also Megatron-BERT, TAPAS, "
         "ViLT, VisualBERT: tests/test_adapters.py)"),
    Arch("Megatron-BERT", "megatron-bert", "MegatronBertModel", "encoder",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
              max_position_embeddings=64), attention=FASTXF_ADAPTER),
    Arch("TAPAS", "tapas", "TapasModel", "encoder",
         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=128,
              max_position_embeddings=64), attention=FASTXF_ADAPTER),
    Arch("RoFormer", "roformer", "RoFormerModel", "encoder",
         dict(hidden_size=64, embedding_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              vocab_size=128, max_position_embeddings=64), attention=FASTXF_ADAPTER, notes="rotary, BERT-style"),
    # Norms without an eps attribute: eps found by probing (fastxf.models.adapters.norm_eps).
    Arch("OLMo", "olmo", "OlmoForCausalLM", "causal_lm", dict(_DEC, num_key_value_heads=2, pad_token_id=0), **_SMALL,
         notes="parameter-free LayerNorm, eps 1e-5 found by probing"),
]


def build(arch: Arch, attn_implementation: str = "eager"):
    """A tiny random model for `arch` (float32, eval mode)."""
    import transformers

    cfg = transformers.AutoConfig.for_model(arch.model_type, **arch.config)
    cfg._attn_implementation = attn_implementation
    model = getattr(transformers, arch.model_class)(cfg)
    return model.eval()


def table(archs=ARCHS) -> str:
    """The Markdown table of tested architectures (also embedded in README.md)."""
    lines = [
        "| Architecture | transformers class | Attention | Norms | Fused residual + norm | Generate checked | Notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in archs:
        gen = "n/a" if a.task in ("encoder", "vision") else a.generate + (", static cache" if a.static_cache else "")
        lines.append(
            f"| {a.name} | `{a.model_class}` | {a.attention} | fastxf | {'yes' if a.fused_residual else 'no'} | {gen} | "
            f"{a.notes} |"
        )
    return "\n".join(lines) + "\n"


def markdown(archs=ARCHS) -> str:
    return "\n".join([
        "<!-- generated by `python -m fastxf.models.supported --write` from fastxf/models/supported.py; "
        "tests/test_models.py checks every row and that this file is current -->",
        "# Architectures tested with fastxf.optimize",
        "",
        "Each row is built from a tiny random config and checked on CPU in float32 against "
        "`attn_implementation=\"eager\"`: outputs on a padded batch (rel. error < 1e-4), fastxf kernels called with "
        "no fallback, state dict unchanged, greedy / beam / sampled generate, and `revert` bit-identical.",
        "",
        table(archs),
    ])


# README.md carries the same table between these markers.
README_BEGIN = "<!-- supported-models: generated by `python -m fastxf.models.supported --write` -->"
README_END = "<!-- /supported-models -->"


def with_readme_table(readme: str, archs=ARCHS) -> str:
    """README text with the block between the markers replaced by the current table."""
    start = readme.index(README_BEGIN) + len(README_BEGIN)
    end = readme.index(README_END)
    return readme[:start] + "\n" + table(archs) + readme[end:]


def doc_path() -> str:
    """docs/supported_models.md of the checkout we run in (the current directory): the
    installed package has no docs/ beside it."""
    return os.path.join(os.getcwd(), "docs", "supported_models.md")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastxf.models.supported", description=__doc__)
    p.add_argument("--write", action="store_true", help="write docs/supported_models.md and the table in README.md (run from the checkout)")
    args = p.parse_args(argv)
    text = markdown()
    if args.write:
        os.makedirs(os.path.dirname(doc_path()), exist_ok=True)
        with open(doc_path(), "w") as f:
            f.write(text)
        readme = os.path.join(os.getcwd(), "README.md")
        with open(readme) as f:
            updated = with_readme_table(f.read())
        with open(readme, "w") as f:
            f.write(updated)
        print(f"wrote {doc_path()} and the table in {readme}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
