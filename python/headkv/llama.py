"""``headkv.Llama``: llama-cpp-python's ``Llama`` surface over :class:`headkv.Model`.

A script written for llama-cpp-python runs with ``from headkv import Llama``: the constructor
takes its common keywords, and ``create_completion`` / ``__call__`` / ``create_chat_completion`` /
``create_embedding`` / ``embed`` take its arguments and return its shapes (streaming chunks,
``logprobs``, penalties, ``logit_bias``, GBNF ``grammar``, JSON ``response_format``). Keywords
headkv cannot honour raise InvalidArgumentError / UnsupportedError instead of being ignored;
headkv's own KV-compression keywords (``kv_method=``, ``kv_budget=``, ...) pass through to Model.
"""
from __future__ import annotations

import os
import random
import sys
import time
import uuid
import warnings
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from .chat import render_chat
from .errors import ContextFullError, InvalidArgumentError, UnsupportedError
from .grammar import LlamaGrammar, TokenMatcher, lltokenizer, response_format_grammar
from .model import Model
from .sampling import TokenSampler

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "random seed"
LLAMA_POOLING_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_NONE = -1, 0
LLAMA_POOLING_TYPE_MEAN, LLAMA_POOLING_TYPE_CLS, LLAMA_POOLING_TYPE_LAST = 1, 2, 3

# Accepted and without effect here: memory mapping is how headkv always loads; batching,
# threading and offload details of llama.cpp have no counterpart; logprobs and embeddings are
# available without logits_all / embedding mode.
_NO_EFFECT = {"use_mmap", "use_mlock", "n_ubatch", "n_threads_batch", "offload_kqv", "flash_attn", "no_perf",
              "op_offload", "swa_full", "numa", "logits_all", "embedding"}
# Accepted only at their default: anything else would change the model in a way headkv does not do.
_DEFAULT_ONLY = {"vocab_only": False, "kv_overrides": None, "split_mode": 1, "main_gpu": 0, "tensor_split": None,
                 "rope_scaling_type": -1, "rope_freq_base": 0.0, "rope_freq_scale": 0.0, "yarn_ext_factor": -1.0,
                 "yarn_attn_factor": 1.0, "yarn_beta_fast": 32.0, "yarn_beta_slow": 1.0, "yarn_orig_ctx": 0,
                 "attention_type": -1, "lora_base": None, "lora_path": None, "lora_scale": 1.0,
                 "chat_handler": None, "draft_model": None, "tokenizer": None, "spm_infill": False}
# llama-cpp-python passes the KV cache types as GGML type ids (llama_cpp.GGML_TYPE_*); headkv takes
# the names. Ids of types headkv does not build map to their names so the error says which.
_GGML_TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 20: "iq4_nl", 30: "bf16"}

# Built-in templates for chat_format names (None: the GGUF's own tokenizer.chat_template).
_CHAT_FORMATS = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "llama-3": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                "{{ m['content'] }}<|eot_id|>{% endfor %}"
                "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
}


class _CallableInt(int):
    """An int that also answers when called: ``llm.n_ctx`` is a property in headkv.Model and a
    method in llama-cpp-python (``llm.n_ctx()``); both spellings work on Llama."""

    def __call__(self) -> int:
        return int(self)


def _unsupported_if(cond, what):
    if cond:
        raise UnsupportedError(f"{what} is not supported by headkv")


class Llama(Model):
    """A GGUF model behind llama-cpp-python's ``Llama`` API (see the module docstring).

    Device: ``n_gpu_layers=0`` runs on the CPU; ``-1`` or any positive count runs the whole model on
    the GPU where the CUDA backend is built and a device is present (headkv does not split layers
    between CPU and GPU), otherwise on the CPU with a RuntimeWarning. ``device=`` overrides it.
    ``n_ctx`` defaults to 512 as in llama-cpp-python (0: the model's training context). ``seed``
    seeds the sequence of per-call seeds (``LLAMA_DEFAULT_SEED``: random).
    """

    def __init__(self, model_path: Union[str, os.PathLike], *, n_gpu_layers: int = 0, seed: int = LLAMA_DEFAULT_SEED,
                 n_ctx: int = 512, n_batch: int = 512, n_threads: Optional[int] = None,
                 last_n_tokens_size: int = 64, pooling_type: int = LLAMA_POOLING_TYPE_UNSPECIFIED,
                 chat_format: Optional[str] = None, verbose: bool = True, device: Optional[str] = None, **kwargs):
        for k, default in _DEFAULT_ONLY.items():
            if k in kwargs:
                v = kwargs.pop(k)
                if v != default:
                    raise InvalidArgumentError(f"{k}={v!r} cannot be honoured by headkv (only {default!r} is)")
        for k in _NO_EFFECT & kwargs.keys():
            kwargs.pop(k)
        for k in ("type_k", "type_v"):  # KV cache types: names ("f16") or GGML type ids; None: f16
            v = kwargs.pop(k, None)
            if isinstance(v, int) and not isinstance(v, bool):
                v = _GGML_TYPE_NAMES.get(v, f"ggml type {v}")
            if v is not None:
                kwargs[k] = v
        if not isinstance(n_gpu_layers, int):
            raise InvalidArgumentError(f"n_gpu_layers must be an integer, got {n_gpu_layers!r}")
        if chat_format is not None and chat_format not in _CHAT_FORMATS:
            raise UnsupportedError(f"chat_format {chat_format!r} is not built in (None: the model's own template, "
                                   f"or one of {sorted(_CHAT_FORMATS)})")
        if pooling_type not in (LLAMA_POOLING_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_NONE, LLAMA_POOLING_TYPE_MEAN,
                                LLAMA_POOLING_TYPE_CLS, LLAMA_POOLING_TYPE_LAST):
            raise UnsupportedError(f"pooling_type {pooling_type!r} is not supported (-1, 0 none, 1 mean, 2 cls, 3 last)")
        if not isinstance(last_n_tokens_size, int) or last_n_tokens_size < 0:
            raise InvalidArgumentError(f"last_n_tokens_size must be an integer >= 0, got {last_n_tokens_size!r}")
        if device is None:
            device = "cpu"
            if n_gpu_layers != 0:
                if _core.cuda_built() and _core.cuda_device_count() > 0:
                    device = "cuda"
                else:
                    warnings.warn(f"n_gpu_layers={n_gpu_layers} asks for the GPU, but this headkv build has no CUDA "
                                  "backend or no CUDA device is present: running on the CPU", RuntimeWarning,
                                  stacklevel=2)
        super().__init__(model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, device=device,
                         verbose=verbose, **kwargs)
        self.n_batch = n_batch
        self.chat_format = chat_format
        self.last_n_tokens_size = last_n_tokens_size
        self._seeds = random.Random(None if seed in (LLAMA_DEFAULT_SEED, -1) else seed)
        self._pooling = pooling_type
        self._lltok = None
        if verbose:
            print(f"headkv: loaded {self.model_path} on {device} (n_ctx={self.n_ctx}, kv_method={self.kv.method})",
                  file=sys.stderr)

    # ---- llama-cpp-python's accessors ----
    @property
    def n_ctx(self) -> int:
        return _CallableInt(self._e.n_ctx)

    @property
    def n_vocab(self) -> int:
        return _CallableInt(self._e.n_vocab)

    def n_embd(self) -> int:
        return self._e.n_embd

    def detokenize(self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        return super().detokenize(tokens)

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = True) -> str:
        if self.chat_format is None:
            return super().apply_chat_template(messages, add_generation_prompt)
        bos = self._e.token_to_piece(self._e.bos).decode("utf-8", "replace") if self._e.bos >= 0 else ""
        return render_chat(_CHAT_FORMATS[self.chat_format], messages, bos_token=bos,
                           add_generation_prompt=add_generation_prompt)

    # ---- sampling ----
    def _token_sampler(self, temperature, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty,
                       presence_penalty, logit_bias, seed, grammar, logprobs) -> TokenSampler:
        bias = {}
        for k, v in (logit_bias or {}).items():
            try:
                tok, b = int(k), float(v)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"logit_bias maps token ids to numbers, got {k!r}: {v!r}") from None
            if not 0 <= tok < self._e.n_vocab:
                raise InvalidArgumentError(f"logit_bias token id {tok} is outside the vocabulary")
            bias[tok] = b
        if seed is None or seed < 0:
            seed = self._seeds.getrandbits(63)
        native = _core.Sampler(float(temperature), int(top_k), float(top_p), float(min_p), float(repeat_penalty),
                               self.last_n_tokens_size, int(seed), float(frequency_penalty),
                               float(presence_penalty), float(typical_p), bias)
        if logprobs is not None and (not isinstance(logprobs, int) or logprobs < 0):
            raise InvalidArgumentError(f"logprobs must be an integer >= 0 or None, got {logprobs!r}")
        matcher = None
        if grammar is not None:
            if isinstance(grammar, str):
                grammar = LlamaGrammar.from_string(grammar)
            if not isinstance(grammar, LlamaGrammar):
                raise InvalidArgumentError("grammar must be a headkv.LlamaGrammar or a GBNF string")
            if self._lltok is None:  # the vocabulary in llguidance's form, built once per model
                self._lltok = lltokenizer(self._e, self._e.eog_ids)
            matcher = TokenMatcher(self._lltok, grammar)
        return TokenSampler(native, matcher, logprobs)

    def _logprobs(self, steps, text_offset: int) -> dict:
        """llama-cpp-python's completion logprobs for ``steps`` (TokenSampler records)."""
        out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        piece = lambda t: self._e.token_to_piece(t).decode("utf-8", errors="ignore")  # noqa: E731
        for tok, lp, top in steps:
            s = piece(tok)
            out["tokens"].append(s)
            out["text_offset"].append(text_offset)
            out["token_logprobs"].append(lp)
            alts = {piece(i): v for i, v in top}
            alts[s] = lp
            out["top_logprobs"].append(alts)
            text_offset += len(s)
        return out

    # ---- completion ----
    def create_completion(self, prompt: Union[str, Sequence[int]], suffix: Optional[str] = None,
                          max_tokens: Optional[int] = 16, temperature: float = 0.8, top_p: float = 0.95,
                          min_p: float = 0.05, typical_p: float = 1.0, logprobs: Optional[int] = None,
                          echo: bool = False, stop: Union[str, list, None] = None, frequency_penalty: float = 0.0,
                          presence_penalty: float = 0.0, repeat_penalty: float = 1.0, top_k: int = 40,
                          stream: bool = False, seed: Optional[int] = None, tfs_z: float = 1.0,
                          mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                          model: Optional[str] = None, stopping_criteria=None, logits_processor=None,
                          grammar: Union[LlamaGrammar, str, None] = None, logit_bias: Optional[dict] = None,
                          reset: bool = True):
        """llama-cpp-python's ``create_completion``: a ``text_completion`` dict, or an iterator of
        chunks when ``stream``. ``logprobs=N``: per-token log-probabilities of the raw logits with
        the N most likely alternatives. ``reset=False`` (headkv): append to the held context."""
        _unsupported_if(suffix is not None, "suffix (fill-in-the-middle)")
        _unsupported_if(mirostat_mode != 0, "mirostat sampling")
        _unsupported_if(tfs_z != 1.0, "tail-free sampling (tfs_z)")
        _unsupported_if(stopping_criteria is not None, "stopping_criteria")
        _unsupported_if(logits_processor is not None, "logits_processor")
        _unsupported_if(echo and logprobs is not None, "logprobs of the echoed prompt (echo with logprobs)")
        prompt_tokens = self._prompt_tokens(prompt, reset)
        if isinstance(prompt, (str, bytes)):
            prompt_text = prompt.decode("utf-8", "replace") if isinstance(prompt, bytes) else prompt
        else:
            prompt_text = self.detokenize([int(t) for t in prompt]).decode("utf-8", "replace")
        sampler = self._token_sampler(temperature, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty,
                                      presence_penalty, logit_bias, seed, grammar, logprobs)
        cid, created, name = f"cmpl-{uuid.uuid4()}", int(time.time()), model or self.model_path
        prefix = prompt_text if echo else ""
        offset = len(prompt_text)
        pieces = self._completion_stream(prompt_tokens, max_tokens, stop, {"sampler": sampler}, reset=reset)

        def chunk(text, finish, lp):
            return {"id": cid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}]}

        if stream:
            def gen():
                nonlocal offset
                if prefix:
                    yield chunk(prefix, None, None)
                done = 0
                for text, finish, n in pieces:
                    if text or finish:
                        lp = None
                        if logprobs is not None:
                            lp = self._logprobs(sampler.steps[done:n], offset)
                            offset += sum(len(t) for t in lp["tokens"])
                            done = n
                        yield chunk(text, finish, lp)
            return gen()
        text, finish, n = prefix, None, 0
        with self._lock:  # the whole generation at once: concurrent callers are serialized
            for piece, finish, n in pieces:
                text += piece
        out = chunk(text, finish, None if logprobs is None else self._logprobs(sampler.steps[:n], offset))
        out["usage"] = {"prompt_tokens": len(prompt_tokens), "completion_tokens": n,
                        "total_tokens": len(prompt_tokens) + n}
        return out

    __call__ = create_completion

    # ---- chat ----
    def create_chat_completion(self, messages: list, functions=None, function_call=None, tools=None,
                               tool_choice=None, temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
                               min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False,
                               stop: Union[str, list, None] = None, seed: Optional[int] = None,
                               response_format: Optional[dict] = None, max_tokens: Optional[int] = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
                               mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: Optional[str] = None,
                               logits_processor=None, grammar: Union[LlamaGrammar, str, None] = None,
                               logit_bias: Optional[dict] = None, logprobs: Optional[bool] = None,
                               top_logprobs: Optional[int] = None):
        """llama-cpp-python's ``create_chat_completion`` with the model's chat template (or
        ``chat_format``): messages may use text content parts; ``response_format`` constrains the
        answer to JSON (optionally to a schema); ``logprobs=True, top_logprobs=N`` gives OpenAI's
        per-token content list."""
        _unsupported_if(bool(functions) or bool(tools) or function_call is not None or tool_choice is not None,
                        "function / tool calling")
        rf_grammar = response_format_grammar(response_format)
        if rf_grammar is not None and grammar is not None:
            raise InvalidArgumentError("pass either grammar or a JSON response_format, not both")
        text = self.apply_chat_template(messages)
        bos_text = self._e.token_to_piece(self._e.bos).decode("utf-8", "replace") if self._e.bos >= 0 else None
        add_bos = self._e.add_bos and not (bos_text and text.startswith(bos_text))
        tokens = self.tokenize(text, add_bos=add_bos, special=True)
        n_lp = (top_logprobs or 0) if logprobs else None
        res = self.create_completion(tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                     min_p=min_p, typical_p=typical_p, logprobs=n_lp, stop=stop,
                                     frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                     repeat_penalty=repeat_penalty, top_k=top_k, stream=stream, seed=seed,
                                     tfs_z=tfs_z, mirostat_mode=mirostat_mode, model=model,
                                     logits_processor=logits_processor, grammar=grammar or rf_grammar,
                                     logit_bias=logit_bias)
        if not stream:
            c = res["choices"][0]
            return {"id": "chat" + res["id"], "object": "chat.completion", "created": res["created"],
                    "model": res["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": c["text"]},
                                 "logprobs": _chat_logprobs(c["logprobs"]), "finish_reason": c["finish_reason"]}],
                    "usage": res["usage"]}
        return _chat_stream(res)

    # ---- embeddings ----
    def _pooling_type(self) -> int:
        if self._pooling != LLAMA_POOLING_TYPE_UNSPECIFIED:
            return self._pooling
        md = self.metadata
        return int(md.get(f"{md.get('general.architecture', 'llama')}.pooling_type", LLAMA_POOLING_TYPE_MEAN))

    def embed(self, input: Union[str, list], normalize: bool = False, truncate: bool = True,
              return_count: bool = False):
        """Embeddings of a string (one vector) or a list of strings (one per string): the final-norm
        hidden states of the text's tokens pooled by ``pooling_type`` (unspecified: the GGUF's
        ``<arch>.pooling_type``, else mean; none: one vector per token), L2-normalized when
        ``normalize``. Runs on the CPU backend with the full KV cache; clears the context."""
        inputs = [input] if isinstance(input, str) else input
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(s, str) for s in inputs):
            raise InvalidArgumentError("input must be a string or a list of strings")
        pooling = self._pooling_type()
        data, total = [], 0
        with self._lock:
            self._epoch += 1
            try:
                self._e.set_embeddings(True)
                for s in inputs:
                    toks = self.tokenize(s)
                    if truncate:
                        toks = toks[: min(self.n_batch, self.n_ctx)]
                    if not toks:
                        raise InvalidArgumentError("cannot embed an empty text")
                    if len(toks) > self.n_ctx:
                        raise ContextFullError(f"text has {len(toks)} tokens but n_ctx is {self.n_ctx}")
                    total += len(toks)
                    self._e.reset()
                    self._e.eval(toks, False)
                    h = self._e.embeddings().astype(np.float64)
                    if pooling == LLAMA_POOLING_TYPE_NONE:
                        rows = [_normalized(r) if normalize else r for r in h]
                        data.append([r.tolist() for r in rows])
                        continue
                    v = h.mean(axis=0) if pooling == LLAMA_POOLING_TYPE_MEAN else h[0] if pooling == \
                        LLAMA_POOLING_TYPE_CLS else h[-1]
                    data.append((_normalized(v) if normalize else v).tolist())
            finally:
                self._e.set_embeddings(False)
                self._e.reset()
        out = data[0] if isinstance(input, str) else data
        return (out, total) if return_count else out

    def create_embedding(self, input: Union[str, list], model: Optional[str] = None) -> dict:
        """OpenAI-style embedding list (llama-cpp-python's shape; not normalized, as there)."""
        embeds, total = self.embed(input if isinstance(input, list) else [input], return_count=True)
        return {"object": "list", "model": model or self.model_path,
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(embeds)],
                "usage": {"prompt_tokens": total, "total_tokens": total}}


def _normalized(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v if n == 0.0 else v / n


def _chat_logprobs(lp: Optional[dict]) -> Optional[dict]:
    """Completion logprobs -> OpenAI chat logprobs (as llama-cpp-python converts them)."""
    if lp is None:
        return None
    return {"content": [{"token": tok, "bytes": None, "logprob": p,
                         "top_logprobs": [{"token": t, "logprob": q, "bytes": None} for t, q in top.items()]}
                        for tok, p, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])],
            "refusal": None}


def _chat_stream(chunks: Iterator[dict]) -> Iterator[dict]:
    first = True
    for ch in chunks:
        c = ch["choices"][0]
        base = {"id": "chat" + ch["id"], "object": "chat.completion.chunk", "created": ch["created"],
                "model": ch["model"]}
        if first:
            yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                        "finish_reason": None}]}
            first = False
        if c["text"] or c["logprobs"]:
            yield {**base, "choices": [{"index": 0, "delta": {"content": c["text"]},
                                        "logprobs": _chat_logprobs(c["logprobs"]), "finish_reason": None}]}
        if c["finish_reason"]:
            yield {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": c["finish_reason"]}]}
