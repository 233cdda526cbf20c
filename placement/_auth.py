"""Ray token authentication: where a client finds the cluster's token, and throw-away tokens.

Ray (>= 2.52; on by default for local clusters since 2.59) authenticates every control-plane
call when ``RAY_AUTH_MODE=token`` is set on every node: GCS and raylet gRPC, and the dashboard's
HTTP API (Serve's REST API, Ray jobs), which answers 401 without an ``Authorization: Bearer
<token>`` header and 403 with a wrong token. Every process finds the token in this order
(Ray's ``AuthenticationTokenLoader``):

1. ``RAY_AUTH_TOKEN`` (the token itself);
2. ``RAY_AUTH_TOKEN_PATH`` (a file holding it; set but unreadable or empty is an error);
3. ``~/.ray/auth_token`` (what ``ray get-auth-token --generate`` writes).

A process reads ``RAY_AUTH_MODE`` once into its Ray config; it keeps that mode (and the token
it loaded) while connected. Workers and job drivers inherit both from their raylet, so code
running on the cluster needs nothing more. BOute's cluster files set the mode on every node
and ship one token to ``~/.ray/auth_token`` on each; `local_cluster` gives each throw-away
cluster a fresh token. Nothing in BOute turns authentication off.

**Token files are 0600.** Ray writes the token it generates (``ray.init()`` starting a local
cluster in token mode, the default, with no token found) with a plain ``open(path, "w")``:
mode 0644 under the usual umask, readable by every user of the machine.
`secure_token_file` makes the file Ray reads 0600, and can create it first (a fresh 256-bit
token, created 0600 in a 0700 folder) so that Ray finds a token and never writes its own. Our
entry points call it: `connect` (``boute deploy``, ``profile``, ``replan``) and the ``serve
run`` builder (`app.main.app`), before Ray starts.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from common.errors import BouteError

__all__ = [
    "AUTH_MODE_ENV",
    "TOKEN_ENV",
    "TOKEN_FIX",
    "TOKEN_PATH_ENV",
    "RayAuthError",
    "auth_headers",
    "cluster_auth_token",
    "connect",
    "connect_hint",
    "find_auth_token",
    "new_token_file",
    "refresh_ray_auth_config",
    "secure_token_file",
    "use_token_if_available",
]

_log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"
"""Ray's default token file, relative to the home folder."""
TOKEN_FILE_MODE = 0o600
"""Owner read and write, nobody else: every token file BOute writes or tightens."""

TOKEN_FIX = ("give this machine the cluster's token: copy the head's ~/.ray/auth_token to "
             "~/.ray/auth_token here (or point RAY_AUTH_TOKEN_PATH at a copy, or set "
             "RAY_AUTH_TOKEN), and export RAY_AUTH_MODE=token")
"""How to fix a missing or wrong token (the end of every authentication error's message)."""


class RayAuthError(BouteError, ValueError):
    """No way to authenticate to the Ray cluster from here (no token, or not the cluster's)."""


def find_auth_token(environ: Mapping[str, str] | None = None, home: Path | None = None
                    ) -> str | None:
    """The token Ray would load here: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, the default file.

    Args:
        environ: the environment to read (default ``os.environ``).
        home: the home folder holding ``.ray/auth_token`` (default ``Path.home()``).

    Returns:
        The token, surrounding whitespace stripped, or None when no source has one.

    Raises:
        RayAuthError: ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty
            (Ray refuses to start or connect then, rather than fall back).

    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path_value = env.get(TOKEN_PATH_ENV)
    if path_value:
        try:
            token = Path(path_value).expanduser().read_text().strip()
        except OSError as exc:
            raise RayAuthError(f"{TOKEN_PATH_ENV}={path_value} cannot be read ({exc.strerror}); "
                               "point it at the file holding the cluster's token, or unset it"
                               ) from None
        if not token:
            raise RayAuthError(f"{TOKEN_PATH_ENV}={path_value} is empty; point it at the file "
                               "holding the cluster's token, or unset it")
        return token
    default = (Path.home() if home is None else home) / DEFAULT_TOKEN_FILE
    try:
        return default.read_text().strip() or None
    except OSError:
        return None


def cluster_auth_token() -> str | None:
    """The token of the Ray cluster this process talks to, or None (no authentication).

    While this process is connected to a cluster in token mode, the token its Ray connection
    loaded (a `local_cluster`'s fresh token, or the one a job driver inherited); otherwise
    the one `find_auth_token` finds.

    Raises:
        RayAuthError: see `find_auth_token`.

    """
    connected = _connected_token()
    return connected if connected is not None else find_auth_token()


def auth_headers(token: str | None) -> dict[str, str]:
    """The HTTP header the Ray dashboard checks (``Authorization: Bearer``), or none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_token_file(folder: str | Path) -> Path:
    """Write a fresh random token (256 bits, as Ray's) to a new file in `folder`, mode 0600.

    For a throw-away cluster: each one gets its own token and file (``auth_token-*``; two
    local clusters sharing a folder keep theirs), never the user's ``~/.ray/auth_token``.
    Returns the file's path.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="auth_token-", dir=Path(folder).resolve())  # 0600
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return Path(name)


def secure_token_file(environ: Mapping[str, str] | None = None, home: Path | None = None, *,
                      create: bool = False) -> Path | None:
    """Make the token file Ray reads here private (mode 0600); with `create`, write it first.

    The file is ``RAY_AUTH_TOKEN_PATH`` when set, else ``~/.ray/auth_token`` (see the module
    docstring for why Ray's own is not private).

    Args:
        environ: the environment to read (default ``os.environ``).
        home: the home folder (default ``Path.home()``).
        create: when no source has a token and ``RAY_AUTH_MODE`` is not ``disabled``, create
            ``~/.ray/auth_token`` (``O_EXCL``, mode 0600; ``~/.ray`` made 0700 if new) with a
            fresh 256-bit token, before ``ray.init`` would generate one.

    Returns:
        The token file (now 0600), or None when no file is involved (``RAY_AUTH_TOKEN`` holds
        the token, or there is no file and `create` is off or authentication is disabled).
        A file whose mode cannot be changed (another user's, a read-only mount) is left as
        it is, with a warning naming it and the fix.

    """
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV, "").strip():
        return None
    path_value = env.get(TOKEN_PATH_ENV)
    path = (Path(path_value).expanduser() if path_value
            else (Path.home() if home is None else home) / DEFAULT_TOKEN_FILE)
    if not path.exists():
        if not create or path_value or env.get(AUTH_MODE_ENV, "").lower() == "disabled":
            return None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, TOKEN_FILE_MODE)
        except FileExistsError:         # created meanwhile (another process): tighten it
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, TOKEN_FILE_MODE)
        except OSError as exc:
            _log.warning("the Ray token file %s is mode %o (readable by others) and cannot be "
                         "made 0600 (%s); run `chmod 600 %s` as its owner", path, mode,
                         exc.strerror, path)
    return path


def use_token_if_available() -> bool:
    """Put this (not yet connected) process's Ray client in token mode when a token is found.

    Ray turns token mode on by itself only for ``address="auto"``; a client given an explicit
    address and no ``RAY_AUTH_MODE`` sends no token, and a token cluster then refuses it
    after a 20 s timeout with no word about the token. A token-mode client also reaches a
    cluster without authentication. ``RAY_AUTH_MODE`` set by the user is kept as it is.

    Returns:
        Whether this process now talks to Ray in token mode.

    Raises:
        RayAuthError: see `find_auth_token`.

    """
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is None and find_auth_token() is not None:
        os.environ[AUTH_MODE_ENV] = mode = "token"
        refresh_ray_auth_config()
    return mode == "token"


def connect(address: str, unreachable_fix: str) -> None:
    """``ray.init(address)`` with the cluster's token; failures are one-line `RayAuthError`s.

    Args:
        address: the Ray cluster address (``auto``: the local node's cluster).
        unreachable_fix: what to tell a user whose cluster cannot be reached.

    The token file this client reads is made 0600 first (`secure_token_file`).

    Raises:
        RayAuthError: no or a wrong token (with `TOKEN_FIX`), or the cluster is unreachable
            (with `unreachable_fix`, and `connect_hint` unless nothing listens at the address:
            that is found in at most 5 s, before Ray's own minutes of retries).

    """
    import ray
    from ray.exceptions import AuthenticationError

    try:
        secure_token_file()
        use_token_if_available()
        _check_reachable(address, unreachable_fix)
        ray.init(address=address, log_to_driver=False)
    except AuthenticationError as exc:      # RAY_AUTH_MODE=token but no token found here
        raise RayAuthError(f"cannot authenticate to the Ray cluster at --address={address} "
                           f"({getattr(exc, 'message', exc)}); {TOKEN_FIX}") from None
    except (ConnectionError, RuntimeError) as exc:
        raise RayAuthError(f"cannot reach a Ray cluster at --address={address} ({exc}); "
                           f"{unreachable_fix}; {connect_hint()}") from None


def _check_reachable(address: str, unreachable_fix: str, timeout_s: float = 5.0) -> None:
    """Raise `RayAuthError` at once when nothing accepts a TCP connection at ``host:port``.

    ``ray.init`` retries an address where nothing listens for minutes before it gives up;
    a closed port or an unknown host can never become a cluster. Addresses that are not
    ``[ray://]host:port`` (``auto``) are left to Ray.
    """
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RayAuthError(f"cannot reach a Ray cluster at --address={address} (nothing "
                           f"answers at {host}:{port}: {why}); {unreachable_fix}") from None


def connect_hint() -> str:
    """What to check when a Ray cluster refused or did not answer this client."""
    if os.environ.get(AUTH_MODE_ENV) == "token":
        return ("if it runs with token authentication, this machine's token is not the "
                f"cluster's: {TOKEN_FIX}")
    return ("a cluster started with RAY_AUTH_MODE=token (as BOute's cluster files do) also "
            f"needs its token here: {TOKEN_FIX}")


def refresh_ray_auth_config() -> None:
    """Make this process's Ray config re-read ``RAY_AUTH_MODE`` and the token sources.

    Ray reads them once per process (the C++ ``RayConfig`` and token loader caches); a
    cluster started or joined after the environment changed needs the refresh. Only while
    this process is not connected: a connected driver keeps the mode it connected with.
    """
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    if ray.is_initialized():
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _connected_token() -> str | None:
    """The token this process's live Ray connection uses, if it is in token mode."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    if not is_token_auth_enabled():
        return None
    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return None
    token = loader.get_raw_token(ignore_auth_mode=True)
    return str(token) if token else None
