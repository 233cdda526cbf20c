"""What the router checks before a request costs anything: API keys, rate limits, body limits.

Pure (no Ray, no HTTP framework): the router (`app.ingress`) calls it on every request.

**API keys.** A key is ``bk-`` + 32 random bytes (URL-safe base64, 256 bits). Only its
SHA-256 digest is stored (`KeyEntry.sha256`): in the key file (`read_key_file`, written by
``boute keys new``), in the router's ``user_config`` and in memory. A request presents
``Authorization: Bearer <key>``; the router hashes it and looks the digest up in a dict (a
digest of a 256-bit secret: a slow password hash would add nothing, and a lookup by digest
leaks nothing about other keys). The request log and the metrics carry the key's id, never the
key or its digest.

**Key expiry.** A key may carry ``expires_at`` (ISO-8601 with its zone, kept in UTC); from
that time on it gets 401 "API key 'ID' expired at ..." (counted per key, reported by
`ApiKeys.report` in ``/health`` and by ``boute keys list``).

**Per-key rate limits.** A token bucket per key: ``rate_rps`` tokens per second, at most
``burst`` banked (default ``max(1, 2 * rate_rps)``). A request costs one token per sequence
it asks for (``prompts x n``, `app.sampling.request_units`): one before its body is read
(so a malformed body costs one, as any request), the rest once the body is checked; short of
them it is refused with 429 and ``Retry-After = ceil((units - tokens) / rate_rps)`` seconds
(`ApiKeys.admit`). A request of more units than the burst could never pass: 400.

**Body limits** (`RequestLimits`): the body's size is checked before it is read whole (413),
its JSON nesting depth after parsing without recursion (400), then the OpenAI fields the
router and the engines rely on (`check_body`): messages and their content parts (text only:
the served models are text models), prompt (text or token ids), ``max_tokens`` against the
model's context, ``stream``, and the sampling fields in vLLM's ranges (`app.sampling`).
Each failure is an `ApiError` naming the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import BouteError

from .openai_api import MAX_TOKEN_ID, ApiError, token_prompts
from .sampling import check_sampling

__all__ = ["ApiKeys", "KeyEntry", "KeyFileError", "RequestLimits", "check_body",
           "check_max_tokens", "format_expiry", "hash_key", "json_depth", "new_key",
           "parse_expiry", "read_key_file", "write_key_file"]

KEY_PREFIX = "bk-"
KEY_FIELDS = ("id", "sha256", "rate_rps", "burst", "expires_at")
ROLES = ("system", "user", "assistant", "tool", "developer")


class KeyFileError(BouteError, ValueError):
    """An API key file is missing or malformed."""


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of a key (what is stored)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key: ``bk-`` + 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyEntry:
    """One API key as stored: its id, its digest and its rate limit.

    Attributes:
        id: a name for the key's holder (logged and in the metrics; never the key).
        sha256: hex digest of the key.
        rate_rps: requests per second allowed (None: no limit).
        burst: requests that may arrive at once (default ``max(1, 2 * rate_rps)``).
        expires_at: when the key stops working (UTC; None: never). In the file an ISO-8601
            time with its zone, written ``2027-01-31T00:00:00Z``.

    """

    id: str
    sha256: str
    rate_rps: float | None = None
    burst: float | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > 64:
            raise KeyFileError(f"key id={self.id!r} must be a non-empty string of <= 64 "
                               "characters")
        if (not isinstance(self.sha256, str) or len(self.sha256) != 64
                or any(c not in "0123456789abcdef" for c in self.sha256)):
            raise KeyFileError(f"key {self.id!r}: sha256 must be 64 lowercase hex digits "
                               "(the digest of the key, never the key itself); create keys "
                               "with `boute keys new`")
        for name in ("rate_rps", "burst"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not (v > 0 and math.isfinite(v))):
                raise KeyFileError(f"key {self.id!r}: {name}={v!r} must be a positive number "
                                   "(or left out: no limit)")
        object.__setattr__(self, "expires_at", parse_expiry(self.expires_at, self.id))

    @classmethod
    def from_dict(cls, obj: Any, where: str = "key") -> KeyEntry:
        """Parse one entry (unknown fields are an error naming them)."""
        if not isinstance(obj, dict):
            raise KeyFileError(f"{where}: must be a mapping with id, sha256[, rate_rps, burst, "
                               "expires_at]")
        extra = sorted(set(obj) - set(KEY_FIELDS))
        if extra:
            raise KeyFileError(f"{where}: unknown field(s) {extra}; known: "
                               f"{', '.join(KEY_FIELDS)}")
        if "id" not in obj or "sha256" not in obj:
            raise KeyFileError(f"{where}: id and sha256 are required")
        return cls(obj["id"], obj["sha256"], obj.get("rate_rps"), obj.get("burst"),
                   obj.get("expires_at"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the file's and the router config's)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.expires_at is not None:
            out["expires_at"] = format_expiry(self.expires_at)
        return out

    def expired(self, now_unix_s: float) -> bool:
        """Whether the key has expired at `now_unix_s` (expired from `expires_at` on)."""
        return self.expires_at is not None and now_unix_s >= self.expires_at.timestamp()


def parse_expiry(value: Any, key_id: Any = "key") -> datetime | None:
    """An expiry time as an aware UTC datetime (None: never).

    Takes an ISO-8601 string with a zone (``Z`` or ``+HH:MM``), or a datetime with a zone
    (YAML reads an unquoted timestamp as one).

    Raises:
        KeyFileError: not a time, or a time without a zone (ambiguous).

    """
    if value is None or (isinstance(value, datetime) and value.tzinfo is not None):
        return None if value is None else value.astimezone(UTC)
    when = None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        raise KeyFileError(f"key {key_id!r}: expires_at={value!r} must be an ISO-8601 time "
                           "with its zone, e.g. 2027-01-31T00:00:00Z (UTC)")
    return when.astimezone(UTC)


def format_expiry(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC; fractions of a second kept when there are any)."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def read_key_file(path: str | Path) -> list[KeyEntry]:
    """The entries of a key file (YAML ``keys: [{id, sha256, rate_rps?, burst?, expires_at?}]``).

    Raises:
        KeyFileError: the file is missing, not YAML, or an entry is malformed or repeated.

    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"API key file {str(p)!r} does not exist; create one with `boute "
                           f"keys new --file {p} --id NAME`") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KeyFileError(f"API key file {str(p)!r} is not readable YAML "
                           f"({type(exc).__name__})") from None
    if data is None:
        data = {"keys": []}
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyFileError(f"API key file {str(p)!r} must hold a mapping with a list 'keys'")
    entries = [KeyEntry.from_dict(e, f"{p}: keys[{i}]") for i, e in enumerate(data["keys"])]
    ids = [e.id for e in entries]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise KeyFileError(f"API key file {str(p)!r}: key id(s) {dup} appear more than once")
    return entries


def write_key_file(path: str | Path, entries: list[KeyEntry]) -> None:
    """Write `entries` (digests only) to `path`, readable by its owner only (0600)."""
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = ("# BOute API keys: SHA-256 digests only (the keys were shown once, when made).\n"
            + yaml.safe_dump({"keys": [e.to_dict() for e in entries]}, sort_keys=False))
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, p)


class _Bucket:
    """A token bucket (``rate`` tokens/s, at most ``burst``), full at start."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def wait_s(self, now: float, units: float = 1.0) -> float:
        """Seconds until `units` tokens are banked (0: now); refills to `now` first."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= units else (units - self.tokens) / self.rate

    def take(self, now: float, units: float = 1.0) -> float:
        """0 when `units` tokens were taken, else the seconds until they are available."""
        wait = self.wait_s(now, units)
        if wait == 0.0:
            self.tokens -= units
        return wait


class ApiKeys:
    """The live key set: authentication, expiry and per-key rate limits (module docstring).

    ``clock``: the wall clock expiry is judged by (unix seconds; injected in tests). Every
    request refused for an expired key is counted per key id (`report`).
    """

    def __init__(self, entries: list[KeyEntry],
                 clock: Callable[[], float] = time.time) -> None:
        self.by_digest = {e.sha256: e for e in entries}
        self.clock = clock
        self.refused_expired: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        for e in entries:
            if e.rate_rps is not None:
                self._buckets[e.id] = _Bucket(e.rate_rps, e.burst or max(1.0, 2 * e.rate_rps))

    @classmethod
    def from_config(cls, entries: Sequence[Mapping[str, Any]]) -> ApiKeys:
        """From the router config's ``api_keys`` (dicts of `KeyEntry`)."""
        return cls([KeyEntry.from_dict(dict(e), f"api_keys[{i}]")
                    for i, e in enumerate(entries)])

    def carry_buckets(self, old: ApiKeys) -> None:
        """Keep the bucket levels of keys that stay (a rotation does not refill them).

        The counts of refusals of expired keys carry over too.
        """
        for key_id, bucket in self._buckets.items():
            prev = old._buckets.get(key_id)
            if prev is not None:
                bucket.tokens, bucket.at = min(bucket.burst, prev.tokens), prev.at
        self.refused_expired.update(old.refused_expired)

    def authenticate(self, authorization: str | None) -> KeyEntry:
        """The key entry of an ``Authorization`` header value.

        Raises:
            ApiError: 401 (no header, not ``Bearer``, an unknown key, or an expired one: the
                message says when it expired; counted in `refused_expired`).

        """
        if not authorization:
            raise ApiError("Missing API key: send 'Authorization: Bearer <key>'", 401)
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError("Malformed Authorization header: use 'Bearer <key>'", 401)
        entry = self.by_digest.get(hash_key(key.strip()))
        if entry is None:
            raise ApiError("Incorrect API key provided", 401)
        if entry.expired(self.clock()):
            assert entry.expires_at is not None
            self.refused_expired[entry.id] += 1
            raise ApiError(f"API key {entry.id!r} expired at {format_expiry(entry.expires_at)}"
                           "; ask its issuer for a new key", 401)
        return entry

    def admit(self, entry: KeyEntry, units: int = 1, taken: int = 0) -> None:
        """Take a request's `units` tokens (the sequences it asks for) from the key's bucket.

        The router takes one token before it reads a body (a refused body still costs one),
        then the rest once the body says how many: ``admit(entry, units, taken=1)``.

        Raises:
            ApiError: 429 with ``retry_after_s`` when the key is over its rate; 400 (``n``)
                when `units` exceed the key's burst (it could never pass).

        """
        bucket = self._buckets.get(entry.id)
        if bucket is None or units <= taken:
            return
        if units > bucket.burst:
            raise ApiError(f"This request asks for {units} sequences (prompts x n) but key "
                           f"{entry.id!r} allows at most {bucket.burst:g} at once (its burst); "
                           "ask for fewer", param="n")
        self._over(entry, bucket, bucket.take(time.monotonic(), units - taken))

    @staticmethod
    def _over(entry: KeyEntry, bucket: _Bucket, wait_s: float) -> None:
        if wait_s > 0:
            raise ApiError(f"Rate limit reached for key {entry.id!r}: {bucket.rate:g} "
                           "requests/s; retry later", 429, kind="rate_limit_error",
                           retry_after_s=wait_s)

    def report(self) -> dict[str, Any]:
        """The key set for ``/health``'s key holders: counts only, no key ids.

        ``keys``: keys configured; ``expired``: of which expired now; ``refused_expired``:
        requests refused for an expired key since this router started.
        """
        now = self.clock()
        entries = self.by_digest.values()
        return {"keys": len(entries), "expired": sum(e.expired(now) for e in entries),
                "refused_expired": sum(self.refused_expired.values())}


@dataclass(frozen=True)
class RequestLimits:
    """Limits on one request body.

    Attributes:
        max_body_bytes: largest body accepted (413 above). Default 2 MiB: a 128k-token
            prompt is ~0.5 MB of text, and the router forwards the body to the engine over
            gRPC in Serve's high-throughput mode, whose messages stop at 4 MiB.
        max_json_depth: deepest nesting of arrays/objects (400 above); an OpenAI request
            nests 5 deep (messages -> message -> content -> part -> field).
        max_items: most messages, content parts or prompts in one request.
        max_n: largest ``n`` (completions per prompt) and ``best_of`` accepted (400 above);
            a request costs ``prompts x n`` units of admission (`app.sampling`).
        max_logit_bias: most ``logit_bias`` entries (OpenAI documents 300).

    """

    max_body_bytes: int = 2 << 20
    max_json_depth: int = 32
    max_items: int = 4096
    max_n: int = 16
    max_logit_bias: int = 300


def json_depth(obj: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (iterative; stops counting past `limit`)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((v, depth) for v in (value.values() if isinstance(value, dict)
                                              else value))
    return deepest


def parse_body(raw: bytes, limits: RequestLimits) -> dict[str, Any]:
    """The JSON object of a request body within `limits`.

    Raises:
        ApiError: 413 (too large), 400 (not JSON, not an object, nested too deep).

    """
    if len(raw) > limits.max_body_bytes:
        raise ApiError(f"Request body of {len(raw)} bytes exceeds the limit of "
                       f"{limits.max_body_bytes} bytes", 413)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(f"body is nested deeper than {limits.max_json_depth} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError("body is not valid JSON (UTF-8)") from None
    if not isinstance(body, dict):
        raise ApiError("body must be a JSON object")
    if json_depth(body, limits.max_json_depth) > limits.max_json_depth:
        raise ApiError(f"body is nested deeper than {limits.max_json_depth} levels")
    return body


def _check_content(content: Any, where: str, limits: RequestLimits) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list) or len(content) > limits.max_items:
        raise ApiError(f"{where} must be a string or a list of at most {limits.max_items} "
                       "text parts", param=where)
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ApiError(f"{p} must be an object {{'type': 'text', 'text': ...}}", param=p)
        if part.get("type") != "text":
            raise ApiError(f"{p}.type={part.get('type')!r} is not supported: the served models "
                           "take text parts only ({'type': 'text', 'text': ...})", param=p)
        if not isinstance(part.get("text"), str):
            raise ApiError(f"{p}.text must be a string", param=p)


def check_body(kind: str, body: Mapping[str, Any], limits: RequestLimits,
               context_tokens: int | None = None) -> None:
    """Check the fields of a chat (``kind="chat"``) or completions body the stack relies on.

    A completions ``prompt`` is a string, a list of strings, a list of token ids or a list of
    such lists (`app.openai_api.token_prompts`); ``max_tokens`` (or
    ``max_completion_tokens``) an integer in [1, context]; the sampling fields are in the
    ranges vLLM accepts (`app.sampling.check_sampling`, with ``n`` at most
    ``limits.max_n``).

    Raises:
        ApiError: 400 naming the field.

    """
    if "model" in body and not isinstance(body["model"], str):
        raise ApiError("model must be a string", param="model")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise ApiError("stream must be true or false", param="stream")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or len(messages) > limits.max_items:
            raise ApiError(f"messages must be a non-empty list of at most {limits.max_items} "
                           "{role, content} objects", param="messages")
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise ApiError(f"{where} must be an object {{role, content}}", param=where)
            if m.get("role") not in ROLES:
                raise ApiError(f"{where}.role={m.get('role')!r} must be one of "
                               f"{', '.join(ROLES)}", param=f"{where}.role")
            _check_content(m.get("content"), f"{where}.content", limits)
    else:
        prompt = body.get("prompt")
        ok = isinstance(prompt, str) or (
            isinstance(prompt, list) and 0 < len(prompt) <= limits.max_items
            and (all(isinstance(p, str) for p in prompt) or token_prompts(body) is not None))
        if not ok:
            raise ApiError("prompt must be a string, a list of strings, a list of token ids "
                           f"(integers in [0, {MAX_TOKEN_ID}]) or a list of non-empty lists of "
                           f"token ids (at most {limits.max_items} prompts)", param="prompt")
    check_max_tokens(body, context_tokens)
    check_sampling(kind, body, limits.max_n, limits.max_logit_bias)


def check_max_tokens(body: Mapping[str, Any], context_tokens: int | None = None) -> None:
    """``max_tokens`` / ``max_completion_tokens``: integers in [1, `context_tokens`].

    Raises:
        ApiError: 400 naming the field.

    """
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ApiError(f"{name}={v!r} must be a positive integer", param=name)
        if context_tokens is not None and v > context_tokens:
            raise ApiError(f"{name}={v} exceeds the model's context of {context_tokens} "
                           "tokens; ask for fewer", param=name)
