"""Print the peer comparisons' figures (max abs differences) against the real peer libraries.

    .venv/bin/python scripts/peer_compare.py

Needs what ``scripts/setup.sh --test`` installs (sae-lens, transformer-lens, tuned-lens). The checks
themselves are the tests ``tests/test_peer_saelens.py``, ``tests/test_peer_tl.py``,
``tests/test_tl_processing.py`` and ``tests/test_tuned_lens_interop.py``; this prints their numbers.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2e}" for k, v in d.items())


def saelens() -> None:
    import test_peer_saelens as ps

    print("SAELens files (sae-lens writes -> workbench loads | workbench writes -> sae-lens loads), max abs diff:")
    for arch in ps.ARCHS:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"  {arch:22s}", _fmt(ps.file_diffs(arch, Path(tmp))))
    with tempfile.TemporaryDirectory() as tmp:
        print("Transcoder ln2.hook_normalized -> hook_mlp_out spliced vs HookedSAETransformer.run_with_saes:")
        print("  ", _fmt(ps.transcoder_splice_diffs(Path(tmp))))


def processing() -> None:
    import test_tl_processing as tp

    print("TransformerLens weight processing recorded by SAELens (SAE input fed vs TL's processed hook; raw = the "
          "unprocessed site):")
    for kwargs, version, hook, centred in tp.CASES:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"  {hook:30s} {str(kwargs):80s} {version:7s}", _fmt(tp.processing_diffs(Path(tmp), kwargs, version,
                                                                                               hook, centred)))


def transformer_lens() -> None:
    import test_peer_tl as pt

    for processed in (False, True):
        tag = "from_pretrained processing" if processed else "no processing"
        print(f"Activation patching (denoising, logit diff) vs transformer_lens.patching, {tag}:")
        for site in pt.SWEEPS:
            print(f"  {site:10s}", _fmt(pt.patching_diffs(site, processed)))
        print(f"Logit lens vs ln_final + unembed of hook_resid_post, {tag}:", _fmt(pt.lens_diffs(processed)))


def tuned_lens() -> None:
    import tuned_lens as tlens

    from workbench.causal.lens import TunedLens
    from workbench.causal.lens import tuned_lens as wb_tuned_lens
    from workbench.testing import tiny_model

    print("tuned-lens 0.2 both ways (translators on random hidden states; lens top-k probs vs its forward):")
    for family in ("llama", "gpt2"):
        model = tiny_model(family)
        real = tlens.TunedLens.from_model(model.hf)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for t in real.layer_translators:
                t.weight.copy_(torch.randn(t.weight.shape, generator=g) * 0.1)
                t.bias.copy_(torch.randn(t.bias.shape, generator=g) * 0.1)
        real = real.float().eval()
        h = torch.randn(3, 5, model.d_model, generator=g)
        with tempfile.TemporaryDirectory() as tmp:
            real.save(Path(tmp) / "lens")
            ours = TunedLens.load(Path(tmp) / "lens")
            with torch.no_grad():
                d_in = max(float((ours.translate(h, L - 1 if L else "embed") - real.transform_hidden(h, L)).abs().max())
                           for L in range(model.n_layers))
            ours.save(Path(tmp) / "ours", layout="tuned-lens")
            back = tlens.TunedLens.from_model_and_pretrained(model.hf, str(Path(tmp) / "ours")).float().eval()
            with torch.no_grad():
                d_out = max(float((back.transform_hidden(h, L) - real.transform_hidden(h, L)).abs().max())
                            for L in range(model.n_layers))
            ids = torch.tensor([model.tokenizer.encode("The quick brown fox jumps over the lazy dog")])
            with torch.no_grad():
                hs = model.hf(input_ids=ids, output_hidden_states=True).hidden_states
            res = wb_tuned_lens(model, "The quick brown fox jumps over the lazy dog", ours,
                                layers=["embed", *range(model.n_layers - 1)], top_k=5)
            with torch.no_grad():
                d_lens = max(float((res.top_probs[r] - torch.softmax(real(hs[r][0], r).float(), -1).topk(5).values)
                                   .abs().max()) for r in range(model.n_layers))
        print(f"  {family:6s} load translators {d_in:.2e}, save translators {d_out:.2e}, lens top-k probs {d_lens:.2e}")


def main() -> None:
    from functools import partialmethod

    from tqdm import tqdm

    tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)  # transformer_lens.patching's progress bars
    warnings.filterwarnings("ignore")
    saelens()
    processing()
    transformer_lens()
    tuned_lens()


if __name__ == "__main__":
    main()
