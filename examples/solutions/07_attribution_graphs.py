# Reference solutions for 07_attribution_graphs.ipynb.

# %% 07.top_input
def top_input(g):
    row = g.adjacency[g.logit_start].abs()
    return g.node_ids[int(row.argmax())]

# %% 07.top_input wrong
def top_input(g):
    row = g.adjacency[g.logit_start]
    return g.node_ids[int(row.argmax())]  # only the most positive edge

# %% 07.total_effect
import torch

def total_effect(g, node):
    i, nf = g.index(node), g.n_features
    act = g.activations.double()
    per_unit = g.adjacency.double()[:, :nf] / torch.where(act.abs() > 0, act, torch.ones_like(act))
    x = torch.zeros(nf, dtype=torch.float64)
    x[i] = -act[i]  # the zeroed feature stays clamped
    free = torch.ones(nf, dtype=torch.bool)
    free[i] = False
    for _ in range(nf + 1):  # features only feed later layers: this settles in at most n_layers rounds
        new = torch.where(free, per_unit[:nf] @ x, x)
        if torch.equal(new, x):
            break
        x = new
    return float(per_unit[g.logit_start] @ x)

# %% 07.total_effect wrong
def total_effect(g, node):
    return -float(g.adjacency[g.logit_start, g.index(node)])  # the direct edge only
