"""``headkv.Model``: the Python API, shaped like llama-cpp-python's ``Llama``."""
from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import _core
from .chat import render_chat
from .errors import ContextFullError, InvalidArgumentError, UnsupportedError
from .kv import KVConfig
from .text import StopScanner, utf8_complete_prefix


@dataclass(frozen=True)
class ModelState:
    """What :meth:`Model.save_state` returns: the context's tokens, its compressed prompt's length
    and ``data``, the engine's snapshot of the sequence (last logits and KV cache, the compressed
    per-head arena included; bytes that can be written to a file and given to ``load_state`` of a
    Model of the same file, KV method and cache types, on either device where the types match)."""
    tokens: tuple
    n_prompt: int
    kv_method: str
    model_path: str
    data: bytes = b""

    @property
    def n_tokens(self) -> int:  # llama-cpp-python's LlamaState field
        return len(self.tokens)


class Model:
    """A GGUF model with one inference context.

    Args:
        model_path: path to a GGUF file (architecture ``llama``: Llama 2/3, Mistral, SmolLM2;
            ``qwen2``, ``qwen3``, ``phi3``, ``gemma2``, ``gemma3``).
        n_ctx: context window in tokens (the full cache is allocated for it at once). None: 4096, or
            the model's training context if shorter; 0: the training context. With a compressing KV
            method it bounds nothing of the prompt: a prompt longer than n_ctx is compressed into
            the per-head arena (decode room: ``max_new_tokens`` per head, raised to a request's
            ``max_tokens`` when larger).
        n_threads: CPU threads; None = half the CPUs (about the physical cores: a thread sharing a
            core with another process stalls every parallel step).
        n_batch: tokens per prefill chunk.
        device: ``"cpu"``; ``"auto"`` (``"cuda"`` when a GPU is usable, else ``"cpu"``); ``"cuda"`` (GPU, fp16 tensor-core prefill GEMMs) or ``"cuda-fp32"`` (GPU,
            fp32 GEMMs: the CPU backend's arithmetic up to summation order) where the CUDA backend
            is built. The GPU keeps the KV cache in fp16.
        kv: a :class:`KVConfig` (KV compression method and budget); keyword shortcuts
            ``kv_method=..., kv_budget=..., scores=..., beta=..., window=..., pooling=..., kernel=...,
            span=..., reach=..., cap_ceiling=..., probe=..., type_k=..., type_v=...``; ``kv_budget_bytes=N`` gives the budget as N bytes of
            kept entries in all (KVConfig.budget_bytes). Query-agnostic use (compress a document, ask later): ``probe="repeat"``,
            ``eval(document)``, then ``generate(question, reset=False)``.
        share_with: another model of the same file and device whose loaded weights (on the CPU also
            its thread pool: its n_threads apply; on the GPU its device weights) this one uses, so
            that their decode steps can be batched together (headkv.batching, SequencePool).
        cache_prompt: prefix reuse (as llama-cpp-python and llama-server do). A prompt that starts with
            tokens the context already holds evaluates only the rest: for the full cache the longest
            common prefix (same results as a fresh run); for a compressing method, when the prompt
            extends the compressed prompt (a follow-up turn about the same document), the compressed
            KV is kept and the new tokens are appended. False: every call starts over.
    """

    def __init__(self, model_path: Union[str, os.PathLike], n_ctx: Optional[int] = None, n_threads: Optional[int] = None,
                 n_batch: int = 512, device: str = "cpu", verbose: bool = False, kv: Optional[KVConfig] = None,
                 kv_method: Optional[str] = None, kv_budget: Optional[int] = None, cache_prompt: bool = True,
                 kv_budget_bytes: Optional[int] = None, share_with: Optional["Model"] = None, **kv_kwargs):
        if device == "auto":  # as the CLI's --device auto: the GPU when one is usable
            device = "cuda" if _core.cuda_built() and _core.cuda_device_count() > 0 else "cpu"
        if device not in ("cpu", "cuda", "cuda-fp32"):
            raise UnsupportedError(f"device {device!r} is not supported ('cpu', 'cuda', 'cuda-fp32', 'auto')")
        if device != "cpu" and not _core.cuda_built():
            raise UnsupportedError(f"device {device!r} is not available in this build (supported: 'cpu')")
        for name, v in (("n_ctx", 0 if n_ctx is None else n_ctx), ("n_batch", n_batch), ("n_threads", n_threads or 0)):
            if not isinstance(v, int) or v < 0:
                raise InvalidArgumentError(f"{name} must be an integer >= 0, got {v!r}")
        self.model_path = os.fspath(model_path)
        # Every call that reads or changes the context holds this lock (native compute runs with
        # the GIL released), so calls from several threads are serialized. _epoch counts context
        # changes: a suspended generate() stream refuses to continue after another call changed it.
        self._lock = threading.RLock()
        self._epoch = 0
        self._last_stop = None  # why the last generate() ended: "stop" (end of generation) / "length"
        kv = KVConfig() if kv is None else kv
        if kv_method is not None:
            kv.method = kv_method
        if kv_budget is not None:
            kv.budget = kv_budget
        if kv_budget_bytes is not None:
            kv.budget_bytes = kv_budget_bytes
        for k, v in kv_kwargs.items():
            if not hasattr(kv, k):
                raise InvalidArgumentError(f"unknown argument {k!r}")
            setattr(kv, k, v)
        if kv.method == "headkv" and not kv.scores:  # the score file shipped for this model (R2)
            from dataclasses import replace
            from .scores import shipped_scores
            kv = replace(kv, scores=shipped_scores(self.model_path, "R2"))
        self.kv = kv
        self.device = device
        tokenize = None
        if isinstance(kv.probe, str) and kv.probe:  # probe text: tokenized with the model's vocabulary
            tok = _core.Tokenizer(self.model_path)
            tokenize = lambda s: tok.encode(s, False, False)  # noqa: E731
        if share_with is not None:  # the other model's weights (and CPU thread pool: n_threads is theirs)
            if device != share_with.device:
                raise UnsupportedError(f"share_with (batched decoding) needs models of one device "
                                       f"({device!r} and {share_with.device!r})")
            if os.path.realpath(share_with.model_path) != os.path.realpath(self.model_path):
                raise InvalidArgumentError("share_with must be a model of the same file")
            self._e = share_with._e.sibling(-1 if n_ctx is None else n_ctx, n_batch, kv.native(tokenize))
        else:
            self._e = _core.Engine(self.model_path, -1 if n_ctx is None else n_ctx, n_threads or 0, n_batch,
                                   kv.native(tokenize), device)
        # headkv.batching.BatchDecoder that merges this model's one-token decode evals with those of
        # the models sharing its weights (set by SequencePool); None: each eval runs alone.
        self._decoder = None
        self.verbose = verbose
        self.cache_prompt = bool(cache_prompt)
        self.n_reused = 0  # prompt tokens the last generate()/completion took from the context (prefix reuse)
        self.n_generated = 0  # tokens the last (or current) completion has generated so far

    # ---- properties ----
    @property
    def n_ctx(self) -> int:
        return self._e.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._e.n_vocab

    @property
    def n_past(self) -> int:
        with self._lock:
            return self._e.n_past

    @property
    def lock(self) -> threading.RLock:
        """The model's re-entrant lock: hold it to make a sequence of calls (reset, eval, logits)
        atomic with respect to other threads using the same Model."""
        return self._lock

    @property
    def metadata(self) -> dict:
        return self._e.metadata()

    def token_bos(self) -> int:
        return self._e.bos

    def token_eos(self) -> int:
        return self._e.eos

    def is_eog(self, token: int) -> bool:
        return self._e.is_eog(token)

    # ---- tokenizer ----
    def tokenize(self, text: Union[str, bytes], add_bos: Optional[bool] = None, special: bool = False) -> list[int]:
        """Token ids of ``text``. ``add_bos`` defaults to the model's ``add_bos_token`` flag;
        ``special`` parses special-token texts such as ``<|im_start|>`` into their ids."""
        if not isinstance(text, (str, bytes)):
            raise InvalidArgumentError(f"text must be str or bytes, got {type(text).__name__}")
        if isinstance(text, str):
            try:
                text = text.encode("utf-8", errors="strict")
            except UnicodeEncodeError as e:  # lone surrogates: not representable as UTF-8
                raise InvalidArgumentError(f"text is not valid UTF-8 (pass bytes for raw input): {e}") from None
        return self._e.tokenize(text, self._e.add_bos if add_bos is None else bool(add_bos), bool(special))

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        """Bytes of the tokens' pieces (may end inside a UTF-8 character)."""
        return self._e.detokenize([int(t) for t in tokens])

    # ---- low level ----
    def reset(self) -> None:
        with self._lock:
            self._epoch += 1
            self._e.reset()

    def truncate(self, n_keep: int) -> None:
        """Forgets the tokens at positions >= ``n_keep``. Full cache: any ``0 <= n_keep <= n_past``.
        Compressed: 0 (reset) or at least the compressed prompt's tokens (``n_prompt``), e.g. back to
        the document-only state after a question was appended. InvalidArgumentError otherwise."""
        with self._lock:
            self._epoch += 1
            self._e.truncate(int(n_keep))

    @property
    def n_prompt(self) -> int:
        """Tokens of the compressed prompt (0 for the full cache or before the prompt)."""
        with self._lock:
            return self._e.n_prompt

    def tokens(self) -> list[int]:
        """The tokens the context holds, in order."""
        with self._lock:
            return list(self._e.history)

    def save_state(self) -> "ModelState":
        """A snapshot of the sequence: tokens, last logits and KV entries (a compressed context's
        arena and budget plan as they are, so restoring it costs a copy, not a prefill)."""
        with self._lock:
            return ModelState(tuple(self._e.history), self._e.n_prompt, self.kv.method, self.model_path,
                              self._e.save_state())

    def load_state(self, state: "ModelState") -> None:
        """Restores a :meth:`save_state` snapshot. A state from another model shape, KV method or
        cache type raises InvalidArgumentError and leaves the context as it was."""
        if not isinstance(state, ModelState):
            raise InvalidArgumentError("load_state needs a ModelState from save_state()")
        with self._lock:
            self._e.load_state(state.data)
            self._epoch += 1

    def _reuse_prefix(self, tokens: list) -> list:
        """Rolls the context back to the longest usable prefix of ``tokens`` it holds and returns
        the tokens still to evaluate (at least one, for the next logits); resets when none is usable."""
        if self.cache_prompt:
            keep = self._e.reuse_prefix([int(t) for t in tokens])
        else:
            keep = 0
            self._e.reset()
        self.n_reused = keep
        return tokens[keep:]

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> None:
        """Append tokens to the context (prefill or decode)."""
        with self._lock:
            self._epoch += 1
            if self._e.compressing and self._e.n_past == 0:  # a fresh prompt: the configured decode room
                self._e.set_max_new_tokens(self.kv.max_new_tokens)
            self._e.eval([int(t) for t in tokens], bool(logits_all))

    def logits(self, all: bool = False) -> np.ndarray:
        """Logits of the last evaluated token, or (with ``all``) of every token of the last
        ``eval(..., logits_all=True)`` as an (n_tokens, n_vocab) array."""
        with self._lock:
            return self._e.logits(all)

    def attention_probe(self, enable: bool = True) -> None:
        """Turns the attention probe on/off (full KV cache only): while on, each ``eval`` records
        its last token's per-head attention, read with :meth:`probed_attention`."""
        with self._lock:
            self._e.set_attention_probe(bool(enable))

    def probed_attention(self) -> np.ndarray:
        """[n_layer, n_head, n_past] float32 softmax attention of the last evaluated token's query
        over every cached position (the attention probe must be on)."""
        with self._lock:
            return self._e.attention_probe()

    def kv_bytes(self) -> int:
        with self._lock:
            return self._e.kv_bytes

    def kv_stats(self) -> dict:
        """KV memory: ``bytes_held`` (allocated), ``bytes_full`` (a full cache for the same tokens),
        and for compressing methods after the prompt, per-(layer, KV head) ``capacity``/``used``
        arrays, the planned ``caps`` (prefix tokens kept, window excluded) and ``window``."""
        with self._lock:
            return self._e.kv_stats()

    def kv_positions(self) -> list:
        """Positions held per (layer, KV head): ``[layer][kv_head] -> int32 array``, kept prompt
        positions in order, then decoded ones."""
        with self._lock:
            return self._e.kv_positions()

    # ---- generation ----
    def generate(self, tokens: Sequence[int], temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: Optional[int] = None, max_tokens: Optional[int] = None, reset: bool = True,
                 sampler=None) -> Iterator[int]:
        """Yields sampled token ids after the prompt ``tokens`` until an end-of-generation token
        (not yielded), ``max_tokens``, or the end of the context (n_ctx, or for compressing KV
        methods the ``max_new_tokens`` decode slots reserved per head).

        Calls made on the model while this iterator is suspended make its next step raise
        InvalidArgumentError (the context is no longer the one it was generating in).

        ``sampler``: an object whose ``sample(engine)`` picks each token (e.g. headkv.sampling's
        TokenSampler); it replaces the sampling keywords."""
        if sampler is None:
            sampler = self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise InvalidArgumentError("generate needs a non-empty prompt")
        with self._lock:
            self._epoch += 1  # any suspended generation is over from here on
            if not self._e.compressing and len(tokens) + (0 if reset else self._e.n_past) > self._e.n_ctx:
                raise ContextFullError(f"prompt of {len(tokens)} tokens does not fit the context "
                                       f"({self._e.n_ctx} tokens, {0 if reset else self._e.n_past} in use)")
            if reset:
                tokens = self._reuse_prefix(tokens)
            else:
                self.n_reused = self._e.n_past
            if self._e.compressing and self._e.n_past == 0:  # a fresh compressed prompt: decode room for the request
                room = self.kv.max_new_tokens if max_tokens is None else max(self.kv.max_new_tokens, int(max_tokens) + 1)
                self._e.set_max_new_tokens(room)
            self._last_stop = None
            decoder = self._decoder
            if decoder is not None:  # in chunks that take turns with the other sequences' decode steps
                decoder.prefill(self._e, tokens)
            else:
                self._e.eval(tokens, False)
            self._epoch += 1
            epoch = self._epoch
        if decoder is not None:
            decoder.enter()
        try:
            yield from self._decode(epoch, sampler, max_tokens, decoder)
        finally:
            if decoder is not None:
                decoder.leave()

    def _decode(self, epoch, sampler, max_tokens, decoder) -> Iterator[int]:
        """generate()'s loop after the prompt: sample, yield, evaluate the token (through the batch
        decoder when one is set)."""
        produced = 0
        while max_tokens is None or produced < max_tokens:
            with self._lock:
                self._check_epoch(epoch)
                tok = sampler.sample(self._e)
                if self._e.is_eog(tok):
                    self._last_stop = "stop"
                    return
            yield tok
            produced += 1
            with self._lock:
                self._check_epoch(epoch)
                if not self._e.compressing and self._e.n_past >= self._e.n_ctx:
                    self._last_stop = "length"
                    return
                try:
                    if decoder is not None:
                        decoder.eval_one(self._e, tok)
                    else:
                        self._e.eval([tok], False)
                except ContextFullError:  # a compressed head's decode slots are used up; nothing changed
                    self._last_stop = "kv_full"
                    warnings.warn(f"generation stopped: the compressed KV cache's decode room ({self._e.kv_stats()['capacity'].min()} "
                                  f"entries per head, prompt included) is used up; raise KVConfig.max_new_tokens "
                                  f"or pass a larger max_tokens", RuntimeWarning, stacklevel=4)
                    return
                self._epoch += 1
                epoch = self._epoch

    def _check_epoch(self, epoch):
        if self._epoch != epoch:
            raise InvalidArgumentError("the model's context was changed by another call while this generation "
                                       "was suspended; restart the generation (or hold Model.lock around it)")

    def _sampler(self, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed):
        if seed is None or seed < 0:
            seed = int.from_bytes(os.urandom(8), "little")
        return _core.Sampler(float(temperature), int(top_k), float(top_p), float(min_p), float(repeat_penalty),
                             int(repeat_last_n), int(seed))

    def _completion_stream(self, prompt_tokens, max_tokens, stop, sampling, reset=True) -> Iterator[tuple[str, Optional[str]]]:
        """Yields (text, finish_reason, n_generated); finish_reason is set on the last piece."""
        if max_tokens is None or max_tokens <= 0:
            if self._e.compressing:  # until the decode room (max_new_tokens per head) is used up
                max_tokens = self.kv.max_new_tokens if reset or not self.n_past else 1 << 30
            else:
                max_tokens = self.n_ctx - len(prompt_tokens) - (0 if reset else self.n_past)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        scanner, buf, n = StopScanner(stop), b"", 0
        finish = "length"
        self.n_generated = 0
        for tok in self.generate(prompt_tokens, max_tokens=max_tokens, reset=reset, **sampling):
            n += 1
            self.n_generated = n
            buf += self._e.token_to_piece(tok)
            k = utf8_complete_prefix(buf)
            text = scanner.feed(buf[:k].decode("utf-8", errors="replace"))
            buf = buf[k:]
            if text:
                yield text, None, n
            if scanner.stopped:
                finish = "stop"
                break
        else:
            if self._last_stop == "kv_full":
                finish = "kv_full"  # the compressed cache's decode room is used up (a warning says so)
            elif n < max_tokens and self._last_stop != "length":
                finish = "stop"  # end-of-generation token
        tail = scanner.flush() + (buf.decode("utf-8", errors="replace") if not scanner.stopped else "")
        yield tail, finish, n

    def _prompt_tokens(self, prompt, reset: bool) -> list:
        """A completion's prompt as token ids (text appended to a held context gets no BOS; an empty
        prompt is the BOS token), checked against n_ctx for the full cache."""
        appending = not reset and self.n_past > 0
        if isinstance(prompt, (str, bytes)):
            prompt_tokens = self.tokenize(prompt, add_bos=False if appending else None)
        else:
            prompt_tokens = [int(t) for t in prompt]
        if not prompt_tokens:
            if appending:
                raise InvalidArgumentError("an empty prompt cannot be appended to the held context")
            prompt_tokens = [self._e.bos if self._e.bos >= 0 else 0]
        held = 0 if reset else self.n_past
        if not self._e.compressing and held + len(prompt_tokens) > self.n_ctx:
            raise ContextFullError(f"prompt has {len(prompt_tokens)} tokens (+{held} held) but n_ctx is {self.n_ctx}")
        return prompt_tokens

    def create_completion(self, prompt: Union[str, Sequence[int]], max_tokens: Optional[int] = 16,
                          temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                          repeat_penalty: float = 1.0, stop: Union[str, list[str], None] = None,
                          stream: bool = False, seed: Optional[int] = None, echo: bool = False, reset: bool = True):
        """OpenAI-style completion dict, or an iterator of chunk dicts when ``stream``.

        ``reset=False`` appends the prompt to what the context holds instead of starting over: e.g.
        a document evaluated (and compressed) before the question existed, the query-agnostic use
        of KV compression (``Model(..., probe="repeat")``; the prompt is then tokenized without BOS)."""
        prompt_tokens = self._prompt_tokens(prompt, reset)
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=seed)
        # Validate sampling parameters before any work (raises InvalidArgumentError).
        self._sampler(temperature, top_k, top_p, min_p, repeat_penalty, 64, 0)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prefix = self.detokenize(prompt_tokens).decode("utf-8", errors="replace") if echo else ""
        pieces = self._completion_stream(prompt_tokens, max_tokens, stop, sampling, reset=reset)

        def chunk(text, finish):
            return {"id": cid, "object": "text_completion", "created": created, "model": self.model_path,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if stream:
            def gen():
                if prefix:
                    yield chunk(prefix, None)
                for text, finish, _ in pieces:
                    if text or finish:
                        yield chunk(text, finish)
            return gen()
        text, finish, n = prefix, None, 0
        with self._lock:  # the whole generation at once: concurrent callers are serialized
            for piece, finish, n in pieces:
                text += piece
        out = chunk(text, finish)
        out["usage"] = {"prompt_tokens": len(prompt_tokens), "completion_tokens": n,
                        "total_tokens": len(prompt_tokens) + n}
        return out

    __call__ = create_completion

    def create_completions(self, prompts: Sequence, **kwargs) -> list:
        """``create_completion(prompt, **kwargs)`` for each prompt, one after another in this context
        (each prompt reuses what it shares with the one before). Several contexts in threads:
        ``headkv.SequencePool(path, n_seq).create_completions(prompts, **kwargs)``."""
        if kwargs.get("stream"):
            raise InvalidArgumentError("create_completions does not stream")
        if isinstance(prompts, (str, bytes)):
            raise InvalidArgumentError("create_completions takes a list of prompts")
        return [self.create_completion(p, **kwargs) for p in prompts]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        bos = self._e.token_to_piece(self._e.bos).decode("utf-8", "replace") if self._e.bos >= 0 else ""
        eos = self._e.token_to_piece(self._e.eos).decode("utf-8", "replace") if self._e.eos >= 0 else ""
        return render_chat(self._e.chat_template, messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=add_generation_prompt)

    def create_chat_completion(self, messages: list[dict], max_tokens: Optional[int] = None,
                               temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                               repeat_penalty: float = 1.0, stop: Union[str, list[str], None] = None,
                               stream: bool = False, seed: Optional[int] = None):
        """Renders ``messages`` with the model's chat template and completes the assistant turn."""
        text = self.apply_chat_template(messages)
        bos_text = self._e.token_to_piece(self._e.bos).decode("utf-8", "replace") if self._e.bos >= 0 else None
        add_bos = self._e.add_bos and not (bos_text and text.startswith(bos_text))
        tokens = self.tokenize(text, add_bos=add_bos, special=True)
        res = self.create_completion(tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                     top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, stop=stop,
                                     stream=stream, seed=seed)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not stream:
            c = res["choices"][0]
            return {"id": cid, "object": "chat.completion", "created": created, "model": self.model_path,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": c["text"]},
                                 "logprobs": None, "finish_reason": c["finish_reason"]}],
                    "usage": res["usage"]}

        def gen():
            def chunk(delta, finish):
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_path,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            yield chunk({"role": "assistant"}, None)
            for part in res:
                c = part["choices"][0]
                if c["text"]:
                    yield chunk({"content": c["text"]}, None)
                if c["finish_reason"]:
                    yield chunk({}, c["finish_reason"])
        return gen()
