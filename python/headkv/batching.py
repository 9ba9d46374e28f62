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
evaluated in chunks of ``prefill_chunk`` tokens that take turns with the decode steps (one runs at a
time; between two chunks of a prompt, the sequences that are decoding get one batched step), so a
long prompt delays each decoding sequence's next token by at most about one chunk. Evaluating a
prompt in successive slices appends the same KV as one eval (the same forward over each slice), up
to float summation order where a slice's row count picks another matmul path. A compressing KV
method's prompt is one piece: its prefill selects each layer's kept entries from the whole prompt's
attention, layer by layer, so it cannot be cut into token slices (yielding between its layers would
need a hook inside the context's compressed prefill); it runs outside the turns, beside the decode
steps, both over the shared thread pool, whose jobs they then take in turn. ``prefill_chunk=0``
runs every prompt that way. The turns bound a decoding sequence's wait by one chunk and make the
interleave deterministic; the job-level sharing of the one-piece path lets more decode tokens
through on the CPU at a longer worst gap (BENCHMARKS.md, "Decode during another request's prefill").
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np

from . import _core
from .errors import Error, InvalidArgumentError


class _Slot:
    __slots__ = ("engine", "token", "done", "error")

    def __init__(self, engine, token):
        self.engine, self.token, self.done, self.error = engine, int(token), False, None


class BatchDecoder:
    """Combines ``eval_one`` calls from threads into batched steps. Sequences call ``enter`` when
    their decode loop starts and ``leave`` when it ends, so the decoder knows how many to wait for."""

    def __init__(self, gather_s: float = 0.005, prefill_chunk: int = 64, yield_s: Optional[float] = 0.25):
        """``prefill_chunk``: tokens per prompt chunk (full cache); 0: every prompt in one piece
        beside the steps, as a compressing one. ``yield_s``: how long a prompt's
        next chunk waits at most for the decode step it yields to (a decoding sequence whose caller
        has suspended its generation submits no token; None waits as long as any is decoding)."""
        if not isinstance(prefill_chunk, int) or prefill_chunk < 0:
            raise InvalidArgumentError(f"prefill_chunk must be an integer >= 0, got {prefill_chunk!r}")
        self.gather_s = float(gather_s)
        self.prefill_chunk = prefill_chunk
        self.yield_s = None if yield_s is None else float(yield_s)
        self._cv = threading.Condition()
        self._pending: list = []
        self._active = 0
        self._running = False  # a decode step or a prompt chunk is running
        self._last_chunk = False  # the last run was a prompt chunk (the next is owed to the decode step)
        self._chunks_waiting = 0  # prompts waiting to run their next chunk
        self.n_steps = 0  # batched steps run (of more than one sequence), for stats and tests
        self.n_rows = 0   # tokens evaluated through them
        self.n_runs = 0   # decode steps of any size run
        self.n_chunks = 0  # prompt chunks run
        # Called (in the running thread, outside the lock) after each decode step with
        # ("step", engines) and after each prompt chunk with ("chunk", engine): a counter for tests.
        self.on_run: Optional[Callable[[str, object], None]] = None
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
        slot = _Slot(engine, token)
        with self._cv:
            self._pending.append(slot)
            self._cv.notify_all()
            deadline = time.monotonic() + self.gather_s
            while not slot.done:
                now = time.monotonic()
                # After a step, a prompt chunk that waits goes first (prompts and steps alternate).
                chunk_turn = self._chunks_waiting > 0 and not self._last_chunk
                if not self._running and not chunk_turn and (len(self._pending) >= self._active or now >= deadline):
                    batch, self._pending = self._pending, []
                    self._running = True
                    self._cv.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cv.acquire()
                        self._running = False
                        self._last_chunk = False
                        self._cv.notify_all()
                else:
                    self._cv.wait(None if self._running or chunk_turn else max(deadline - now, 1e-4))
        if slot.error is not None:
            raise slot.error

    def _run(self, batch: list) -> None:
        try:
            if len(batch) == 1:
                batch[0].engine.eval([batch[0].token], False)
            else:
                self._step.step([s.engine for s in batch], [s.token for s in batch])
                self.n_steps += 1
                self.n_rows += len(batch)
        except Error:
            # One sequence's token failed (a full context, say) and the step changed nothing: each
            # is evaluated alone, so only that sequence sees its error.
            for s in batch:
                try:
                    s.engine.eval([s.token], False)
                except BaseException as e:
                    s.error = e
        except BaseException as e:
            for s in batch:
                s.error = e
        self.n_runs += 1
        for s in batch:
            s.done = True
        if self.on_run is not None:
            self.on_run("step", [s.engine for s in batch])

    def prefill(self, engine, tokens: Sequence[int]) -> None:
        """Appends a prompt to ``engine``'s context, as ``engine.eval(tokens)``: a full cache in
        chunks taking turns with the decode steps (see the module's doc), a compressing context's
        prompt in one piece beside them. When a chunk fails, the context is rolled back to where it
        was before the prompt and the error is raised; the decode steps go on."""
        tokens = [int(t) for t in tokens]
        if self.prefill_chunk == 0 or (engine.compressing and engine.n_past == 0):
            engine.eval(tokens, False)
            return
        n_vocab = engine.n_vocab
        for t in tokens:  # as one eval would: a bad token fails before any chunk runs
            if t < 0 or t >= n_vocab:
                raise InvalidArgumentError(f"token id {t} is outside the vocabulary (0..{n_vocab - 1})")
        n_past0 = engine.n_past
        try:
            for off in range(0, len(tokens), self.prefill_chunk):
                self._take_turn()
                try:
                    engine.eval(tokens[off:off + self.prefill_chunk], False)
                finally:
                    with self._cv:
                        self._running = False
                        self._last_chunk = True
                        self.n_chunks += 1
                        self._cv.notify_all()
                if self.on_run is not None:
                    self.on_run("chunk", engine)
        except BaseException:
            if engine.n_past > n_past0:
                try:
                    engine.truncate(n_past0)
                except Error:  # (a sliding-window ring that no longer holds the window before n_past0)
                    engine.reset()
            raise

    def _take_turn(self) -> None:
        """Waits until nothing runs and, when the last run was a prompt chunk and sequences are
        decoding, until their decode step has run (at most ``yield_s``); then marks a chunk as
        running."""
        with self._cv:
            deadline = None if self.yield_s is None else time.monotonic() + self.yield_s
            self._chunks_waiting += 1
            try:
                while True:
                    owed = self._last_chunk and self._active > 0
                    if owed and deadline is not None and time.monotonic() >= deadline:
                        owed = False
                    if not self._running and not owed:
                        break
                    self._cv.wait(None if deadline is None else max(deadline - time.monotonic(), 1e-4))
            finally:
                self._chunks_waiting -= 1
                self._cv.notify_all()  # decode steps held back for this chunk recheck their turn
            self._running = True


class SequenceGroup:
    """Sequences by id over ``model``'s loaded weights, decoded together (the C API's ``hk_group_*``)
    on ``device`` (default: the model's; ``"cpu"``, ``"cuda"`` or ``"cuda-fp32"``; on the GPU each
    step reads every weight once per 8 sequences and runs attention per sequence). ``add(id, tokens)`` evaluates a prompt alone and the sequence joins;
    ``step(ids, tokens)`` appends one token to each named sequence in one batched step and returns
    their logits ``[len(ids), n_vocab]``; ``remove(id)`` lets one go. Every sequence has a context
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

    def step(self, ids, tokens) -> np.ndarray:
        return self._g.step([int(i) for i in ids], [int(t) for t in tokens])

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
