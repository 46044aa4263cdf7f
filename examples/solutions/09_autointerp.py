# Reference solutions for 09_autointerp.ipynb.

# %% 09.normalize
import math

def normalize(acts, max_activation):
    if not max_activation > 0:
        return [0] * len(acts)
    return [min(10, math.floor(10 * max(0.0, float(a)) / max_activation)) for a in acts]

# %% 09.normalize wrong
import math

def normalize(acts, max_activation):
    return [round(10 * float(a) / max_activation) for a in acts]  # no relu, no floor, no cap

# %% 09.detection_score
import numpy as np

def detection_score(labels, preds):
    y, p = np.asarray(labels, bool), np.asarray(preds, bool)
    tp, fp, fn, tn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum()
    balanced = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
    f1 = 2 * tp / (2 * tp + fp + fn)
    return float(balanced), float(f1)

# %% 09.detection_score wrong
import numpy as np

def detection_score(labels, preds):
    y, p = np.asarray(labels, bool), np.asarray(preds, bool)
    tp, fp = (y & p).sum(), (~y & p).sum()
    return float((y == p).mean()), float(tp / (tp + fp))  # plain accuracy, and precision for F1

# %% 09.hypothesis
def my_hypothesis(tokens, i):
    return tokens[i] == " only"

# %% 09.hypothesis wrong
def my_hypothesis(tokens, i):
    return tokens[i].startswith(" ")  # every word: far too broad
