"""Reference solutions for examples/02_attention.ipynb (and the deliberately wrong answers CI runs).

Each block starts with a header line ``# %% <exercise id>`` (the solution) or ``# %% <exercise id> wrong``.
"""

# %% 02.previous_token
import torch


def previous_token_score(pattern, seq_len):
    """Mean attention from every query after the first real token to the position before it."""
    T = pattern.shape[-1]
    q = torch.arange(T - 2 * seq_len + 1, T)  # the BOS is at T - 2·seq_len - 1; skip the first real token
    return pattern[:, :, q, q - 1].mean(dim=(0, 2))


# %% 02.previous_token wrong
import torch


def previous_token_score(pattern, seq_len):
    """Off by one: the first real token's attention to the BOS is counted too."""
    T = pattern.shape[-1]
    q = torch.arange(1, T)
    return pattern[:, :, q, q - 1].mean(dim=(0, 2))


# %% 02.induction
import torch


def induction_score(pattern, seq_len):
    """Mean attention from each second-half token to the token after its first occurrence."""
    T = pattern.shape[-1]
    q = torch.arange(T - seq_len, T)
    return pattern[:, :, q, q - seq_len + 1].mean(dim=(0, 2))


# %% 02.induction wrong
import torch


def induction_score(pattern, seq_len):
    """Off by one: attention to the first occurrence itself (that is the duplicate-token score)."""
    T = pattern.shape[-1]
    q = torch.arange(T - seq_len, T)
    return pattern[:, :, q, q - seq_len].mean(dim=(0, 2))


# %% 02.top_induction_heads
def top_induction_heads(induction, n):
    """The n largest entries of the [layers, heads] tensor, as (layer, head), best first."""
    n_heads = induction.shape[1]
    flat = induction.flatten().topk(n).indices
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat]


# %% 02.top_induction_heads wrong
def top_induction_heads(induction, n):
    """Unravels the flat index with the number of layers instead of the number of heads."""
    n_layers = induction.shape[0]
    flat = induction.flatten().topk(n).indices
    return [divmod(int(i), n_layers) for i in flat]
