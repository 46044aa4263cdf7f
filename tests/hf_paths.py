"""Where things live in each Hugging Face family, written out independently of workbench.core.arch.

The hand-written references in the tests hook these modules directly.
"""

PATHS = {
    "llama": dict(layers="model.layers", embed="model.embed_tokens", attn="self_attn", o_proj="self_attn.o_proj",
                  mlp="mlp", down="mlp.down_proj", norm="model.norm"),
    "gpt2": dict(layers="transformer.h", embed="transformer.wte", attn="attn", o_proj="attn.c_proj",
                 mlp="mlp", down="mlp.c_proj", norm="transformer.ln_f"),
    "gpt_neox": dict(layers="gpt_neox.layers", embed="gpt_neox.embed_in", attn="attention",
                     o_proj="attention.dense", mlp="mlp", down="mlp.dense_4h_to_h", norm="gpt_neox.final_layer_norm"),
}
PATHS["gemma2"] = PATHS["qwen2"] = PATHS["llama"]
