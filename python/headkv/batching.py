"""Batched decoding of concurrently generating sequences (CPU and GPU).

:class:`BatchDecoder` merges the one-token evals of several :class:`headkv.Model` s that share one
loaded model (``Model(..., share_with=first)``: on the CPU its thread pool, on the GPU its device
weights) into batched engine steps (``_core.BatchStep``: each weight matrix is read once for all of
them, attention runs per sequence over its own KV; on the GPU one activation scratch serves every
step). Each sequence keeps its own generation loop, sampler, grammar and stop
handling in its own thread; only the forward pass is shared. A thread that evaluates a token waits
until every sequence that is decoding has submitted its token (or ``gather_s`` passes: a sequence
still prefilling or slow to sample is not waited for longer), then one of them runs the step for all.

Prompts of sequences that join go through :meth:`BatchDecoder.prefill`: a full-cache prompt is
evaluated in chunks of ``prefill_chunk`` tokens, each run in one batched step with the tokens of
the sequences that are decoding (on the CPU: the chunk's rows and the decode rows share every
weight read; ``Context::decode_batch`` with per-sequence token counts). A chunk waits for those
tokens, and their tokens wait for the next chunk (each at most ``yield_s``), so each decoding
sequence gets one token per chunk, its next token waits about one chunk's time, and the prompt costs
little more than one eval. Evaluating
a prompt in successive slices appends the same KV as one eval, up to float summation order where a
slice's row count picks another matmul path. On the GPU a step takes one token per sequence: there
chunks run alone, between the steps. A compressing KV method's prompt is one piece: its prefill
selects each layer's kept entries from the whole prompt's attention, layer by layer, so it cannot
be cut into token slices (yielding between its layers would need a hook inside the context's
compressed prefill); it runs outside the steps, beside them, both over the shared thread pool,
whose jobs they then take in turn. ``prefill_chunk=0`` runs every prompt that way.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from . import _core
from .errors import Error, InvalidArgumentError, UnsupportedError


class _Slot:
    __slots__ = ("engine", "tokens", "chunk", "done", "error")

    def __init__(self, engine, tokens, chunk=False):
        self.engine, self.tokens, self.chunk, self.done, self.error = engine, tokens, chunk, False, None


class BatchDecoder:
    """Combines ``eval_one`` calls (and prompt chunks, :meth:`prefill`) from threads into batched
    steps. Sequences call ``enter`` when their decode loop starts and ``leave`` when it ends, so the
    decoder knows how many to wait for."""

    def __init__(self, gather_s: float = 0.005, prefill_chunk: int = 64, yield_s: Optional[float] = 0.25):
        """``prefill_chunk``: tokens per prompt chunk (full cache); 0: every prompt in one piece
        beside the steps, as a compressing one. ``yield_s``: how long a prompt chunk waits at most
        for the decoding sequences' tokens to ride with it (a sequence whose caller has suspended
        its generation submits none; None waits as long as any is decoding)."""
        if not isinstance(prefill_chunk, int) or prefill_chunk < 0:
            raise InvalidArgumentError(f"prefill_chunk must be an integer >= 0, got {prefill_chunk!r}")
        self.gather_s = float(gather_s)
        self.prefill_chunk = prefill_chunk
        self.yield_s = None if yield_s is None else float(yield_s)
        self._cv = threading.Condition()
        self._pending: list = []
        self._active = 0
        self._running = False
        self._mixed = True  # steps may carry prompt chunks (False after the device refused one)
        self._prefilling = 0  # prompts being evaluated in chunks
        self.n_steps = 0  # batched steps run (of more than one sequence), for stats and tests
        self.n_rows = 0   # tokens evaluated through them
        self.n_chunks = 0  # prompt chunks run
        # Called (in the running thread, outside the lock) after each run with the engines it
        # advanced and those among them that took a prompt chunk: a counter for tests.
        self.on_run: Optional[Callable[[list, list], None]] = None
        self._step = _core.BatchStep()  # (the GPU batch's scratch lives here between steps)

    def enter(self) -> None:
        with self._cv:
            self._active += 1

    def leave(self) -> None:
        with self._cv:
            self._active -= 1
            self._cv.notify_all()  # those waiting for this sequence's token stop waiting

    def eval_one(self, engine, token: int) -> None:
        """Appends ``token`` to ``engine``'s context (as ``engine.eval([token])``), batched with the
        tokens other threads submit meanwhile. Raises what that eval would raise."""
        self._submit(_Slot(engine, [int(token)]), self.gather_s)

    def _submit(self, slot: _Slot, wait_s: Optional[float]) -> None:
        """Queues ``slot`` and waits until it has run: the first waiting thread that sees every
        decoding sequence's token queued (or its ``wait_s`` pass) runs everything queued."""
        with self._cv:
            self._pending.append(slot)
            self._cv.notify_all()
            start = time.monotonic()
            for_chunk = not slot.chunk and self._prefilling and self._mixed
            if for_chunk:  # waits to ride with the next chunk
                wait_s = self.yield_s
            deadline = None if wait_s is None else start + wait_s
            while not slot.done:
                now = time.monotonic()
                if for_chunk and not self._prefilling:  # the prompt has ended: the decode gather time again
                    for_chunk, deadline = False, start + self.gather_s
                rows = sum(not s.chunk for s in self._pending)
                ready = rows >= self._active and (slot.chunk or not self._prefilling or not self._mixed
                                                  or any(s.chunk for s in self._pending))
                if not self._running and (ready or (deadline is not None and now >= deadline)):
                    batch, self._pending = self._pending, []
                    self._running = True
                    self._cv.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cv.acquire()
                        self._running = False
                        self._cv.notify_all()
                else:
                    self._cv.wait(None if self._running or deadline is None else max(deadline - now, 1e-4))
        if slot.error is not None:
            raise slot.error

    def _run(self, batch: list) -> None:
        chunks = [s for s in batch if s.chunk]
        if chunks and not self._mixed:  # (a GPU step takes one token per sequence) chunks alone
            for s in chunks:
                self._run_rows([s])
            rest = [s for s in batch if not s.chunk]
            if rest:
                self._run_rows(rest)
        else:
            self._run_rows(batch)
        self.n_chunks += len(chunks)
        if self.on_run is not None:
            self.on_run([s.engine for s in batch], [s.engine for s in chunks])

    def _run_rows(self, batch: list) -> None:
        try:
            if len(batch) == 1:
                batch[0].engine.eval(batch[0].tokens, False)
            elif any(s.chunk for s in batch):
                self._step.step([s.engine for s in batch], [t for s in batch for t in s.tokens],
                                [len(s.tokens) for s in batch])
            else:
                self._step.step([s.engine for s in batch], [s.tokens[0] for s in batch])
            if len(batch) > 1:
                self.n_steps += 1
                self.n_rows += sum(len(s.tokens) for s in batch)
        except Error as e:
            # One sequence's tokens failed (a full context, say) and the step changed nothing: each
            # is evaluated alone, so only that sequence sees its error.
            if isinstance(e, UnsupportedError) and any(s.chunk for s in batch):
                self._mixed = False
            for s in batch:
                try:
                    s.engine.eval(s.tokens, False)
                except BaseException as e2:
                    s.error = e2
        except BaseException as e:
            for s in batch:
                s.error = e
        for s in batch:
            s.done = True

    def prefill(self, engine, tokens: Sequence[int]) -> None:
        """Appends a prompt to ``engine``'s context, as ``engine.eval(tokens)``: a full cache in
        chunks that ride in the decode steps (see the module's doc), a compressing context's prompt
        in one piece beside them. When a chunk fails, the context is rolled back to the tokens and
        KV it held before the prompt (its last logits are not kept; a sliding-window ring that has
        wrapped resets it) and the error is raised; the decode steps go on."""
        tokens = [int(t) for t in tokens]
        if self.prefill_chunk == 0 or (engine.compressing and engine.n_past == 0):
            engine.eval(tokens, False)
            return
        n_past0 = engine.n_past
        with self._cv:
            self._prefilling += 1
        try:
            for off in range(0, len(tokens), self.prefill_chunk):
                self._submit(_Slot(engine, tokens[off:off + self.prefill_chunk], chunk=True), self.yield_s)
        except BaseException:
            if engine.n_past > n_past0:
                try:
                    engine.truncate(n_past0)
                except Error:  # (a sliding-window ring that no longer holds the window before n_past0)
                    engine.reset()
            raise
        finally:
            with self._cv:
                self._prefilling -= 1
                self._cv.notify_all()  # decode tokens waiting for a chunk of this prompt go alone


class SequenceGroup:
    """Sequences by id over ``model``'s loaded weights, decoded together (the C API's ``hk_group_*``)
    on ``device`` (default: the model's; ``"cpu"``, ``"cuda"`` or ``"cuda-fp32"``; on the GPU each
    step reads every weight once per 8 sequences and runs attention per sequence). ``add(id, tokens)`` evaluates a prompt alone and the sequence joins;
    ``step(ids, tokens)`` appends one token to each named sequence in one batched step and returns
    their logits ``[len(ids), n_vocab]`` (``counts``: several tokens of a sequence, a prompt in chunks); ``remove(id)`` lets one go. Every sequence has a context
    of ``n_ctx`` and the KV method of ``kv`` (default: the model's); ``n_threads`` sizes the group's
    one thread pool. ``kv_limit_bytes`` > 0 bounds all sequences' KV together: a sequence that would
    pass it is refused with OutOfMemoryError before its prefill (on the GPU also one that the free
    device memory cannot hold). Bad ids, tokens outside the
    vocabulary and full sequences raise typed errors before any sequence changes."""

    def __init__(self, model, n_ctx: Optional[int] = None, n_threads: Optional[int] = None, n_batch: int = 512,
                 kv=None, kv_limit_bytes: int = 0, device: Optional[str] = None):
        kv = model.kv if kv is None else kv
        self._g = _core.SequenceGroup(model._e, -1 if n_ctx is None else int(n_ctx), int(n_threads or 0), int(n_batch),
                                      kv.native(None), int(kv_limit_bytes), model.device if device is None else device)

    def add(self, id: int, tokens) -> None:
        self._g.add(int(id), [int(t) for t in tokens])

    def remove(self, id: int) -> None:
        self._g.remove(int(id))

    def step(self, ids, tokens, counts=None) -> np.ndarray:
        """One batched step: ``tokens[i]`` to sequence ``ids[i]``; with ``counts``, sequence ``ids[i]``
        takes ``counts[i]`` (1 to n_batch) consecutive tokens (a prompt's next chunk beside the others'
        decode tokens; CPU only). Returns each sequence's last logits ``[len(ids), n_vocab]``."""
        return self._g.step([int(i) for i in ids], [int(t) for t in tokens],
                            [] if counts is None else [int(c) for c in counts])

    def logits(self, id: int) -> np.ndarray:
        return self._g.logits(int(id))

    def n_past(self, id: int) -> int:
        return self._g.n_past(int(id))

    def kv_bytes(self, id: Optional[int] = None) -> int:
        return self._g.kv_bytes_total if id is None else self._g.kv_bytes(int(id))

    @property
    def device(self) -> str:
        return self._g.device

    @property
    def scratch_bytes(self) -> int:
        """Device bytes of the GPU batch's activation scratch (0 on the CPU)."""
        return self._g.scratch_bytes

    @property
    def ids(self) -> list:
        return list(self._g.ids)

    def __len__(self) -> int:
        return len(self._g)
