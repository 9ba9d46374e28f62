"""Request bodies of the OpenAI-compatible endpoints (pydantic, validated in strict mode from the
raw JSON: a wrong field type is an error, not a silent conversion). Fields OpenAI clients send
that headkv does not use (``user``, ``store``, ``metadata``, ...) are ignored."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions (llama-cpp-python's server defaults)."""
    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logit_bias: Optional[dict[str, float]] = None
    n: int = Field(1, ge=1, le=1)  # one choice per request (send several requests for more)
    grammar: Optional[str] = None  # GBNF (llama-cpp-python's server extension)

    def sampling(self) -> dict:
        """Keyword arguments of Llama.create_completion / create_chat_completion."""
        return dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    min_p=self.min_p, typical_p=self.typical_p, repeat_penalty=self.repeat_penalty,
                    presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                    stop=self.stop, seed=self.seed, logit_bias=self.logit_bias, grammar=self.grammar)


class CompletionRequest(_Sampling):
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for /v1/completions
    prompt: Union[str, list[int], list[str]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    suffix: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[dict], None] = None
    name: Optional[str] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[dict] = None
    tools: Optional[list] = None
    tool_choice: Union[str, dict, None] = None
    max_completion_tokens: Optional[int] = Field(None, ge=1)  # OpenAI's newer name for max_tokens

    def message_dicts(self) -> list:
        return [m.model_dump(exclude_none=True) for m in self.messages]
