"""Ray token authentication helpers: where a client finds the token, throw-away tokens, and
Serve's REST client sending it (a fake dashboard checking the header as Ray's does)."""

import http.server
import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from placement import (
    RayAuthError,
    auth_headers,
    connect_hint,
    find_auth_token,
    secure_token_file,
)
from placement._auth import new_token_file

TOKEN = "a" * 64


@pytest.mark.parametrize(("env", "default", "expected"), [
    ({"RAY_AUTH_TOKEN": " t1\n", "RAY_AUTH_TOKEN_PATH": "FILE"}, "t3", "t1"),  # 1. the token
    ({"RAY_AUTH_TOKEN_PATH": "FILE"}, "t3", "t2"),                           # 2. its file
    ({"RAY_AUTH_TOKEN": ""}, "t3\n", "t3"),                                  # 3. ~/.ray/auth_token
    ({}, None, None),                                                        # none: no auth
])
def test_token_sources_in_rays_order(tmp_path: Path, env: dict[str, str], default: str | None,
                                     expected: str | None) -> None:
    (tmp_path / "file").write_text("t2\n")
    if default is not None:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text(default)
    env = {k: v.replace("FILE", str(tmp_path / "file")) for k, v in env.items()}
    assert find_auth_token(env, home=tmp_path) == expected


def test_a_token_path_that_cannot_be_read_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t3")
    with pytest.raises(RayAuthError, match=r"RAY_AUTH_TOKEN_PATH=/nonexistent/token cannot be "
                                           r"read \(No such file or directory\); point it at"):
        find_auth_token({"RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}, home=tmp_path)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RayAuthError, match="is empty; point it at the file"):
        find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, home=tmp_path)


def test_throw_away_tokens_are_fresh_private_files(tmp_path: Path) -> None:
    a, b = new_token_file(tmp_path / "t"), new_token_file(tmp_path / "t")
    assert a != b and a.parent == b.parent == (tmp_path / "t").resolve()
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    token = a.read_text()
    assert len(token) == 64 and int(token, 16) >= 0 and token != b.read_text()  # 256 bits, hex
    assert auth_headers(token) == {"Authorization": f"Bearer {token}"}
    assert auth_headers(None) == {}


def test_a_client_with_a_token_at_hand_talks_in_token_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import placement._auth as auth

    refreshed: list[bool] = []
    monkeypatch.setattr(auth, "refresh_ray_auth_config", lambda: refreshed.append(True))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    with pytest.raises(RayAuthError, match="cannot be read"):      # a bad path stops here
        auth.use_token_if_available()
    (tmp_path / "none").write_text(TOKEN)
    assert auth.use_token_if_available() and refreshed == [True]
    assert auth.os.environ["RAY_AUTH_MODE"] == "token"
    assert "this machine's token is not the cluster's: give this machine" in connect_hint()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")                 # the user's word is kept
    assert not auth.use_token_if_available() and refreshed == [True]
    assert "also needs its token here" in connect_hint()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rays_generated_token_is_0644_and_ours_is_0600(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `ray.init()` runs when it starts a local cluster in token mode and finds no token
    # (ray/_private/authentication/authentication_token_setup.py): open(path, "w"), so the
    # umask decides: 0644, readable by every user (issue 31's probe).
    import os

    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    monkeypatch.setenv("HOME", str(tmp_path))
    old = os.umask(0o022)
    try:
        generate_and_save_token()
        token_file = tmp_path / ".ray" / "auth_token"
        assert _mode(token_file) == 0o644
        token = token_file.read_text()
        # An entry point that finds it (connect, the serve run builder) makes it private.
        assert secure_token_file({}, home=tmp_path) == token_file
        assert _mode(token_file) == 0o600 and token_file.read_text() == token
    finally:
        os.umask(old)


def test_the_token_file_is_created_0600_before_ray_would_write_one(tmp_path: Path) -> None:
    import os

    old = os.umask(0o000)           # even a permissive umask cannot widen it
    try:
        assert secure_token_file({}, home=tmp_path) is None           # create off: no file
        assert not (tmp_path / ".ray").exists()
        path = secure_token_file({}, home=tmp_path, create=True)
    finally:
        os.umask(old)
    assert path == tmp_path / ".ray" / "auth_token"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0                  # 256 bits, as Ray's
    assert find_auth_token({}, home=tmp_path) == token               # Ray loads it, writes none
    assert secure_token_file({}, home=tmp_path, create=True) == path  # kept, not replaced
    assert path.read_text() == token


@pytest.mark.parametrize("env", [{"RAY_AUTH_TOKEN": TOKEN},            # not in a file
                                 {"RAY_AUTH_MODE": "disabled"},        # Ray writes nothing
                                 {"RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}])  # Ray's error
def test_no_token_file_is_made_where_ray_would_not_read_or_write_one(
        tmp_path: Path, env: dict[str, str]) -> None:
    assert secure_token_file(env, home=tmp_path, create=True) is None
    assert not (tmp_path / ".ray").exists()


def test_a_token_path_file_is_tightened_too(tmp_path: Path) -> None:
    f = tmp_path / "cluster-token"
    f.write_text(TOKEN)
    f.chmod(0o640)
    assert secure_token_file({"RAY_AUTH_TOKEN_PATH": str(f)}, home=tmp_path) == f
    assert _mode(f) == 0o600


def test_connect_makes_the_token_file_private_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `boute deploy`, `profile` and `replan` join a cluster through `connect`: nothing
    # listens at port 1, so it stops before Ray, but the token file is 0600 already.
    import placement

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")        # kept as is: no Ray config refresh
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    (tmp_path / ".ray").mkdir()
    token_file = tmp_path / ".ray" / "auth_token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    with pytest.raises(RayAuthError, match=r"nothing answers at 127.0.0.1:1"):
        placement.connect("127.0.0.1:1", "start one")
    assert _mode(token_file) == 0o600


class _Dashboard(http.server.BaseHTTPRequestHandler):
    """Serve's REST endpoint behind Ray's token check (401 missing, 403 wrong)."""

    def _reply(self) -> None:
        got = self.headers.get("Authorization", "")
        code = 200 if got == f"Bearer {TOKEN}" else 401 if not got else 403
        body = (json.dumps({"applications": {}}) if code == 200 else
                "Unauthorized: Missing authentication token" if code == 401 else
                "Forbidden: Invalid authentication token").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_serve_api_sends_the_clusters_token_and_names_the_fix(
        dashboard: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.serve_api import ServeApi, ServeApiError

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                       # no ~/.ray/auth_token
    with pytest.raises(ServeApiError, match=r"refused the GET \(HTTP 401: Unauthorized: Missing "
                                            r"authentication token\): this process sent no Ray "
                                            r"token; give this machine the cluster's token"):
        ServeApi(dashboard).details()
    with pytest.raises(ServeApiError, match=r"HTTP 403: .* sent a Ray token that is not the "
                                            r"cluster's; give this machine"):
        ServeApi(dashboard, auth_token="b" * 64).apply({"applications": []})
    assert ServeApi(dashboard, auth_token=TOKEN).details() == {"applications": {}}
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)                     # found as Ray finds it
    assert ServeApi(dashboard).details() == {"applications": {}}


def test_replan_cli_with_an_unreadable_token_path_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from boute.cli import main

    if ray.is_initialized():
        pytest.skip("a Ray connection is open in this process")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/nonexistent/token")
    assert main(["replan", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "RAY_AUTH_TOKEN_PATH=/nonexistent/token" in err, err


class _SlowFirst(http.server.BaseHTTPRequestHandler):
    """Answers the first `slow` requests after 1 s (as a dashboard starting Serve does)."""

    calls: ClassVar[list[str]] = []
    slow = 1

    def do_PUT(self) -> None:
        type(self).calls.append(self.command)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if len(type(self).calls) <= type(self).slow:
            time.sleep(1.0)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_serve_api_sends_a_timed_out_put_again_and_names_a_dashboard_that_never_answers(
        ) -> None:
    from app.serve_api import ServeApi, ServeApiError

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFirst)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _SlowFirst.calls, _SlowFirst.slow = [], 1
        ServeApi(url, timeout_s=0.3, auth_token=TOKEN).apply({"applications": []})
        assert _SlowFirst.calls == ["PUT", "PUT"]            # timed out once, then answered
        _SlowFirst.calls, _SlowFirst.slow = [], 10
        with pytest.raises(ServeApiError, match=r"did not answer the PUT within 0.3 s, 3 "
                                                r"times; is the head node overloaded"):
            ServeApi(url, timeout_s=0.3, auth_token=TOKEN).apply({"applications": []})
        assert len(_SlowFirst.calls) == 3
    finally:
        server.shutdown()
        server.server_close()
