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


def test_a_request_takes_one_token_per_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    """n = 4 takes 4 of the bucket's tokens (1 before the body, 3 after); more than the burst
    can never pass (400)."""
    import app.guard as guard

    now = [100.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    entry = KeyEntry("k", hash_key("x"), rate_rps=2.0)          # burst 2 * 2 = 4
    keys = ApiKeys([entry])
    keys.admit(entry)                                            # before the body: 1
    keys.admit(entry, 4, taken=1)                                # n = 4: 3 more, none left
    with pytest.raises(ApiError) as exc:
        keys.admit(entry)
    assert exc.value.status == 429 and exc.value.retry_after_s == pytest.approx(0.5)
    keys.admit(entry, 1, taken=1)                                # n = 1: nothing more
    now[0] += 1.0                                                # 2 tokens back at 2/s
    keys.admit(entry)                                            # 1 left
    with pytest.raises(ApiError) as exc:
        keys.admit(entry, 3, taken=1)                            # 2 more: 1 missing, 0.5 s
    assert exc.value.status == 429 and exc.value.retry_after_s == pytest.approx(0.5)
    keys.admit(entry, 2, taken=1)                                # the refusal took none
    with pytest.raises(ApiError):
        keys.admit(entry)
    now[0] += 10.0                                               # full again: 4
    with pytest.raises(ApiError) as exc:
        keys.admit(entry, 5)
    assert exc.value.status == 400 and exc.value.param == "n"
    assert "asks for 5 sequences" in str(exc.value) and "at most 4 at once" in str(exc.value)
    keys.admit(entry, 4)                                         # and it took nothing


def _utc(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_keys_expire_at_their_time_and_are_counted(tmp_path) -> None:
    clock = [_utc("2027-01-30T23:59:59+00:00")]
    # The same instant, written with another zone: kept in UTC.
    expiring = KeyEntry("temp", hash_key("k1"), expires_at="2027-01-31T01:00:00+01:00")
    assert expiring.to_dict()["expires_at"] == "2027-01-31T00:00:00Z"
    keys = ApiKeys([expiring, KeyEntry("forever", hash_key("k2"))], clock=lambda: clock[0])
    assert keys.authenticate("Bearer k1").id == "temp"           # one second before
    assert keys.report() == {"keys": 2, "expired": 0, "refused_expired": 0}
    clock[0] += 1.0                                              # at expires_at: expired
    for _ in range(2):
        with pytest.raises(ApiError) as exc:
            keys.authenticate("Bearer k1")
        assert exc.value.status == 401
        assert str(exc.value) == ("API key 'temp' expired at 2027-01-31T00:00:00Z; ask its "
                                  "issuer for a new key")
    assert keys.authenticate("Bearer k2").id == "forever"
    assert keys.report() == {"keys": 2, "expired": 1, "refused_expired": 2}
    rotated = ApiKeys([expiring], clock=lambda: clock[0])       # a rotation keeps the count
    rotated.carry_buckets(keys)
    assert rotated.report() == {"keys": 1, "expired": 1, "refused_expired": 2}
    # Through the key file (written quoted; an unquoted YAML timestamp reads the same) and
    # the router config's wire format.
    path = tmp_path / "keys.yaml"
    write_key_file(path, [expiring])
    assert read_key_file(path) == [expiring]
    path.write_text(f"keys: [{{id: temp, sha256: {hash_key('k1')}, "
                    "expires_at: 2027-01-31T00:00:00Z}]")
    assert read_key_file(path) == [expiring]
    from app.router_config import RouterConfig

    cfg = RouterConfig.parse({"weak": "a", "strong": "b", "strong_share": 0.5,
                              "shares": {"a": {"g": 1.0}}, "api_keys": [expiring.to_dict()]})
    assert cfg.api_keys == [expiring]
    assert cfg.wire()["api_keys"][0]["expires_at"] == "2027-01-31T00:00:00Z"


@pytest.mark.parametrize("value", ["2027-01-31T00:00:00", "2027-01-31", "tomorrow", 5])
def test_an_expiry_needs_a_time_with_its_zone(value) -> None:
    with pytest.raises(KeyFileError, match=r"expires_at=.* must be an ISO-8601 time with its "
                       "zone"):
        KeyEntry("k", hash_key("x"), expires_at=value)
