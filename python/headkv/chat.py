"""Chat prompts: render the GGUF's tokenizer.chat_template with jinja2 (as transformers does)."""
from __future__ import annotations

import jinja2
import jinja2.sandbox

from .errors import InvalidArgumentError, UnsupportedError


def _raise(message):
    raise InvalidArgumentError(f"chat template: {message}")


def message_text(content) -> str:
    """A message's content as text: a string, None (e.g. an assistant turn that only called tools),
    or OpenAI content parts, whose text parts are joined with newlines. Image and audio parts
    raise UnsupportedError (headkv runs text-only models)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise InvalidArgumentError(f"message content must be a string or a list of content parts, "
                                   f"got {type(content).__name__}")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "image", "input_image", "input_audio", "audio", "file"):
            raise UnsupportedError(f"content parts of type {kind!r} are not supported: headkv runs text-only models")
        else:
            raise InvalidArgumentError(f"a content part must be {{'type': 'text', 'text': str}}, got {part!r}")
    return "\n".join(texts)


def render_chat(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    if not template:
        raise UnsupportedError("this model has no tokenizer.chat_template; pass a prompt instead")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidArgumentError("each chat message must be a dict with 'role' and 'content'")
    messages = [{**m, "content": message_text(m["content"])} for m in messages]
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                 add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:
        raise InvalidArgumentError(f"chat template failed to render: {e}") from e
