"""Tiny random models built from configs, with a small real tokenizer: for fast tests and demos.

`tiny_model("llama")` returns a `Model` whose Hugging Face model is a 2-layer random
Llama (also ``"gpt2"``, ``"gpt_neox"``, ``"gemma2"``, ``"qwen2"``); nothing is downloaded.
The tokenizer is a byte-level BPE trained in memory on Python's own documentation text.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on `pydoc_data.topics` (no network)."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = list(topics.values())[:200]
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return fast


def tiny_hf_model(family: str = "llama", seed: int = 0, n_layers: int = 2, vocab_size: int = 512) -> Any:
    """A small random Hugging Face causal LM of the given family, in eval mode, fp32."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, max_position_embeddings=256)
    if family in ("llama", "qwen2", "mistral"):
        cls_cfg = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[family]
        cfg = cls_cfg(hidden_size=48, intermediate_size=96, num_hidden_layers=n_layers, num_attention_heads=4,
                      num_key_value_heads=2, bos_token_id=0, eos_token_id=0, pad_token_id=0, **common)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=n_layers, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=12, bos_token_id=0, eos_token_id=0, pad_token_id=0, **common)
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_embd=48, n_layer=n_layers, n_head=4, n_positions=256, vocab_size=vocab_size,
                            bos_token_id=0, eos_token_id=0)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=48, intermediate_size=192, num_hidden_layers=n_layers, num_attention_heads=4,
                               rotary_pct=0.25, bos_token_id=0, eos_token_id=0, **common)
    else:
        raise ValueError(f"no tiny config for family {family!r}")
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # Random init leaves tiny weights; widen them so activations are not all ~0.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


def tiny_model(family: str = "llama", seed: int = 0, n_layers: int = 2, **kwargs: Any):
    """A `workbench.Model` wrapping `tiny_hf_model` with `tiny_tokenizer`."""
    from .core.loading import load

    return load(tiny_hf_model(family, seed, n_layers), tokenizer=tiny_tokenizer(), **kwargs)
