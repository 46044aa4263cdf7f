# Reference solutions for examples/06_dictionaries.ipynb (see workbench.course.fill_notebook).
# Each "# %% <id>" block replaces that exercise cell; "# %% <id> wrong" is a plausible wrong answer for CI.

# %% 06.encode
import torch

def encode(x, sae):
    # x: [n, d_in] activations; return the latents [n, d_sae]
    pre = (x - sae.b_pre) @ sae.W_enc + sae.b_enc
    vals, idx = torch.topk(pre, sae.k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

# %% 06.encode wrong
import torch

def encode(x, sae):
    # forgets the top-k: a ReLU over every pre-activation
    pre = (x - sae.b_pre) @ sae.W_enc + sae.b_enc
    return torch.relu(pre)

# %% 06.fvu
def fvu(x, x_hat):
    # x, x_hat: [n, d]; return one number
    err = ((x - x_hat) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    return float(err / total)

# %% 06.fvu wrong
def fvu(x, x_hat):
    # divides by the raw sum of squares (no centring)
    return float(((x - x_hat) ** 2).sum() / (x ** 2).sum())
