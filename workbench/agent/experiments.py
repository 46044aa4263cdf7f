"""The experiments the tools run on the agent's unit, as methods of `UnitExperiments` (mixed into `Agent`).

Per-token activations of texts (`text_records`), the unit's edit specs (`unit_spec`), the
effect of an edit on predictions and a greedy generation (`effect`), detection scores of an
explanation (`score_text`), and how each is described to the model and written as Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import ToolError
from .transcript import fmt_num

__all__ = ["UnitExperiments"]


class UnitExperiments:
    """Experiments on one unit. `Agent` provides ``model``, ``store``, ``key``, ``unit``, ``read_site``,
    ``is_feature``, ``dictionary_name``, ``top_k``, ``unit_max``, ``client`` and ``score_kwargs``."""

    def _scan_specs(self) -> list[Any]:
        return list(self.store.meta.get("interventions") or [])

    def acts_code(self, texts: list[str], var: str = "res") -> str:
        """The Python of `text_records`: run the texts, pick the unit (through the store's transform)."""
        specs = "store.meta['interventions'], " if self._scan_specs() else ""
        pick = f"res.activations[{self.read_site!r}]"
        if self.is_feature:
            pick = f"store.transforms[{self.key!r}]({pick})"
        return (f"{var} = model.run({texts!r}, {specs}capture=[{self.read_site!r}], top_k=0, logits=None)\n"
                f"acts = {pick}[..., {self.unit}]  # [texts, tokens]")

    def text_records(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """The unit on every token of each text: ``{text, tokens, acts, max, argmax, token}``."""
        res = self.model.run(list(texts), self._scan_specs() or None, capture=[self.read_site], top_k=0, logits=None)
        x = res.activations[self.read_site]
        if self.is_feature:
            x = self.store.site_transform(self.key)(x)
        acts = x[..., self.unit].float()
        return [self._record(t, [tok.text for tok in res.tokens[b]], acts[b, : res.lengths[b]].numpy())
                for b, t in enumerate(texts)]

    def _record(self, text: str, tokens: list[str], acts: np.ndarray) -> dict[str, Any]:
        first = 1 if self.store.meta.get("skip_first", True) and len(acts) > 1 else 0
        tail = acts[first:]
        j = int(np.argmax(tail)) + first if len(tail) else 0
        return {"text": text, "tokens": tokens, "acts": [float(a) for a in acts],
                "max": float(acts[j]) if len(acts) else None, "argmax": j,
                "token": tokens[j] if tokens else ""}

    def describe_record(self, rec: dict[str, Any], label: str = "") -> str:
        """One line for the model: the maximum, the most active tokens, the text around the maximum."""
        tokens, acts = rec["tokens"], rec["acts"]
        j = int(rec.get("argmax", 0))
        lo, hi = max(0, j - 12), min(len(tokens), j + 5)
        shown = "".join(tokens[lo:j]) + f"<<{tokens[j]}>>" + "".join(tokens[j + 1 : hi]) if tokens else ""
        thr = 0.25 * self.unit_max if self.unit_max > 0 else 0.0
        first = 1 if self.store.meta.get("skip_first", True) else 0
        active = sorted(((a, i) for i, a in enumerate(acts) if i >= first and a is not None and a > thr), reverse=True)[:5]
        act_txt = ", ".join(f"{tokens[i]!r} {a:.2f}" for a, i in active) or "none"
        pre = "..." if lo > 0 else ""
        post = "..." if hi < len(tokens) else ""
        return (f"{label}max {fmt_num(rec.get('max'), 2)} on {rec.get('token', '')!r}; active tokens: {act_txt}; "
                f"text: {pre}{shown}{post}").replace("\n", "⏎")

    def fallback_explanation(self, n: int = 5) -> str:
        """A description from data alone: the tokens at the unit's top exemplar maxima."""
        toks: list[str] = []
        for _, w, p in self.store.top(self.key, self.unit):
            ids = self.store.window_tokens(w)
            if p < len(ids):
                t = self.model.tokenizer.decode([ids[p]])
                if t not in toks:
                    toks.append(t)
            if len(toks) >= n:
                break
        return ("activates most on the tokens " + ", ".join(repr(t) for t in toks)) if toks else ""

    def default_prompt(self) -> str:
        """The top exemplar window up to (and including) its maximum: a prompt where the unit fires last."""
        top = self.store.top(self.key, self.unit)
        if not top:
            raise ToolError("the unit has no exemplars in the store: give a prompt")
        _, w, p = top[0]
        ids = self.store.window_tokens(w)[: p + 1]
        text = self.model.tokenizer.decode(ids, skip_special_tokens=True)
        if not text.strip():
            raise ToolError("the top exemplar has no text before its maximum: give a prompt")
        return text

    # -- specs -------------------------------------------------------------------------------------------
    def unit_spec(self, op: str, value: float | None = None) -> tuple[Any, str]:
        """The spec that zeroes / sets / scales this unit, and its Python code."""
        from ..core.sites import Site
        from ..core.specs import Edit, scale_neurons, set_neurons, zero_neurons

        if self.is_feature:
            if self.dictionary_name is None:
                raise ToolError(f"{self.key} is a dictionary feature: create the Agent with dictionary= to edit it")
            from ..dictionaries.features import scale_features, set_features, zero_features

            d = self.dictionary_name
            if op == "zero":
                return zero_features(d, [self.unit]), f"wb.dictionaries.zero_features({d!r}, [{self.unit}])"
            if op == "set":
                return set_features(d, [self.unit], value), f"wb.dictionaries.set_features({d!r}, [{self.unit}], {value!r})"
            return scale_features(d, [self.unit], value), f"wb.dictionaries.scale_features({d!r}, [{self.unit}], {value!r})"
        s = Site.parse(self.read_site)
        if s.name == "neurons":
            L = s.layer
            if op == "zero":
                return zero_neurons(L, [self.unit]), f"wb.zero_neurons({L}, [{self.unit}])"
            if op == "set":
                return set_neurons(L, [self.unit], value), f"wb.set_neurons({L}, [{self.unit}], {value!r})"
            return scale_neurons(L, [self.unit], value), f"wb.scale_neurons({L}, [{self.unit}], {value!r})"
        val = None if op == "zero" else value
        code = f"wb.Edit({self.read_site!r}, [{self.unit}], {op!r}" + (f", {val!r})" if val is not None else ")")
        return Edit(self.read_site, [self.unit], op, val), code

    def effect(self, prompt: str, spec: Any, spec_code: str, n_new: int) -> tuple[dict[str, Any], str]:
        """Predictions and a greedy generation with and without a spec (plus the unit on the prompt)."""
        base_specs = self._scan_specs()
        before = self.model.run(prompt, base_specs or None, capture=[self.read_site], top_k=self.top_k)
        after = self.model.run(prompt, base_specs + [spec], top_k=self.top_k)
        lp_b = torch.log_softmax(before.logits.float(), -1)
        lp_a = torch.log_softmax(after.logits.float(), -1)
        kl = float((lp_b.exp() * (lp_b - lp_a)).sum(-1)[0])
        rows_b, rows_a = before.top.as_rows(0), after.top.as_rows(0)
        for r in rows_b:
            r["prob_after"] = float(lp_a[0, r["id"]].exp())
        for r in rows_a:
            r["prob_before"] = float(lp_b[0, r["id"]].exp())
        gen_b = self.model.generate(prompt, base_specs or None, max_new_tokens=n_new).text
        gen_a = self.model.generate(prompt, base_specs + [spec], max_new_tokens=n_new).text
        x = before.activations[self.read_site]
        if self.is_feature:
            x = self.store.site_transform(self.key)(x)
        rec = self._record(prompt, [t.text for t in before.tokens[0]], x[0, :, self.unit].float().numpy())
        result = {"prompt": prompt, "spec": spec.to_dict(), "text": rec, "top_before": rows_b, "top_after": rows_a,
                  "kl": kl, "generation_before": gen_b, "generation_after": gen_a}
        base = "store.meta['interventions'] + " if base_specs else ""
        base0 = "store.meta['interventions']" if base_specs else "None"
        pick = f"before.activations[{self.read_site!r}]"
        if self.is_feature:
            pick = f"store.transforms[{self.key!r}]({pick})"
        code = (f"spec = {spec_code}\n"
                f"before = model.run({prompt!r}, {base0}, capture=[{self.read_site!r}], top_k={self.top_k})\n"
                f"after = model.run({prompt!r}, {base}[spec], top_k={self.top_k})\n"
                f"acts = {pick}[0, :, {self.unit}]\n"
                "kl = torch.nn.functional.kl_div(after.logits.log_softmax(-1), before.logits.log_softmax(-1), "
                "log_target=True, reduction='batchmean')\n"
                f"generation_before = model.generate({prompt!r}, {base0}, max_new_tokens={n_new}).text\n"
                f"generation_after = model.generate({prompt!r}, {base}[spec], max_new_tokens={n_new}).text")
        return result, code

    def describe_effect(self, what: str, r: dict[str, Any]) -> str:
        """The model's text for an `effect` result: KL, top predictions before/after, generations."""
        def rows(rs: list[dict], key: str) -> str:
            return ", ".join(f"{x['token']!r} {x['prob']:.2f}" + (f" (was {x[key]:.2f})" if key in x else "") for x in rs)

        return (f"{what} on the prompt {r['prompt'][-200:]!r} (the unit's activation there: max "
                f"{fmt_num(r['text']['max'], 2)} on {r['text']['token']!r}).\n"
                f"KL divergence of the next-token distribution: {r['kl']:.4f}.\n"
                f"Next-token top {self.top_k} before: {rows(r['top_before'], '_')}\n"
                f"after: {rows(r['top_after'], 'prob_before')}\n"
                f"Generation before: {r['generation_before']!r}\nGeneration after: {r['generation_after']!r}")

    def score_text(self, text: str) -> tuple[dict[str, Any], str]:
        """Detection scores of an explanation with the agent's client (JSON-ready) and the `wb.score` call."""
        from ..autointerp import score

        kw = {"explanations": None, "on_error": "skip", **self.score_kwargs}
        scores = score(self.store, self.key, self.unit, text, ["detection"], self.client, **kw)
        extra = "".join(f", {k}={v!r}" for k, v in kw.items())
        code = f"scores = wb.score(store, {self.key!r}, {self.unit}, {text!r}, ['detection'], client{extra})"
        return {k: s.to_dict() for k, s in scores.items()}, code
