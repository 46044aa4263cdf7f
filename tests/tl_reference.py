"""TransformerLens references for the tests: a workbench tiny model converted by transformer-lens's own
weight conversion (GPT-2 or Llama family), processed with the flags given."""

from __future__ import annotations

import torch

#: TransformerLens's processing, all off (what ``from_pretrained_no_processing`` does)
NO_PROCESSING = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                 "fold_value_biases": False}


def hooked(model, flags: dict | None = None, cls=None):
    """``model`` (a workbench tiny model) as a HookedTransformer (or ``cls``), processed with ``flags``
    (default: no processing), with ``hook_mlp_in`` on."""
    import transformer_lens as tl
    from transformer_lens.pretrained.weight_conversions import (
        convert_gpt2_weights,
        convert_llama_weights,
    )

    c, a = model.hf.config, model.arch
    common = dict(n_layers=a.n_layers, d_model=a.d_model, n_heads=a.n_heads, d_head=a.d_head, d_mlp=a.d_mlp,
                  d_vocab=a.vocab, n_ctx=256, device="cpu", dtype=torch.float32, default_prepend_bos=False)
    if a.family == "gpt2":
        cfg = tl.HookedTransformerConfig(act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
                                         positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
                                         **common)
        sd = convert_gpt2_weights(model.hf, cfg)
    else:
        cfg = tl.HookedTransformerConfig(act_fn="silu", normalization_type="RMS", eps=c.rms_norm_eps, gated_mlp=True,
                                         positional_embedding_type="rotary", rotary_dim=a.d_head,
                                         rotary_base=int(c.rope_parameters["rope_theta"]),
                                         n_key_value_heads=c.num_key_value_heads, final_rms=True,
                                         original_architecture="LlamaForCausalLM", **common)
        sd = convert_llama_weights(model.hf, cfg)
    ht = (cls or tl.HookedTransformer)(cfg)
    ht.load_and_process_state_dict(sd, **(NO_PROCESSING if flags is None else flags))
    ht.set_use_hook_mlp_in(True)
    return ht.eval()
