"""Grammar-constrained sampling: GBNF / Lark grammars, JSON schemas and "any JSON" compiled by
llguidance (the grammar engine llama.cpp itself uses) into a per-step token bitmask over the
model's vocabulary. llguidance is an optional dependency: ``pip install headkv[grammar]``."""
from __future__ import annotations

import json
from typing import Optional, Union

import numpy as np

from .errors import InvalidArgumentError, UnsupportedError


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise UnsupportedError("grammar / JSON-schema constrained output needs the llguidance package: "
                               "pip install 'headkv[grammar]' (or pip install llguidance)") from None
    return llguidance


class LlamaGrammar:
    """A grammar in llguidance's form, built as llama-cpp-python's ``LlamaGrammar`` is:
    ``LlamaGrammar.from_string(gbnf)``, ``LlamaGrammar.from_json_schema(schema_json)``."""

    def __init__(self, *, _grammar: str):
        self._grammar = _grammar

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "LlamaGrammar":
        """A GBNF grammar (llama.cpp's format; Lark is accepted too)."""
        llg = _llguidance()
        if not isinstance(grammar, str) or not grammar.strip():
            raise InvalidArgumentError("grammar must be a non-empty GBNF string")
        try:
            return cls(_grammar=llg.grammar_from("gbnf", grammar))
        except ValueError as e:
            raise InvalidArgumentError(f"invalid grammar: {e}") from None

    @classmethod
    def from_file(cls, file: str, verbose: bool = True) -> "LlamaGrammar":
        with open(file, encoding="utf-8") as f:
            return cls.from_string(f.read(), verbose)

    @classmethod
    def from_json_schema(cls, json_schema: Union[str, dict], verbose: bool = True) -> "LlamaGrammar":
        """A JSON schema (a dict or its JSON text); ``{}`` / ``{"type": "object"}`` for any object."""
        llg = _llguidance()
        if isinstance(json_schema, str):
            try:
                json_schema = json.loads(json_schema)
            except json.JSONDecodeError as e:
                raise InvalidArgumentError(f"json_schema is not valid JSON: {e}") from None
        if not isinstance(json_schema, dict):
            raise InvalidArgumentError("json_schema must be a JSON object (dict)")
        # Compact separators: the model writes JSON as json.dumps would, with free whitespace only
        # where a schema allows nothing else to be written.
        return cls(_grammar=llg.LLMatcher.grammar_from_json_schema(
            json_schema, defaults={"whitespace_flexible": False}))

    @classmethod
    def json_object(cls) -> "LlamaGrammar":
        """Any JSON object (``response_format={"type": "json_object"}`` without a schema)."""
        return cls.from_json_schema({"type": "object"})


class TokenMatcher:
    """One generation's grammar state: the allowed-token bitmask for the next step, advanced by
    each sampled token. ``tokenizer`` is the model's llguidance tokenizer (see ``lltokenizer``)."""

    def __init__(self, tokenizer, grammar: LlamaGrammar):
        llg = _llguidance()
        err = llg.LLMatcher.validate_grammar(grammar._grammar, tokenizer)
        if err and not err.startswith("WARNING"):
            raise InvalidArgumentError(f"invalid grammar: {err}")
        self._m = llg.LLMatcher(tokenizer, grammar._grammar, log_level=0)
        self._mask = np.full((tokenizer.vocab_size + 31) // 32, -1, dtype=np.int32)

    def mask(self) -> np.ndarray:
        self._m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        self._check()
        return self._mask

    def consume(self, token: int) -> None:
        self._m.consume_token(int(token))
        self._check()

    def _check(self):
        if self._m.is_error():
            raise InvalidArgumentError(f"grammar: {self._m.get_error()}")


def lltokenizer(engine, eog_ids) -> object:
    """llguidance's view of the engine's vocabulary: each token's bytes, special tokens marked with
    a leading 0xff byte (llguidance's convention, so grammars never produce them as text), and the
    engine's own tokenizer for the text llguidance needs tokenized."""
    llg = _llguidance()
    pieces, special = engine.vocab()
    for i in special:
        pieces[i] = b"\xff" + pieces[i]

    class _Vocab:
        eos_token_id = int(eog_ids[0]) if eog_ids else engine.eos
        bos_token_id = engine.bos if engine.bos >= 0 else None
        tokens = pieces
        special_token_ids = list(special)

        def __call__(self, text):
            return engine.tokenize(text, False, False)

    return llg.LLTokenizer(llg.TokenizerWrapper(_Vocab()), n_vocab=engine.n_vocab,
                           eos_token=[int(t) for t in eog_ids] or None)


def response_format_grammar(response_format: Optional[dict]) -> Optional[LlamaGrammar]:
    """The grammar of an OpenAI ``response_format``: ``{"type": "text"}`` (none),
    ``{"type": "json_object"}`` with an optional ``"schema"``, or
    ``{"type": "json_schema", "json_schema": {"schema": ...}}``."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise InvalidArgumentError("response_format must be a dict with a 'type'")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return LlamaGrammar.json_object() if schema is None else LlamaGrammar.from_json_schema(schema)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return LlamaGrammar.from_json_schema(spec.get("schema", {"type": "object"}))
    raise InvalidArgumentError(f"response_format type {kind!r} is not supported ('text', 'json_object', 'json_schema')")
