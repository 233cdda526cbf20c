"""OpenAI wire format: prompt extraction, response and stream-chunk objects (pure)."""

from __future__ import annotations

import time
import uuid
from typing import Any

__all__ = ["ApiError", "chunk", "completion", "prompt_of", "sse", "stream_ident"]


class ApiError(ValueError):
    """A request body the API rejects (HTTP 400), naming the field."""


def prompt_of(kind: str, body: dict[str, Any]) -> str:
    """The text a router scores: the last user message (chat) or the prompt (completions).

    Raises:
        ApiError: the body lacks ``messages`` / ``prompt`` or has the wrong types.

    """
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError("messages must be a non-empty list of {role, content}")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = (users or messages)[-1]
        content = last.get("content") if isinstance(last, dict) else None
        if isinstance(content, list):      # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ApiError("messages[-1].content must be a string or a list of text parts")
        return content
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError("prompt must be a string")
    return prompt


def _ids(kind: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time())}


def completion(kind: str, model: str, text: str, prompt_tokens: int,
               completion_tokens: int, finish_reason: str = "length") -> dict[str, Any]:
    """A non-streaming response object."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {**_ids(kind), "object": "chat.completion" if kind == "chat" else "text_completion",
            "model": model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def chunk(kind: str, model: str, text: str, ident: dict[str, Any],
          finish_reason: str | None = None) -> dict[str, Any]:
    """One streaming chunk (``ident``: the id/created shared by a stream's chunks)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if kind == "chat":
        choice["delta"] = {"content": text} if text else {}
    else:
        choice["text"] = text
    return {**ident, "object": "chat.completion.chunk" if kind == "chat"
            else "text_completion", "model": model, "choices": [choice]}


def stream_ident(kind: str) -> dict[str, Any]:
    """The id/created fields of a new stream."""
    return _ids(kind)


def sse(obj: dict[str, Any] | str) -> str:
    """One server-sent event line (``"[DONE]"`` ends a stream)."""
    import json

    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
