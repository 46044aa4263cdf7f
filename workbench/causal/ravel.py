"""RAVEL-style evaluation (Huang et al. 2024): does a method's unit for attribute A *cause* A and *isolate* it?

    ds = load_ravel(model)                         # the shipped cities, kept where the model is right
    units = {"pca": units_from_pca(model, ds, "resid_post.6", k=8),
             "neurons": units_from_probe(model, ds, "neurons.6", k=32)}
    res = ravel_scores(model, ds, units)           # methods x attributes, with Wilson intervals
    res.to_pandas(); res.plot()

A dataset has entities (cities), attributes (country, continent, language), prompt templates per
attribute and each entity's single-token answer. `load_ravel` keeps the entities whose attributes the
model gets right (greedy top-1) and builds counterfactual pairs: a base and a source entity whose
values of the attribute differ, in the same template, with prompts of equal token length (others are
dropped and counted). For a method's unit (a `Subspace`) for attribute A:

- **cause**: on A's pairs, interchanging the unit from the source run makes the model's top-1
  token the source's value of A;
- **isolate**: on every other attribute B's pairs, the same interchange leaves the top-1 token at the
  base's value of B.

The interchange acts at the entity's last token (``positions="entity"``, as in RAVEL), at the last
token (``"last"``) or at given positions. Intervals are Wilson score intervals over the pairs.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import WorkbenchError
from ..core.sites import Site
from .subspaces import Subspace, SubspaceInterchange

__all__ = [
    "RavelError", "RavelWarning", "RavelPair", "RavelDataset", "RavelResult", "DEFAULT_RAVEL", "load_ravel",
    "ravel_scores", "ravel_features", "units_from_pca", "units_from_mean_difference", "units_from_probe",
    "units_from_sae", "units_from_das", "wilson_interval",
]

#: The dataset shipped with the project (cities; country, continent, language).
DEFAULT_RAVEL = Path(__file__).resolve().parents[1] / "data" / "ravel_cities.json"
POSITIONS = ("entity", "last")


class RavelError(WorkbenchError, ValueError):
    """A RAVEL dataset, pair or unit that cannot be used."""


class RavelWarning(UserWarning):
    """Entities, answers or pairs were dropped while building a RAVEL dataset."""


@dataclass(frozen=True)
class RavelPair:
    """A counterfactual pair: ``base`` and ``source`` entity in the same ``template`` of ``attribute``.

    ``entity_position``: the index of the entity's last token (the same in both prompts).
    """

    attribute: str
    template: str
    base: str
    source: str
    base_prompt: str
    source_prompt: str
    entity_position: int
    length: int


@dataclass
class RavelDataset:
    """Kept entities (``name -> {attribute: answer}``), templates, pairs per attribute and what was dropped."""

    attributes: list[str]
    templates: dict[str, list[str]]
    entities: dict[str, dict[str, str]]
    answer_ids: dict[str, dict[str, int]]  # attribute -> answer text -> token id
    correct: dict[str, dict[str, list[str]]]  # attribute -> entity -> templates the model gets right
    pairs: dict[str, list[RavelPair]]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_entities(self) -> int:
        return len(self.entities)

    def values(self, attribute: str) -> list[str]:
        """The distinct answers of ``attribute`` among the kept entities, sorted."""
        return sorted({e[attribute] for e in self.entities.values()})

    def prompts(self, attribute: str | None = None) -> list[tuple[str, str, str]]:
        """``(entity, attribute, template)`` for every template the model gets right (of one attribute or all)."""
        out = []
        for a in [attribute] if attribute else self.attributes:
            for name, tpls in self.correct[a].items():
                out += [(name, a, t) for t in tpls]
        return out

    def split(self, test_size: float = 0.5, seed: int = 0) -> tuple[RavelDataset, RavelDataset]:
        """(fit, test): the entities split at random; each side keeps the pairs within it."""
        if not 0 < float(test_size) < 1:
            raise RavelError(f"test_size is a fraction between 0 and 1, not {test_size!r}")
        names = sorted(self.entities)
        random.Random(seed).shuffle(names)
        n_test = max(1, min(len(names) - 1, round(len(names) * float(test_size))))
        return self.subset(names[n_test:]), self.subset(names[:n_test])

    def das_pairs(self, attribute: str, offset: int | str | None = "entity") -> tuple[list[tuple], int | None]:
        """``(pairs, offset)``: the attribute's pairs as DAS tuples ``(base, source, base_answer_id,
        source_answer_id)``, keeping those whose entity's last token sits ``offset`` tokens from the
        prompt's end (``"entity"``: the most common offset; ``None``: every pair).

        DAS shares its positions (counted from each prompt's end) across pairs, so ``positions=offset``
        is the entity's token in every pair returned: ``train_das(model, site, pairs, positions=offset)``.
        """
        if attribute not in self.pairs:
            raise RavelError(f"unknown attribute {attribute!r}: the dataset has {self.attributes}")
        ps = self.pairs[attribute]
        if not ps:
            raise RavelError(f"attribute {attribute!r} has no pairs: keep more entities (or templates)")
        offsets = [p.entity_position - p.length for p in ps]
        if offset == "entity":
            offset = max(sorted(set(offsets)), key=offsets.count)
        elif offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
            raise RavelError(f"offset is 'entity', None or a negative int, not {offset!r}")
        ids = self.answer_ids[attribute]
        out = [(p.base_prompt, p.source_prompt, ids[self.entities[p.base][attribute]],
                ids[self.entities[p.source][attribute]]) for p, o in zip(ps, offsets, strict=True)
               if offset is None or o == offset]
        if not out:
            raise RavelError(f"attribute {attribute!r}: no pair has its entity at offset {offset} "
                             f"(the offsets are {sorted(set(offsets))})")
        return out, offset

    def subset(self, names: Sequence[str]) -> RavelDataset:
        """The dataset restricted to the entities ``names`` (pairs with both ends among them)."""
        keep = set(names)
        unknown = keep - set(self.entities)
        if unknown:
            raise RavelError(f"unknown entities {sorted(unknown)[:5]}: the dataset has {sorted(self.entities)[:5]}...")
        return RavelDataset(
            list(self.attributes), dict(self.templates), {n: e for n, e in self.entities.items() if n in keep},
            self.answer_ids, {a: {n: t for n, t in c.items() if n in keep} for a, c in self.correct.items()},
            {a: [p for p in ps if p.base in keep and p.source in keep] for a, ps in self.pairs.items()},
            {**self.report, "subset_of": self.n_entities})

    def __repr__(self) -> str:
        pairs = ", ".join(f"{a}: {len(p)}" for a, p in self.pairs.items())
        return (f"RavelDataset({self.n_entities} of {self.report.get('n_entities', '?')} entities kept; "
                f"pairs {pairs})")


# -- loading -----------------------------------------------------------------------------------
def _raw(data: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if data is None:
        data = DEFAULT_RAVEL
    if isinstance(data, (str, Path)):
        try:
            data = json.loads(Path(data).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RavelError(f"cannot read the RAVEL dataset {str(data)!r}: {e}") from None
    if not isinstance(data, Mapping):
        raise RavelError(f"a RAVEL dataset is a dict (or its JSON file), not {type(data).__name__}")
    for key in ("attributes", "templates", "entities"):
        if key not in data:
            raise RavelError(f"the RAVEL dataset lacks {key!r}: it needs 'attributes', 'templates' and 'entities'")
    return dict(data)


def answer_tokens(model: Any, answer: str) -> list[int]:
    """The token ids of ``answer`` as a continuation (no special tokens)."""
    return list(model.tokenizer(answer, add_special_tokens=False)["input_ids"])


def _entity_position(model: Any, template: str, name: str) -> tuple[int, int]:
    """(the index of the entity's last token, the prompt's token count) in ``template`` filled with ``name``."""
    start = template.index("{entity}")
    prefix = template[:start].replace("{{", "{").replace("}}", "}")
    end = len(prefix) + len(name)
    toks = model.tokenize(template.format(entity=name)).tokens[0]
    pos = max(i for i, t in enumerate(toks) if t.end > t.start and t.start < end)
    return pos, len(toks)


def load_ravel(model: Any, data: str | Path | Mapping[str, Any] | None = None, *,
               attributes: Sequence[str] | None = None, max_pairs: int | None = 200, seed: int = 0,
               batch_size: int = 32, verbose: bool = True) -> RavelDataset:
    """Load a RAVEL-like dataset (default: the shipped cities), keep what ``model`` gets right, build pairs.

    1. Answers that are several tokens long for the model's tokenizer are dropped with a
       `RavelWarning` (and the entity with them); an attribute left with no answer is an error.
    2. Every (entity, template) prompt runs once (batched); an entity is kept when, for every
       attribute, the model's greedy top-1 token is its answer on at least one template.
    3. Pairs per attribute: base != source entity with different values of the attribute, on a
       template both get right, of equal token length and entity position (others are dropped and
       counted). At most ``max_pairs`` per attribute, sampled with ``seed``.

    ``report`` holds the counts; ``verbose`` prints them.
    """
    raw = _raw(data)
    attrs = list(attributes) if attributes is not None else list(raw["attributes"])
    bad = [a for a in attrs if a not in raw["attributes"] or a not in raw["templates"]]
    if bad:
        raise RavelError(f"unknown attribute(s) {bad}: the dataset has {list(raw['attributes'])}")
    if not attrs:
        raise RavelError("no attributes given")
    templates = {a: [str(t) for t in raw["templates"][a]] for a in attrs}
    for a, ts in templates.items():
        if not ts or any(t.count("{entity}") != 1 for t in ts):
            raise RavelError(f"attribute {a!r}: each template must hold '{{entity}}' exactly once, not {ts}")
    n_total = len(raw["entities"])
    # 1. single-token answers
    answer_ids: dict[str, dict[str, int]] = {a: {} for a in attrs}
    multi: dict[str, list[str]] = {}
    entities: dict[str, dict[str, str]] = {}
    for e in raw["entities"]:
        name = e.get("name")
        if not name or any(a not in e for a in attrs):
            raise RavelError(f"entity {e!r:.80} needs a 'name' and an answer for each of {attrs}")
        ok = True
        for a in attrs:
            ids = answer_tokens(model, e[a])
            if len(ids) != 1:
                multi.setdefault(a, []).append(f"{e[a]!r} ({len(ids)} tokens, {name})")
                ok = False
            else:
                answer_ids[a][e[a]] = ids[0]
        if ok:
            entities[name] = {a: e[a] for a in attrs}
    for a in attrs:
        if not answer_ids[a]:
            raise RavelError(f"attribute {a!r}: every answer is several tokens long for this tokenizer "
                             f"({'; '.join(multi.get(a, [])[:4])}): RAVEL scores need single-token answers")
    if multi:
        warnings.warn("dropped entities with multi-token answers: " + "; ".join(
            f"{a}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}" for a, v in multi.items()), RavelWarning,
            stacklevel=2)
    # 2. what the model gets right
    jobs = [(n, a, t) for n in entities for a in attrs for t in templates[a]]
    correct: dict[str, dict[str, list[str]]] = {a: {} for a in attrs}
    for i in range(0, len(jobs), max(1, int(batch_size))):
        chunk = jobs[i:i + batch_size]
        res = model.run([t.format(entity=n) for n, _, t in chunk], top_k=1)
        for (n, a, t), top in zip(chunk, res.top.ids[:, 0].tolist(), strict=True):
            if top == answer_ids[a][entities[n][a]]:
                correct[a].setdefault(n, []).append(t)
    kept = {n: e for n, e in entities.items() if all(n in correct[a] for a in attrs)}
    correct = {a: {n: ts for n, ts in c.items() if n in kept} for a, c in correct.items()}
    # 3. pairs
    rng = random.Random(seed)
    pairs: dict[str, list[RavelPair]] = {}
    unequal: dict[str, int] = {}
    shape: dict[tuple[str, str], tuple[int, int]] = {}
    for a in attrs:
        cands = [(b, s, t) for t in templates[a] for b in kept for s in kept
                 if b != s and kept[b][a] != kept[s][a] and t in correct[a][b] and t in correct[a][s]]
        rng.shuffle(cands)
        out, dropped = [], 0
        for b, s, t in cands:
            if max_pairs is not None and len(out) >= max_pairs:
                break
            for n in (b, s):
                if (t, n) not in shape:
                    shape[(t, n)] = _entity_position(model, t, n)
            if shape[(t, b)] != shape[(t, s)]:
                dropped += 1
                continue
            pos, L = shape[(t, b)]
            out.append(RavelPair(a, t, b, s, t.format(entity=b), t.format(entity=s), pos, L))
        pairs[a], unequal[a] = out, dropped
    report = {"n_entities": n_total, "n_single_token": len(entities), "n_kept": len(kept),
              "multi_token": multi, "correct_prompts": {a: sum(len(v) for v in c.values()) for a, c in correct.items()},
              "pairs": {a: len(p) for a, p in pairs.items()}, "unequal_length_dropped": unequal}
    ds = RavelDataset(attrs, templates, kept, answer_ids, correct, pairs, report)
    if verbose:
        print(f"RAVEL: kept {len(kept)} of {n_total} entities ({len(entities)} with single-token answers; "
              f"the model gets every attribute right on some template for {len(kept)}); pairs "
              + ", ".join(f"{a}: {len(p)} ({unequal[a]} of unequal length dropped)" for a, p in pairs.items()))
    return ds


# -- features for the unit builders ----------------------------------------------------------------
def _positions(positions: Any, pair_or_pos: int) -> list[int]:
    if isinstance(positions, str):
        if positions not in POSITIONS:
            raise RavelError(f"positions must be one of {POSITIONS} or a list of token indices, not {positions!r}")
        return [pair_or_pos] if positions == "entity" else [-1]
    if isinstance(positions, int):
        return [int(positions)]
    return [int(p) for p in positions]


def ravel_features(model: Any, dataset: RavelDataset, site: str, positions: Any = "entity", *,
                   batch_size: int = 32) -> tuple[torch.Tensor, list[str]]:
    """Activations at ``site`` (``[n, width]`` float64, averaged over ``positions``) of every prompt
    the model gets right, and the entity of each row."""
    key = str(Site.parse(site))
    jobs = dataset.prompts()
    if not jobs:
        raise RavelError("the dataset has no prompts the model gets right: nothing to fit units on")
    rows, names = [], []
    for i in range(0, len(jobs), max(1, int(batch_size))):
        chunk = jobs[i:i + batch_size]
        res = model.run([t.format(entity=n) for n, _, t in chunk], capture=[key], top_k=0, logits=None)
        x = res.activations[key]
        for j, (n, _, t) in enumerate(chunk):
            pos = _positions(positions, _entity_position(model, t, n)[0])
            L = res.lengths[j]
            rows.append(x[j, [p + L if p < 0 else p for p in pos]].double().mean(0))
            names.append(n)
    return torch.stack(rows), names


def _labels(dataset: RavelDataset, attribute: str, names: list[str]) -> torch.Tensor:
    vals = dataset.values(attribute)
    return torch.tensor([vals.index(dataset.entities[n][attribute]) for n in names])


def _eta_squared(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The correlation ratio of each column of ``x [n, d]`` with the classes ``y``: SS_between / SS_total."""
    mean = x.mean(0)
    total = ((x - mean) ** 2).sum(0)
    between = torch.zeros_like(mean)
    for c in y.unique():
        xc = x[y == c]
        between += xc.shape[0] * (xc.mean(0) - mean) ** 2
    return torch.where(total > 0, between / total.clamp_min(1e-30), torch.zeros_like(total))


def _check_k(k: int, width: int, what: str) -> int:
    k = int(k)
    if not 1 <= k <= width:
        raise RavelError(f"{what}: k={k} is out of range: k must be between 1 and {width}")
    return k


def _attrs(dataset: RavelDataset, attributes: Sequence[str] | None) -> list[str]:
    attrs = list(attributes) if attributes is not None else list(dataset.attributes)
    bad = [a for a in attrs if a not in dataset.attributes]
    if bad:
        raise RavelError(f"unknown attribute(s) {bad}: the dataset has {dataset.attributes}")
    return attrs


def units_from_pca(model: Any, dataset: RavelDataset, site: str, k: int, *, positions: Any = "entity",
                   attributes: Sequence[str] | None = None, features: tuple | None = None) -> dict[str, Subspace]:
    """The top-``k`` principal directions of the entity activations (the same unit for every attribute)."""
    x, _ = features or ravel_features(model, dataset, site, positions)
    k = _check_k(k, min(x.shape[0] - 1, x.shape[1]), "units_from_pca")
    _, sv, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    ratio = (sv[:k] ** 2 / (sv ** 2).sum().clamp_min(1e-30)).tolist()
    sub = Subspace.from_directions(site, vh[:k], f"pca{k}", {"method": "pca", "explained_variance_ratio": ratio})
    return {a: sub for a in _attrs(dataset, attributes)}


def units_from_mean_difference(model: Any, dataset: RavelDataset, site: str, k: int | None = None, *,
                               positions: Any = "entity", attributes: Sequence[str] | None = None,
                               features: tuple | None = None) -> dict[str, Subspace]:
    """Per attribute, the span of its values' mean differences (each value's mean minus the overall
    mean): their top-``k`` singular directions (``k=None``: all, at most the number of values - 1)."""
    x, names = features or ravel_features(model, dataset, site, positions)
    out = {}
    for a in _attrs(dataset, attributes):
        y = _labels(dataset, a, names)
        means = torch.stack([x[y == c].mean(0) for c in y.unique()]) - x.mean(0)
        most = max(1, len(means) - 1)
        kk = most if k is None else _check_k(k, min(most, x.shape[1]), f"units_from_mean_difference({a!r}) "
                                             f"with {len(means)} values")
        _, _, vh = torch.linalg.svd(means, full_matrices=False)
        out[a] = Subspace.from_directions(site, vh[:kk], f"meandiff{kk}:{a}", {"method": "mean_difference"})
    return out


def _basis_vectors(units: Sequence[int], width: int) -> torch.Tensor:
    b = torch.zeros(len(units), width)
    b[torch.arange(len(units)), torch.tensor(list(units))] = 1.0
    return b


def units_from_probe(model: Any, dataset: RavelDataset, site: str, k: int, *, positions: Any = "entity",
                     attributes: Sequence[str] | None = None, probe: Any = None,
                     features: tuple | None = None) -> dict[str, Subspace]:
    """Per attribute, the top-``k`` units (neurons at ``neurons.L``, or dimensions of any site) as basis vectors.

    Units are ranked as sparse probing ranks neurons, for a many-valued attribute: by their
    correlation ratio with the attribute (between-value over total variance) on the dataset.
    ``probe``: instead, a `workbench.sparse_probe` result (or ``{attribute: result}``) whose
    ``selected[k]`` ``(layer, unit)`` pairs at the site's layer are used.
    """
    s = Site.parse(site)
    out = {}
    attrs = _attrs(dataset, attributes)
    if probe is not None:
        width = model.arch.size(s)
        for a in attrs:
            p = probe[a] if isinstance(probe, Mapping) else probe
            sel = getattr(p, "selected", None)
            if not isinstance(sel, Mapping) or k not in sel:
                raise RavelError(f"probe for {a!r} has no selected[{k}] (a sparse_probe result with k={k} in its ks)")
            units = [int(u) for layer, u in sel[k] if int(layer) == s.layer]
            if not units:
                raise RavelError(f"the probe for {a!r} selected no neuron at layer {s.layer} ({site})")
            out[a] = Subspace(site, _basis_vectors(units, width), f"probe{len(units)}:{a}",
                              {"method": "probe", "units": units})
        return out
    x, names = features or ravel_features(model, dataset, site, positions)
    k = _check_k(k, x.shape[1], "units_from_probe")
    for a in attrs:
        score = _eta_squared(x, _labels(dataset, a, names))
        units = score.topk(k).indices.tolist()
        out[a] = Subspace(site, _basis_vectors(units, x.shape[1]), f"neurons{k}:{a}",
                          {"method": "probe", "units": units})
    return out


def units_from_sae(dictionary: Any, model: Any, dataset: RavelDataset, k: int, *, positions: Any = "entity",
                   attributes: Sequence[str] | None = None, features: tuple | None = None) -> dict[str, Subspace]:
    """Per attribute, the span of the decoder rows (``W_dec``) of the ``k`` SAE latents most correlated with it.

    Latents are ranked by their correlation ratio with the attribute on the dataset's entity
    activations, encoded by ``dictionary`` (an SAE at ``dictionary.site``; not a transcoder).
    """
    if getattr(dictionary, "out_site", None):
        raise RavelError(f"units_from_sae needs an SAE, not a transcoder ({dictionary.site} -> "
                         f"{dictionary.out_site}): its decoder rows live at another site")
    site = str(Site.parse(dictionary.site))
    x, names = features or ravel_features(model, dataset, site, positions)
    with torch.no_grad():
        z = dictionary.encode(x.to(dtype=dictionary.W_dec.dtype, device=dictionary.W_dec.device)).double().cpu()
    k = _check_k(k, z.shape[1], "units_from_sae")
    out = {}
    for a in _attrs(dataset, attributes):
        score = _eta_squared(z, _labels(dataset, a, names))
        latents = score.topk(k).indices.tolist()
        dirs = dictionary.W_dec[latents].detach().double().cpu()
        out[a] = Subspace.from_directions(site, dirs, f"sae{k}:{a}", {"method": "sae", "latents": latents})
    return out


def units_from_das(model: Any, dataset: RavelDataset, site: str, k: int = 1, *, positions: Any = "entity",
                   attributes: Sequence[str] | None = None, mdas: bool = False, **das_options: Any) -> dict[str, Subspace]:
    """Per attribute, the subspace `workbench.causal.das.train_das` learns on the attribute's pairs
    (``mdas=True``: with the other attributes' pairs as RAVEL's isolate objective, MDAS).

    DAS shares one position (from each prompt's end) across its pairs: with ``positions="entity"``
    it trains on the pairs whose entity sits at the most common offset from the end. ``das_options``
    go to `train_das` (``steps``, ``lr``, ``batch_size``, ...); ``meta`` records the IIA.
    """
    try:
        from .das import train_das
    except ImportError as e:  # another module; report clearly where it is missing
        raise RavelError(f"DAS is not available ({e}): workbench.causal.das.train_das is needed") from None
    out = {}
    for a in _attrs(dataset, attributes):
        if positions == "entity":
            pairs, offset = dataset.das_pairs(a, "entity")
            pos = [offset]
        else:
            (pairs, offset), pos = dataset.das_pairs(a, None), _positions(positions, 0)
        iso = None
        if mdas:
            iso = [t for b in dataset.attributes if b != a and dataset.pairs[b]
                   for t in _offset_pairs(dataset, b, offset)] or None
        res = train_das(model, site, pairs, k=int(k), positions=pos,
                        isolate=iso, **{"progress": False, **das_options})
        sub = res.subspace
        out[a] = Subspace(sub.site, sub.basis, f"{'mdas' if mdas else 'das'}{sub.k}:{a}",
                          {"method": "mdas" if mdas else "das", "iia": res.iia, "train_iia": res.train_iia},
                          non_orthonormal="fix")
    return out


def _offset_pairs(dataset: RavelDataset, attribute: str, offset: int | None) -> list[tuple]:
    """The attribute's DAS pairs at ``offset`` (none when no pair has its entity there)."""
    try:
        return dataset.das_pairs(attribute, offset)[0]
    except RavelError:
        return []


# -- scoring ---------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``(nan, nan)`` for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + confidence / 2)).item()
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class RavelResult:
    """Cause and isolate scores, one row per (method, attribute), with Wilson intervals."""

    rows: list[dict[str, Any]]
    confidence: float = 0.95
    report: dict[str, Any] = field(default_factory=dict)

    def to_pandas(self):
        """One row per (method, attribute): cause, isolate, their intervals and counts, and their mean."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def table(self, score: str = "cause"):
        """Methods x attributes of one score (``"cause"``, ``"isolate"`` or ``"disentangle"``)."""
        return self.to_pandas().pivot(index="method", columns="attribute", values=score)

    def plot(self, ax: Any = None):
        """Cause and isolate per (method, attribute) as bars with their intervals."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4, 1.2 * len(self.rows)), 3))
        labels = [f"{r['method']}\n{r['attribute']}" for r in self.rows]
        xs = range(len(self.rows))
        for off, key in ((-0.2, "cause"), (0.2, "isolate")):
            v = [r[key] for r in self.rows]
            err = [[r[key] - r[f"{key}_lo"] for r in self.rows], [r[f"{key}_hi"] - r[key] for r in self.rows]]
            ax.bar([x + off for x in xs], v, 0.4, yerr=err, label=key, capsize=2)
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.legend()
        return ax

    def __repr__(self) -> str:
        lines = [f"{'method':<14}{'attribute':<12}{'cause':>18}{'isolate':>18}"]
        for r in self.rows:
            lines.append(f"{r['method']:<14}{r['attribute']:<12}"
                         f"{r['cause']:>6.2f} [{r['cause_lo']:.2f},{r['cause_hi']:.2f}]"
                         f"{r['isolate']:>6.2f} [{r['isolate_lo']:.2f},{r['isolate_hi']:.2f}]")
        return "\n".join(lines)


def _check_pair(model: Any, pair: RavelPair, positions: Any) -> list[int]:
    nb, ns = len(model.tokenize(pair.base_prompt).tokens[0]), len(model.tokenize(pair.source_prompt).tokens[0])
    if nb != ns:
        raise RavelError(f"pair {pair.base!r} / {pair.source!r} ({pair.attribute}): the prompts have {nb} and {ns} "
                         "tokens; an interchange needs prompts of equal length (load_ravel drops such pairs)")
    return _positions(positions, pair.entity_position)


def _answer_id(model: Any, dataset: RavelDataset, attribute: str, answer: str) -> int:
    ids = dataset.answer_ids.get(attribute, {}).get(answer)
    if ids is None:
        toks = answer_tokens(model, answer)
        if len(toks) != 1:
            raise RavelError(f"attribute {attribute!r}: the answer {answer!r} is {len(toks)} tokens long; "
                             "cause and isolate compare the top-1 token, so answers must be single tokens")
        ids = toks[0]
    return ids


def _hits(model: Any, dataset: RavelDataset, sub: Subspace, pairs: list[RavelPair], positions: Any,
          target: str, batch_size: int) -> list[bool]:
    """Per pair: whether the interchanged run's top-1 is the ``target`` ("source" or "base") entity's answer.

    Pairs run in batches of equal prompt length (positions count from each prompt's start, and a
    batch's positions must fit every prompt in it); the answers come back in the pairs' order."""
    checked = [(_check_pair(model, p, positions), p) for p in pairs]
    by_length: dict[int, list[int]] = {}
    for i, (_, p) in enumerate(checked):
        by_length.setdefault(len(model.tokenize(p.base_prompt).tokens[0]), []).append(i)
    out: list[bool | None] = [None] * len(pairs)
    step = max(1, int(batch_size))
    for idx in by_length.values():
        for c in range(0, len(idx), step):
            chunk = idx[c:c + step]
            specs, want = [], []
            for j, i in enumerate(chunk):
                pos, p = checked[i]
                specs.append(SubspaceInterchange(sub, p.source_prompt, pos, pos, rows=[j]))
                ent = p.source if target == "source" else p.base
                want.append(_answer_id(model, dataset, p.attribute, dataset.entities[ent][p.attribute]))
            res = model.run([checked[i][1].base_prompt for i in chunk], specs, top_k=1)
            for i, t, w in zip(chunk, res.top.ids[:, 0].tolist(), want, strict=True):
                out[i] = int(t) == w
    return [bool(x) for x in out]


def ravel_scores(model: Any, dataset: RavelDataset, units: Mapping[str, Mapping[str, Subspace]], *,
                 positions: Any = "entity", max_pairs: int | None = None, confidence: float = 0.95,
                 batch_size: int = 32) -> RavelResult:
    """RAVEL's cause and isolate scores of each method's unit per attribute (see the module doc).

    ``units``: ``{method: {attribute: Subspace}}``. ``positions``: ``"entity"`` (the entity's last
    token), ``"last"`` or token indices (the same in base and source). ``max_pairs`` caps the pairs
    used per attribute (the first ones). Isolate runs on the pairs of every other attribute of the
    dataset; with one attribute only, isolate is NaN.
    """
    if not isinstance(units, Mapping) or not units:
        raise RavelError("units is {method: {attribute: Subspace}} with at least one method")
    rows = []
    for method, per_attr in units.items():
        if not isinstance(per_attr, Mapping):
            raise RavelError(f"units[{method!r}] is {{attribute: Subspace}}, not {type(per_attr).__name__}")
        for a, sub in per_attr.items():
            if a not in dataset.attributes:
                raise RavelError(f"units[{method!r}] names attribute {a!r}; the dataset has {dataset.attributes}")
            if not isinstance(sub, Subspace):
                raise RavelError(f"units[{method!r}][{a!r}] is a Subspace, not {type(sub).__name__}")
            cause_pairs = dataset.pairs[a][:max_pairs]
            if not cause_pairs:
                raise RavelError(f"attribute {a!r} has no pairs: keep more entities (or templates)")
            cause = _hits(model, dataset, sub, cause_pairs, positions, "source", batch_size)
            iso: list[bool] = []
            for b in dataset.attributes:
                if b != a:
                    iso += _hits(model, dataset, sub, dataset.pairs[b][:max_pairs], positions, "base", batch_size)
            c, n_c, s_i, n_i = sum(cause), len(cause), sum(iso), len(iso)
            c_lo, c_hi = wilson_interval(c, n_c, confidence)
            i_lo, i_hi = wilson_interval(s_i, n_i, confidence)
            cs, iso_s = c / n_c, (s_i / n_i if n_i else math.nan)
            rows.append({"method": method, "attribute": a, "k": sub.k, "site": sub.site,
                         "cause": cs, "cause_lo": c_lo, "cause_hi": c_hi, "n_cause": n_c,
                         "isolate": iso_s, "isolate_lo": i_lo, "isolate_hi": i_hi, "n_isolate": n_i,
                         "disentangle": (cs + iso_s) / 2})
    return RavelResult(rows, confidence, {"positions": positions, "chance_cause": {
        a: 1 / max(1, len(dataset.values(a)) - 1) for a in dataset.attributes}})
