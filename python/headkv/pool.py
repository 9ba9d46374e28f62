"""``headkv.SequencePool``: several sequences of one model, handed out to requests.

Each sequence is a :class:`headkv.Llama` of its own (its own context), all with the same options.
With ``batch=True`` (the default) they share one loaded model (on the CPU its thread pool, on the
GPU its device weights), and the one-token decode steps of the requests generating at the same
time run as one batched step (headkv.batching: each weight matrix read once for all of them,
attention per sequence); each request keeps its own sampling, grammar and stop handling. With
``batch=False`` each sequence decodes alone in its thread. A request takes a
free sequence, preferring the one whose cached tokens share the longest prefix with its prompt
(the engine's prefix reuse, ``cache_prompt``, then evaluates only the rest); among equals the one
used least recently. When none is free the request waits in a bounded FIFO queue, or is refused
with :class:`PoolFullError` when the queue is full or the wait times out.

The interface is small so that a batched core can replace what sits under it: ``acquire`` /
``release`` (sync, or ``acquire_async`` from an event loop), ``stream`` (async: acquire, run a
function of the sequence's model in a worker thread and stream what it yields, release), and the
batch calls ``create_completions`` / ``create_chat_completions`` (several requests in, results out,
run in threads over the contexts)."""
from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Optional

from .batching import BatchDecoder
from .errors import Error, InvalidArgumentError
from .llama import Llama
from .model import Model


class PoolFullError(Error):
    """No sequence became free: the wait queue is full, or the wait timed out (HTTP 503)."""


@dataclass(eq=False)
class Sequence:
    """One sequence of the pool: its model (context) and what the pool knows of it."""
    index: int
    model: Any
    tokens: list = field(default_factory=list)  # tokens the context held when last released
    busy: bool = False
    last_used: float = 0.0
    requests: int = 0
    kv_bytes: int = 0       # KV bytes held, as of the last release (a busy context is not read)
    kv_bytes_full: int = 0  # a full cache's bytes for the same tokens


@dataclass(eq=False)
class _Waiter:
    tokens: list
    wake: Callable[[], None]
    seq: Optional[Sequence] = None  # set (under the pool lock) when a sequence is handed to it


def _common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


_END, _ITEM, _ERR = range(3)


class SequencePool:
    """``n_seq`` sequences of ``model_path``, each a ``cls`` (default :class:`headkv.Llama`) built
    with ``model_kwargs`` (``n_ctx`` is the context per sequence). ``batch``: batched decode steps
    (one model; on the CPU one thread pool of ``n_threads`` threads, default half the CPUs); off,
    ``n_threads`` defaults to half the CPUs shared among the sequences (at least 1 each).
    ``max_queue``: requests that may wait for a sequence; ``queue_timeout``: seconds a request
    waits at most (None: no limit). ``prefill_chunk`` (batched pools): a joining request's prompt
    is evaluated in chunks of this many tokens (default 64 on the CPU, ``n_batch`` on a GPU), each
    run in one step with the tokens of the sequences that are decoding (headkv.batching), so a long
    prompt delays their tokens by about one chunk (a compressing KV method's prompt is one piece).
    0: each prompt in one eval beside the steps, the two taking turns per thread-pool job."""

    def __init__(self, model_path, n_seq: int = 1, *, max_queue: int = 64, queue_timeout: Optional[float] = None,
                 cls=Llama, batch: bool = True, prefill_chunk: Optional[int] = None, **model_kwargs):
        if not isinstance(n_seq, int) or n_seq < 1:
            raise InvalidArgumentError(f"n_seq must be an integer >= 1, got {n_seq!r}")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise InvalidArgumentError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        if prefill_chunk is not None and (not isinstance(prefill_chunk, int) or prefill_chunk < 0):
            raise InvalidArgumentError(f"prefill_chunk must be an integer >= 0, got {prefill_chunk!r}")
        batch = (batch and n_seq > 1 and isinstance(cls, type) and issubclass(cls, Model)
                 and model_kwargs.get("device") in (None, "cpu", "auto", "cuda", "cuda-fp32"))
        if model_kwargs.get("n_threads") is None:
            model_kwargs["n_threads"] = max(1, (os.cpu_count() or 2) // 2 // (1 if batch else n_seq))
        if cls is Llama:
            model_kwargs.setdefault("verbose", False)
        self.model_path = os.fspath(model_path)
        first = cls(model_path, **model_kwargs)
        # The batch decoder merges the decode steps of the sequences generating at the same time.
        n_batch = int(model_kwargs.get("n_batch") or 512)  # 0: the engine's default
        if prefill_chunk is None:  # the CPU figure trades decode gaps against prefill time (BENCHMARKS.md)
            prefill_chunk = 64 if getattr(first, "device", "cpu") == "cpu" else n_batch
        prefill_chunk = min(prefill_chunk, n_batch)  # a step takes at most n_batch tokens of one sequence
        self.decoder = BatchDecoder(prefill_chunk=prefill_chunk) if batch else None
        models = [first] + [cls(model_path, **model_kwargs, **({"share_with": first} if self.decoder else {}))
                            for _ in range(n_seq - 1)]
        for m in models:
            m._decoder = self.decoder
        self.sequences = [Sequence(i, m) for i, m in enumerate(models)]
        for s in self.sequences:
            self._read_kv(s)
        self.max_queue, self.queue_timeout = max_queue, queue_timeout
        self._lock = threading.Lock()
        self._waiters: collections.deque = collections.deque()
        self._executor = ThreadPoolExecutor(n_seq, thread_name_prefix="headkv-seq")
        # Counters for metrics: requests served, tokens generated, and the wall time during which
        # at least one sequence was busy (aggregate tokens/s = tokens / busy time).
        self.n_requests = 0
        self.n_tokens_generated = 0
        self.n_refused = 0
        self._busy_since: Optional[float] = None
        self._busy_seconds = 0.0

    # ---- what every sequence shares (tokenizer, chat template): read-only use from any thread ----
    @property
    def model(self):
        """The first sequence's model, for tokenizing and chat templates (const reads of the loaded
        model, safe while that sequence generates in another thread)."""
        return self.sequences[0].model

    def chat_tokens(self, messages: list) -> list:
        """Prompt tokens of a chat, as ``Llama.create_chat_completion`` builds them."""
        m = self.model
        text = m.apply_chat_template(messages)
        bos = m._e.token_to_piece(m._e.bos).decode("utf-8", "replace") if m._e.bos >= 0 else None
        return m.tokenize(text, add_bos=m._e.add_bos and not (bos and text.startswith(bos)), special=True)

    def prompt_tokens(self, prompt) -> list:
        """Prompt tokens of a completion prompt (text or token ids)."""
        if isinstance(prompt, (str, bytes)):
            return self.model.tokenize(prompt)
        return [int(t) for t in prompt]

    # ---- acquire / release ----
    def _pick(self, tokens: list) -> Optional[Sequence]:
        free = [s for s in self.sequences if not s.busy]
        if not free:
            return None
        return max(free, key=lambda s: (_common_prefix(s.tokens, tokens), -s.last_used))

    def _take(self, seq: Sequence) -> Sequence:
        seq.busy = True
        seq.requests += 1
        self.n_requests += 1
        if self._busy_since is None:
            self._busy_since = time.monotonic()
        return seq

    def _enqueue(self, tokens: list, wake) -> tuple:
        """Under the lock: a free sequence now, or a queued waiter, or PoolFullError."""
        seq = self._pick(tokens)
        if seq is not None:
            return self._take(seq), None
        if len(self._waiters) >= self.max_queue:
            self.n_refused += 1
            raise PoolFullError(f"all {len(self.sequences)} sequences are busy and {len(self._waiters)} "
                                f"requests are waiting (the queue holds {self.max_queue})")
        w = _Waiter(list(tokens), wake)
        self._waiters.append(w)
        return None, w

    def _give_up(self, w: _Waiter) -> Optional[Sequence]:
        """A waiter stops waiting: removes it, or returns the sequence handed to it meanwhile."""
        with self._lock:
            if w.seq is None:
                self._waiters.remove(w)
                self.n_refused += 1
            return w.seq

    def acquire(self, tokens: list, timeout: Optional[float] = None) -> Sequence:
        """Blocks until a sequence is free (the best for ``tokens``); PoolFullError when the queue is
        full or ``timeout`` (default: the pool's ``queue_timeout``) passes."""
        ev = threading.Event()
        with self._lock:
            seq, w = self._enqueue(tokens, ev.set)
        if seq is not None:
            return seq
        if ev.wait(self.queue_timeout if timeout is None else timeout):
            return w.seq
        seq = self._give_up(w)
        if seq is not None:  # handed over just as the wait ended
            return seq
        raise PoolFullError("no sequence became free in time")

    async def acquire_async(self, tokens: list, timeout: Optional[float] = None) -> Sequence:
        """``acquire`` for an event loop: waits without blocking it; cancelling the wait (a client
        that disconnects while queued) gives back a sequence handed over meanwhile."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def wake():  # called from whichever thread releases the sequence
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

        with self._lock:
            seq, w = self._enqueue(tokens, wake)
        if seq is not None:
            return seq
        try:
            await asyncio.wait_for(fut, self.queue_timeout if timeout is None else timeout)
            return w.seq
        except asyncio.TimeoutError:
            seq = self._give_up(w)
            if seq is not None:
                return seq
            raise PoolFullError("no sequence became free in time") from None
        except BaseException:
            seq = self._give_up(w)
            if seq is not None:
                self.release(seq)
            raise

    def _read_kv(self, seq: Sequence) -> None:
        seq.tokens = seq.model.tokens()
        st = seq.model.kv_stats()
        seq.kv_bytes, seq.kv_bytes_full = int(st["bytes_held"]), int(st["bytes_full"])

    def release(self, seq: Sequence, n_generated: int = 0) -> None:
        """Gives ``seq`` back (from any thread); the first waiter, if any, gets a sequence at once."""
        self._read_kv(seq)
        wake = None
        with self._lock:
            self.n_tokens_generated += int(n_generated)
            seq.busy = False
            seq.last_used = time.monotonic()
            if self._waiters:
                w = self._waiters.popleft()
                w.seq = self._take(self._pick(w.tokens))
                wake = w.wake
            elif self._busy_since is not None and not any(s.busy for s in self.sequences):
                self._busy_seconds += time.monotonic() - self._busy_since
                self._busy_since = None
        if wake is not None:
            wake()

    # ---- generation in worker threads ----
    async def stream(self, tokens: list, fn: Callable[[Any], Iterable], timeout: Optional[float] = None) -> AsyncIterator:
        """Acquires a sequence for ``tokens``, runs ``fn(model)`` in a worker thread and yields the
        items of the iterable it returns as they come. Errors raised by ``fn`` are raised here.
        Closing this iterator early (a client that disconnects) stops the generation after its
        current item; the sequence is released when the worker has stopped."""
        seq = await self.acquire_async(tokens, timeout)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def post(kind, item):
            try:
                loop.call_soon_threadsafe(q.put_nowait, (kind, item))
            except RuntimeError:  # the event loop is closed (shutdown): nobody is listening
                cancel.set()

        def work():
            it, err = None, None
            seq.model.n_generated = 0
            try:
                it = iter(fn(seq.model))
                for item in it:
                    post(_ITEM, item)
                    if cancel.is_set():
                        break
            except BaseException as e:  # handed to the consumer
                err = e
            finally:
                try:
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
                finally:  # released before the consumer hears of the end
                    self.release(seq, getattr(seq.model, "n_generated", 0))
                    post(_END, None) if err is None else post(_ERR, err)

        try:
            loop.run_in_executor(self._executor, work)
        except BaseException:
            self.release(seq)
            raise
        try:
            while True:
                kind, item = await q.get()
                if kind == _END:
                    return
                if kind == _ERR:
                    raise item
                yield item
        finally:
            cancel.set()

    # ---- batch API ----
    def run(self, jobs: list, fn: Callable[[Any, Any], Any]) -> list:
        """Runs ``fn(model, job)`` for every ``(tokens, job)`` in ``jobs``, each on a sequence
        acquired for its tokens, in threads (as many as sequences); results in order."""
        def one(pair):
            tokens, job = pair
            seq = self.acquire(tokens)
            n = 0
            try:
                seq.model.n_generated = 0
                out = fn(seq.model, job)
                n = getattr(seq.model, "n_generated", 0)
                return out
            finally:
                self.release(seq, n)

        # As many threads as sequences: the batch alone never waits in the queue.
        with ThreadPoolExecutor(len(self.sequences)) as ex:
            return list(ex.map(one, jobs))

    def create_completions(self, prompts: list, **kwargs) -> list:
        """``Llama.create_completion(prompt, **kwargs)`` for each prompt, over the pool's sequences
        (each sequence one request at a time, in its own thread); completion dicts in order."""
        if kwargs.get("stream"):
            raise InvalidArgumentError("create_completions does not stream")
        return self.run([(self.prompt_tokens(p), p) for p in prompts],
                        lambda m, p: m.create_completion(p, **kwargs))

    def create_chat_completions(self, conversations: list, **kwargs) -> list:
        """``Llama.create_chat_completion(messages, **kwargs)`` for each list of messages."""
        if kwargs.get("stream"):
            raise InvalidArgumentError("create_chat_completions does not stream")
        return self.run([(self.chat_tokens(c), c) for c in conversations],
                        lambda m, c: m.create_chat_completion(c, **kwargs))

    # ---- state ----
    def stats(self) -> dict:
        """Counters and per-sequence KV memory (as of each sequence's last release)."""
        with self._lock:
            busy = self._busy_seconds + (time.monotonic() - self._busy_since if self._busy_since else 0.0)
            seqs = [{"index": s.index, "busy": s.busy, "requests": s.requests, "n_tokens": len(s.tokens),
                     "kv_bytes": s.kv_bytes, "kv_bytes_full": s.kv_bytes_full} for s in self.sequences]
            return {"n_seq": len(seqs), "busy": sum(s["busy"] for s in seqs), "waiting": len(self._waiters),
                    "requests": self.n_requests, "refused": self.n_refused,
                    "tokens_generated": self.n_tokens_generated, "busy_seconds": busy,
                    "tokens_per_second": self.n_tokens_generated / busy if busy > 0 else 0.0,
                    "kv_bytes_total": sum(s["kv_bytes"] for s in seqs), "sequences": seqs,
                    "batched_steps": self.decoder.n_steps if self.decoder else 0,
                    "batched_tokens": self.decoder.n_rows if self.decoder else 0,
                    "prefill_chunks": self.decoder.n_chunks if self.decoder else 0}

    def close(self) -> None:
        """Waits for running generations and stops the worker threads."""
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
