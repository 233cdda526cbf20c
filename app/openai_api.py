"""OpenAI wire format: prompt extraction, response and stream-chunk objects (pure)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_TOKEN_ID", "ApiError", "chunk", "completion", "error_body", "error_status",
           "prompt_of", "sse", "stream_ident", "token_prompts"]

MAX_TOKEN_ID = 2**31 - 1    # no vocabulary is larger; the engine checks its own


class ApiError(ValueError):
    """A request the API rejects with a 4xx (400 by default), naming the field."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 kind: str = "invalid_request_error", *,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return error_body(self.status, str(self), self.kind, self.param)


def error_body(status: int, message: str, kind: str = "invalid_request_error",
               param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_status(obj: Any) -> int | None:
    """The HTTP status of an error body: its ``code`` if 4xx/5xx, else 500; None otherwise."""
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
        return None
    code = obj["error"].get("code")
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


def prompt_of(kind: str, body: dict[str, Any]) -> str:
    """The text a router scores: the last user message (chat) or the prompt (completions).

    Raises:
        ApiError: the body lacks ``messages`` / ``prompt`` or has the wrong types.

    """
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError("messages must be a non-empty list of {role, content}",
                           param="messages")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = (users or messages)[-1]
        content = last.get("content") if isinstance(last, dict) else None
        if isinstance(content, list):      # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ApiError("messages[-1].content must be a string or a list of text parts",
                           param="messages")
        return content
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        if token_prompts(body) is not None:
            raise ApiError("a token-id prompt has no text to score", param="prompt")
        raise ApiError("prompt must be a string, a list of strings, a list of token ids or "
                       "a list of lists of token ids", param="prompt")
    return prompt


def _is_ids(obj: Any) -> bool:
    return (isinstance(obj, list) and len(obj) > 0 and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID
        for t in obj))


def token_prompts(body: Mapping[str, Any]) -> list[list[int]] | None:
    """A completions body's prompt as token-id lists, one per prompt (None: not token ids).

    vLLM's server takes a prompt as a list of token ids (one prompt) or a list of such lists
    (a batch); every id an integer in [0, `MAX_TOKEN_ID`], every list non-empty.
    """
    prompt: Any = body.get("prompt")
    if _is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(_is_ids(p) for p in prompt):
        return list(prompt)
    return None


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
