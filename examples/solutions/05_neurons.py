# Reference solutions for 05_neurons.ipynb.

# %% 05.auroc
import numpy as np

def auroc(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean())

# %% 05.auroc wrong
import numpy as np

def auroc(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float((a[:, None] > b[None, :]).mean())  # ties count as zero

# %% 05.mean_difference
def mean_diff(model, a, b, layer):
    site = f"resid_post.{layer}"

    def mean(texts):
        return sum(model.run(t, capture=[site])[site][0, -1] for t in texts) / len(texts)

    return mean(a) - mean(b)

# %% 05.mean_difference wrong
def mean_diff(model, a, b, layer):
    site = f"resid_post.{layer}"
    return model.run(a[0], capture=[site])[site][0, -1] - model.run(b[0], capture=[site])[site][0, -1]  # one prompt each
