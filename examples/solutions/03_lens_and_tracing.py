# Reference solutions for 03_lens_and_tracing.ipynb.

# %% 03.logit_lens
import torch

def lens_at(model, prompt, layer):
    resid = model.run(prompt, capture=[f"resid_post.{layer}"])[f"resid_post.{layer}"][0, -1]
    with torch.no_grad():
        logits = model.hf.lm_head(model.hf.model.norm(resid))
    return torch.log_softmax(logits.float(), -1)

# %% 03.logit_lens wrong
import torch

def lens_at(model, prompt, layer):
    resid = model.run(prompt, capture=[f"resid_post.{layer}"])[f"resid_post.{layer}"][0, -1]
    with torch.no_grad():
        logits = model.hf.lm_head(resid)  # forgot the final norm
    return torch.log_softmax(logits.float(), -1)

# %% 03.restored
def restored(raw, clean_metric, corrupted_metric):
    return (raw - corrupted_metric) / (clean_metric - corrupted_metric)

# %% 03.restored wrong
def restored(raw, clean_metric, corrupted_metric):
    return raw / clean_metric  # ignores where the corrupted run starts
