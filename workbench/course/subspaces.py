"""Exercises of ``08_subspaces.ipynb``: projecting a subspace out, a subspace interchange, integrated gradients."""

from __future__ import annotations

from typing import Any

from ._feedback import Wrong, as_tensor, attempt, expect_close
from ._registry import exercise

BASE, SOURCE = "Paris is a city in the country of", "Rome is a city in the country of"
_SEED = 0


def _site(model: Any, site: str | None) -> str:
    return site if site is not None else f"resid_post.{model.n_layers // 2}"


def _subspace(model: Any, subspace: Any, site: str | None, k: int = 3) -> Any:
    """The subspace given, or ``k`` random orthonormal directions at ``site`` (seeded)."""
    import torch

    from workbench.causal.subspaces import Subspace
    from workbench.core.sites import Site

    if subspace is not None:
        if not isinstance(subspace, Subspace):
            raise Wrong(f"subspace=... should be a workbench Subspace, not {type(subspace).__name__}")
        return subspace
    s = _site(model, site)
    width = model.arch.size(Site.parse(s))
    g = torch.Generator().manual_seed(_SEED)
    return Subspace.from_directions(s, torch.randn(k, width, generator=g), name="checker")


def _acts(model: Any, prompt: str, site: str, specs: list | None = None) -> Any:
    return model.run(prompt, specs or [], capture=[site], top_k=0, logits=None).activations[site][0].float()


def _same_within(a: Any, make: Any) -> bool:
    """Whether ``a`` equals ``make()`` (a common mistake's value; False when that cannot be computed)."""
    import torch

    try:
        b = make()
    except Exception:  # the mistake does not apply to these shapes
        return False
    return tuple(a.shape) == tuple(b.shape) and bool(torch.allclose(a, b, atol=1e-4, rtol=1e-3))


@exercise("08.project_out", "ablate a subspace: project an activation's component in it out")
def check_project_out(answer: Any, model: Any, subspace: Any = None, prompt: str = BASE, site: str | None = None) -> str:
    """``answer(x, B) -> x'``: ``x [tokens, width]``, ``B [k, width]`` orthonormal rows; compared with `ablate_subspace`'s run."""
    import torch

    from workbench.causal.subspaces import ablate_subspace

    sub = _subspace(model, subspace, site)
    x = _acts(model, prompt, sub.site)
    ref = _acts(model, prompt, sub.site, [ablate_subspace(sub)])
    B = sub.basis.clone()
    got = as_tensor(attempt(answer, x.clone(), B.clone(), what="your project_out"), "your ablated activations")
    try:
        expect_close(got, ref, what="your ablated activations", atol=1e-4, rtol=1e-3)
    except Wrong as exc:
        hints = []
        if _same_within(got, lambda: x @ B.T @ B):
            hints.append("that is the component inside the subspace; the ablation keeps everything else: x minus it")
        elif tuple(got.shape) == tuple(x.shape) and torch.allclose(got, x, atol=1e-6):
            hints.append("your function returned x unchanged")
        hint = ("; " + "; ".join(hints)) if hints else ". The ablation is x - (x @ B.T) @ B (B holds one direction per row)"
        raise Wrong(f"{exc}{hint}") from None
    left = float((got.double() @ B.double().T).abs().max())
    return (f"your ablation matches ablate_subspace at {sub.site} (k={sub.k}) on {x.shape[0]} tokens; "
            f"what is left has coordinates at most {left:.1e} in the subspace")


@exercise("08.interchange", "a subspace interchange: the base activation with the source's coordinates")
def check_interchange(answer: Any, model: Any, subspace: Any = None, base: str = BASE, source: str = SOURCE,
                      site: str | None = None) -> str:
    """``answer(base, source, B) -> patched``: activations ``[tokens, width]``; compared with `interchange_subspace`'s run."""
    from workbench.causal.subspaces import interchange_subspace

    sub = _subspace(model, subspace, site)
    h, s = _acts(model, base, sub.site), _acts(model, source, sub.site)
    if h.shape != s.shape:
        raise Wrong(f"the checker's base and source prompts must have the same number of tokens, got "
                    f"{h.shape[0]} and {s.shape[0]}")
    ref = _acts(model, base, sub.site, [interchange_subspace(sub, source)])
    B = sub.basis.clone()
    got = as_tensor(attempt(answer, h.clone(), s.clone(), B.clone(), what="your interchange"),
                    "your patched activations")
    try:
        expect_close(got, ref, what="your patched activations", atol=1e-4, rtol=1e-3)
    except Wrong as exc:
        P = B.T @ B
        hints = []
        if _same_within(got, lambda: s):
            hints.append("you returned the whole source activation (a full patch); only the projection onto the "
                         "subspace comes from the source")
        elif _same_within(got, lambda: s - s @ P + h @ P):
            hints.append("base and source are swapped: keep the base's part outside the subspace, take the "
                         "source's coordinates inside it")
        elif _same_within(got, lambda: h + s @ P):
            hints.append("you added the source's component but did not remove the base's own component first")
        hint = ("; " + "; ".join(hints)) if hints else ". The interchange is base + (source @ B.T - base @ B.T) @ B"
        raise Wrong(f"{exc}{hint}") from None
    return (f"your interchange matches interchange_subspace at {sub.site} (k={sub.k}): {base!r} with the "
            f"coordinates of {source!r}")


def _metric_of_site(model: Any, prompt: str, layer: int, target: int, foil: int) -> Any:
    """``f(z)``: the last position's logit difference with ``neurons.<layer>`` set to ``z [tokens, d_mlp]``
    (a plain forward pre-hook on the MLP's output projection; differentiable in ``z``)."""
    import torch

    from workbench.core.arch import resolve

    a = model.arch
    proj = resolve(resolve(model.hf, a.layers)[layer], a.mlp_out_proj)
    ids = model.tokenize(prompt).input_ids

    def f(z: Any) -> Any:
        if not isinstance(z, torch.Tensor) or tuple(z.shape[-2:]) != (ids.shape[1], a.d_mlp):
            raise ValueError(f"f takes the site's activations [{ids.shape[1]}, {a.d_mlp}] (tokens, neurons), "
                             f"got {getattr(z, 'shape', type(z).__name__)}")
        lead = z.shape[:-2]
        zb = z.reshape(-1, ids.shape[1], a.d_mlp)

        def pre(_m: Any, args: tuple) -> tuple:
            return (zb.to(args[0].dtype),) + tuple(args[1:])

        handle = proj.register_forward_pre_hook(pre)
        try:
            with model.lock:
                out = model.hf(input_ids=ids.expand(zb.shape[0], -1).to(model.hf.device), use_cache=False)
        finally:
            handle.remove()
        lg = out.logits[:, -1].float()
        return (lg[:, target] - lg[:, foil]).reshape(lead)

    return f


@exercise("08.ig", "integrated gradients as a Riemann sum (midpoint rule)")
def check_ig(answer: Any, model: Any, prompt: str = "The Eiffel Tower is in the city of",
             corrupted: str = "The Colosseum is in the city of", target: str = " Paris", foil: str = " Rome",
             layer: int | None = None, steps: int = 8) -> str:
    """``answer(f, x, baseline, steps) -> [tokens, width]``: IG of ``f`` from ``baseline`` to ``x``; compared with
    `workbench.integrated_gradients` on ``neurons.<layer>`` with the corrupted prompt's activations as the baseline."""
    import torch

    from workbench.causal.attribution import integrated_gradients
    L = model.n_layers // 2 if layer is None else int(layer)
    site = f"neurons.{L}"
    x = _acts(model, prompt, site)
    xb = _acts(model, corrupted, site)
    if x.shape != xb.shape:
        raise Wrong(f"the checker's prompt and corrupted prompt must have the same number of tokens, got "
                    f"{x.shape[0]} and {xb.shape[0]}")
    t, fo = model.token_id(target, "target"), model.token_id(foil, "foil")
    ref = integrated_gradients(model, prompt, site, target=target, foil=foil, baseline=xb.clone(), steps=steps,
                               progress=False)
    f = _metric_of_site(model, prompt, L, t, fo)
    got = as_tensor(attempt(answer, f, x.clone(), xb.clone(), steps, what="your integrated gradients"),
                    "your attributions")
    scale = float(ref.attributions.abs().max())
    try:
        expect_close(got, ref.attributions, what="your attributions", atol=1e-3 * scale + 1e-6, rtol=1e-2)
    except Wrong as exc:
        hints = []
        if tuple(got.shape) == tuple(x.shape):
            def grad_at(alpha: float) -> Any:
                z = (xb + alpha * (x - xb)).requires_grad_(True)
                return torch.autograd.grad(f(z), z)[0]

            diff = x - xb
            close = {"that is the gradient at x times (x - baseline): one step, not the average along the path":
                     diff * grad_at(1.0),
                     "the left rule (alpha = k/m) starts at the baseline; use the midpoint alpha = (k + 1/2)/m":
                     diff * torch.stack([grad_at(k / steps) for k in range(steps)]).mean(0)}
            for h, v in close.items():
                if torch.allclose(got, v.float(), atol=1e-3 * scale + 1e-6, rtol=1e-2):
                    hints.append(h)
                    break
            g_avg = ref.attributions / torch.where(diff.abs() > 1e-8, diff, torch.ones_like(diff))
            if not hints and torch.allclose(got, g_avg, atol=1e-3 * scale + 1e-6, rtol=1e-2):
                hints.append("that is the averaged gradient; multiply it by (x - baseline)")
        hint = ("; " + "; ".join(hints)) if hints else (
            ". IG = (x - baseline) * mean over k of grad f(baseline + alpha_k (x - baseline)), alpha_k = (k + 1/2)/m")
        raise Wrong(f"{exc}{hint}") from None
    total = float(got.sum())
    return (f"your attributions match integrated_gradients at {site} ({steps} midpoint steps); they sum to "
            f"{total:+.3f} against f(x) - f(baseline) = {ref.delta:+.3f} (completeness gap {ref.gap:+.2g})")
