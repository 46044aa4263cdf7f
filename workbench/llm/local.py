"""`LocalChatClient`: a Hugging Face chat model run in-process (default: the embedded SmolLM2)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .base import ChatClient, ChatResponse, Messages, check_messages

__all__ = ["LocalChatClient"]


class LocalChatClient(ChatClient):
    """A Hugging Face chat model run in-process (default: the embedded SmolLM2-135M-Instruct).

    ``model``: None (the embedded model via `workbench.load()`, loaded on first use), a workbench
    `Model`, or a Hugging Face name/path. The tokenizer's chat template is applied (a plain
    ``role: content`` layout where it has none); decoding is greedy unless ``temperature > 0``,
    which samples with ``seed``. ``prompt_tokens`` is the templated prompt's length and
    ``completion_tokens`` the number of generated tokens (an end-of-turn token included).
    Requests run one at a time (a lock), so `map` from many threads is safe.
    """

    kind = "local"

    def __init__(self, model: Any = None, *, cache: Any = True, concurrency: int = 1, device: Any = None):
        from ..core.loading import EMBEDDED_NAME

        if not (model is None or isinstance(model, str) or hasattr(model, "hf")):
            raise TypeError(f"model must be None, a Hugging Face name/path or a workbench Model, "
                            f"not {type(model).__name__}")
        if getattr(model, "remote", False) is True:
            raise ValueError("LocalChatClient runs the model in-process: give a local model, not remote=True")
        self._model = None if model is None or isinstance(model, str) else model
        self._source = model if isinstance(model, str) else None
        self._device = device
        name = (self._source or EMBEDDED_NAME) if self._model is None else (
            getattr(self._model, "name", "") or type(self._model).__name__)
        super().__init__(name, cache=cache, concurrency=concurrency)
        self._lock = threading.RLock()

    @property
    def model(self) -> Any:
        """The workbench `Model` (loaded on first use)."""
        with self._lock:
            if self._model is None:
                from ..core.loading import load

                self._model = load(self._source, device=self._device)
            return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loads the model on first use)."""
        return self.model.tokenizer

    def _reload_name(self) -> str | None:
        """What `load()` takes to get this model again (None: the embedded one)."""
        from ..core.loading import EMBEDDED_NAME

        if self._source is not None:
            return self._source
        return None if self.model_name == EMBEDDED_NAME else self.model_name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description that `llm_client` accepts back (None: the embedded model)."""
        return {"kind": self.kind, "model": self._reload_name()}

    @property
    def spec(self) -> str:
        """The `llm_client` spec string: ``local`` or ``local:<name>``."""
        name = self._reload_name()
        return "local" if name is None else f"local:{name}"

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The token ids of the templated prompt (ending with the assistant turn's opening)."""
        msgs = check_messages(messages)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, Mapping) or hasattr(ids, "keys"):  # a BatchEncoding
                ids = ids["input_ids"]
            if hasattr(ids, "tolist"):
                ids = ids.tolist()
            if ids and isinstance(ids[0], list):
                ids = ids[0]
            return [int(i) for i in ids]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        return [int(i) for i in tok(text, add_special_tokens=True)["input_ids"]]

    def _complete(self, messages: Messages, *, max_tokens: int, temperature: float, seed: int | None,
                  stop: list[str]) -> ChatResponse:
        import torch

        with self._lock:
            wm = self.model
            tok = wm.tokenizer
            ids = self.prompt_ids(messages)
            hf = wm.hf
            device = next(hf.parameters()).device
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            eos = _eos_ids(tok, hf)
            kw: dict[str, Any] = dict(max_new_tokens=max_tokens, attention_mask=torch.ones_like(input_ids),
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
                                      eos_token_id=eos)
            if temperature > 0:
                kw.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if stop:
                kw.update(stop_strings=stop, tokenizer=tok)
            model_lock = getattr(wm, "lock", None) or threading.RLock()
            with model_lock, torch.inference_mode(), torch.random.fork_rng(devices=[]):
                if temperature > 0:
                    torch.manual_seed(0 if seed is None else int(seed))
                out = hf.generate(input_ids, **kw)
            new = out[0, len(ids):].tolist()
            finish = "length"
            if new and new[-1] in eos:
                finish = "stop"
            text = tok.decode([t for t in new if t not in eos], skip_special_tokens=True)
            for s in stop:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            return ChatResponse(text=text, prompt_tokens=len(ids), completion_tokens=len(new), cached=False,
                                model=self.model_name, finish_reason=finish)


def _eos_ids(tok: Any, hf: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(hf, "generation_config", None)
    for v in (getattr(gen, "eos_token_id", None), tok.eos_token_id):
        if v is None:
            continue
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if int(i) not in ids:
                ids.append(int(i))
    for special in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
        if tid is not None and int(tid) not in ids:
            ids.append(int(tid))
    if not ids:
        raise ValueError("the tokenizer has no end-of-sequence token: cannot tell where a reply ends")
    return ids
