"""Tiny random-weight Hugging Face models shared by the placement tests
(tests/test_placement.py, tests/test_combinations.py): five layers to split into
stages, built under HF's eager attention with a fixed seed, so that every test
module builds the very same weights for the same configuration."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

VOCAB = 97
# A Llama-structured decoder (also Qwen2 / Qwen3 / Mistral / Gemma 2) with GQA.
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB)
# GPT-2: another layout (transformer.h, ln_f) and a head tied to the embeddings.
GPT2 = dict(n_embd=32, n_layer=5, n_head=4, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)


def build(family: str, config: dict, seq2seq: bool = False):
    """A `family` model with `config`'s sizes, HF's eager attention, seed 0, in eval mode."""
    cfg = AutoConfig.for_model(family, **config)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return auto.from_config(cfg).eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Autouse in the modules that import it. These models are tiny: with several
    threads on a loaded 2-core machine, thread synchronisation dominates (seconds
    instead of milliseconds per generate)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
