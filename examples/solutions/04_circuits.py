# Reference solutions for 04_circuits.ipynb.

# %% 04.logit_diff
import torch

def logit_diff(logits, answer_ids, wrong_ids):
    rows = torch.arange(logits.shape[0])
    return logits[rows, answer_ids] - logits[rows, wrong_ids]

# %% 04.logit_diff wrong
import torch

def logit_diff(logits, answer_ids, wrong_ids):
    return logits[:, answer_ids].mean(1) - logits[:, wrong_ids].mean(1)  # mixes up the pairs

# %% 04.top_edges
def top_edges(scores, n):
    return Circuit.from_edges(scores.graph, scores.scores.abs().topk(n).indices)

# %% 04.top_edges wrong
def top_edges(scores, n):
    return Circuit.from_edges(scores.graph, scores.scores.topk(n).indices)  # drops the negative edges
