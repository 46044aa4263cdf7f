# Reference solutions for examples/08_subspaces.ipynb (see workbench.course.fill_notebook).
# Each "# %% <id>" block replaces that exercise cell; "# %% <id> wrong" is a plausible wrong answer for CI.

# %% 08.project_out
def project_out(x, B):
    # x: [tokens, width]; B: [k, width] with orthonormal rows
    return x - (x @ B.T) @ B

# %% 08.project_out wrong
def project_out(x, B):
    # keeps the component inside the subspace instead of removing it
    return (x @ B.T) @ B

# %% 08.interchange
def interchange(base, source, B):
    # base, source: [tokens, width]; B: [k, width] with orthonormal rows
    return base + (source @ B.T - base @ B.T) @ B

# %% 08.interchange wrong
def interchange(base, source, B):
    # adds the source's component without removing the base's
    return base + (source @ B.T) @ B

# %% 08.ig
import torch

def ig_riemann(f, x, baseline, steps):
    # f: activations [tokens, width] -> scalar; x, baseline: [tokens, width]
    total = torch.zeros_like(x)
    for k in range(steps):
        z = (baseline + (k + 0.5) / steps * (x - baseline)).requires_grad_(True)
        total += torch.autograd.grad(f(z), z)[0]
    return (x - baseline) * total / steps

# %% 08.ig wrong
import torch

def ig_riemann(f, x, baseline, steps):
    # gradient x (x - baseline) at x only: one step, not the path average
    z = x.clone().requires_grad_(True)
    return (x - baseline) * torch.autograd.grad(f(z), z)[0]
