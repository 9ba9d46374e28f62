"""Chat prompts: render the GGUF's tokenizer.chat_template with jinja2 (as transformers does)."""
from __future__ import annotations

import jinja2
import jinja2.sandbox

from .errors import InvalidArgumentError, UnsupportedError


def _raise(message):
    raise InvalidArgumentError(f"chat template: {message}")


def render_chat(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    if not template:
        raise UnsupportedError("this model has no tokenizer.chat_template; pass a prompt instead")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidArgumentError("each chat message must be a dict with 'role' and 'content'")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                 add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:
        raise InvalidArgumentError(f"chat template failed to render: {e}") from e
