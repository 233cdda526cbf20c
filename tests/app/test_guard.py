"""API keys, per-key rate limits and body limits (pure; hand-computed values)."""

import json

import pytest

from app.guard import (
    ApiKeys,
    KeyEntry,
    KeyFileError,
    RequestLimits,
    check_body,
    hash_key,
    json_depth,
    new_key,
    parse_body,
    read_key_file,
    write_key_file,
)
from app.openai_api import ApiError


def test_keys_are_stored_hashed_and_authenticate(tmp_path) -> None:
    key = new_key()
    assert key.startswith("bk-") and len(key) == 3 + 43     # 32 bytes, URL-safe base64
    path = tmp_path / "keys.yaml"
    write_key_file(path, [KeyEntry("team-a", hash_key(key), rate_rps=2.0)])
    assert key not in path.read_text()
    assert (path.stat().st_mode & 0o777) == 0o600
    keys = ApiKeys(read_key_file(path))
    assert keys.authenticate(f"Bearer {key}").id == "team-a"
    for header in (None, "", "Bearer", f"Basic {key}", "Bearer bk-wrong", key):
        with pytest.raises(ApiError) as exc:
            keys.authenticate(header)
        assert exc.value.status == 401


def test_rate_limit_is_a_token_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.guard as guard

    now = [100.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    entry = KeyEntry("k", hash_key("x"), rate_rps=2.0)          # burst 2 * 2 = 4
    keys = ApiKeys([entry])
    for _ in range(4):
        keys.admit(entry)
    with pytest.raises(ApiError) as exc:
        keys.admit(entry)
    assert exc.value.status == 429 and exc.value.retry_after_s == pytest.approx(0.5)
    now[0] += 0.5                                                # one token back at 2/s
    keys.admit(entry)
    with pytest.raises(ApiError):
        keys.admit(entry)
    # A rotation keeps the level of a key that stays (no refill by reconfiguring).
    rotated = ApiKeys([entry, KeyEntry("other", hash_key("y"))])
    rotated.carry_buckets(keys)
    with pytest.raises(ApiError):
        rotated.admit(entry)


@pytest.mark.parametrize("text, match", [
    ("keys: [{id: a}]", "id and sha256 are required"),
    ("keys: [{id: a, sha256: abc}]", "64 lowercase hex"),
    ("keys: [{id: a, sha256: " + "a" * 64 + ", rate_rps: 0}]", "rate_rps=0 must be a positive"),
    ("keys: [{id: a, sha256: " + "a" * 64 + ", key: x}]", "unknown field"),
    ("keys: 3", "a list 'keys'"),
    ("keys: [{id: a, sha256: " + "a" * 64 + "}, {id: a, sha256: " + "b" * 64 + "}]",
     "more than once"),
])
def test_bad_key_files_name_the_problem(tmp_path, text: str, match: str) -> None:
    p = tmp_path / "k.yaml"
    p.write_text(text)
    with pytest.raises(KeyFileError, match=match):
        read_key_file(p)


def test_missing_and_binary_key_files(tmp_path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KeyFileError, match="not readable"):
        read_key_file(tmp_path / "b.yaml")


def test_json_depth() -> None:
    assert json_depth({}, 10) == 1
    assert json_depth({"a": [1, {"b": [[]]}]}, 10) == 5     # {} [ {} [ [
    assert json_depth(3, 10) == 0


def test_body_limits() -> None:
    lim = RequestLimits(max_body_bytes=100, max_json_depth=4)
    assert parse_body(b'{"a": [1]}', lim) == {"a": [1]}
    for raw, status in [(b"x" * 101, 413), (b"not json", 400), (b"[1]", 400),
                        (b'{"a": [[[[1]]]]}', 400), (b"\xff", 400)]:
        with pytest.raises(ApiError) as exc:
            parse_body(raw, lim)
        assert exc.value.status == status, raw
    deep = ("[" * 100_000 + "]" * 100_000).encode()          # recursion in the parser
    with pytest.raises(ApiError, match="nested deeper"):
        parse_body(deep, RequestLimits(max_body_bytes=1 << 20))


def _msg(content) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize("body, param", [
    (_msg([{"type": "text", "text": 123}]), "messages[0].content[0]"),
    (_msg([{"type": "image_url", "image_url": {"url": "x"}}]), "messages[0].content[0]"),
    (_msg(["plain"]), "messages[0].content[0]"),
    (_msg(7), "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({**_msg("x"), "max_tokens": 0}, "max_tokens"),
    ({**_msg("x"), "max_tokens": True}, "max_tokens"),
    ({**_msg("x"), "max_tokens": "5"}, "max_tokens"),
    ({**_msg("x"), "stream": "yes"}, "stream"),
    ({**_msg("x"), "model": 3}, "model"),
])
def test_chat_bodies_are_checked(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as exc:
        check_body("chat", body, RequestLimits())
    assert exc.value.status == 400 and exc.value.param == param


def test_max_tokens_against_the_context() -> None:
    body = {**_msg("x"), "max_tokens": 131_000}
    check_body("chat", body, RequestLimits())                 # no context known: fine
    with pytest.raises(ApiError, match="exceeds the model's context of 131072"):
        check_body("chat", {**body, "max_tokens": 131_073}, RequestLimits(), 131_072)
    check_body("chat", _msg([{"type": "text", "text": "ok"}]), RequestLimits(), 8)


@pytest.mark.parametrize("prompt, ok", [("x", True), (["a", "b"], True), ([1, 2], True),
                                        ([], False), ([1, "a"], False), (3, False),
                                        (None, False), ([True], False)])
def test_completion_prompts(prompt, ok: bool) -> None:
    body = {"model": "auto", "prompt": prompt}
    if ok:
        check_body("completions", body, RequestLimits())
    else:
        with pytest.raises(ApiError):
            check_body("completions", body, RequestLimits())
    json.dumps(body)
