# Reference solutions for 01_tour.ipynb (kept out of the student's notebook).
# Each block replaces the exercise cell of the same id; "wrong" blocks are deliberate mistakes for CI.

# %% 01.top_token
def top_token(model, prompt):
    return model.run(prompt, top_k=1).top.tokens[0][0]

# %% 01.top_token wrong
def top_token(model, prompt):
    return model.run(prompt, top_k=2).top.tokens[0][1]  # the second most likely token

# %% 01.neuron_mean
def neuron_mean(model, prompt, layer, unit):
    acts = model.run(prompt, capture=[f"neurons.{layer}"])[f"neurons.{layer}"]
    return float(acts[0, :, unit].mean())

# %% 01.neuron_mean wrong
def neuron_mean(model, prompt, layer, unit):
    acts = model.run(prompt, capture=[f"neurons.{layer}"])[f"neurons.{layer}"]
    return float(acts[0, -1, unit])  # only the last token
