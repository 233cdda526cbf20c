"""Serve's declarative REST API on the Ray dashboard (what ``serve deploy`` speaks).

``PUT`` / ``GET {dashboard}/api/serve/applications/``.

A ``PUT`` replaces the cluster's whole set of applications with the config's: applications
left out are deleted (their replicas drain first), new ones are built, and for the others
Serve applies the difference in place — ``num_replicas`` and ``user_config`` changes are
lightweight (no replica restarts) as long as the application's builder ``args`` are
unchanged. `ServeApi.wait` polls until the cluster serves exactly a config.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from common.errors import BouteError
from placement import TOKEN_FIX, RayAuthError, auth_headers, cluster_auth_token

__all__ = ["ServeApi", "ServeApiError", "dashboard_url", "local_url"]

_PATH = "/api/serve/applications/"


class ServeApiError(BouteError, RuntimeError):
    """The dashboard is unreachable, refused a config, or the cluster did not converge."""


def dashboard_url() -> str:
    """The dashboard address of the Ray cluster this process is connected to."""
    from ray._private.worker import get_dashboard_url

    url = get_dashboard_url()  # type: ignore[no-untyped-call]
    if not url:
        raise ServeApiError("the connected Ray cluster runs no dashboard; start its head with "
                            "the dashboard (`ray start --head --include-dashboard=true`), which "
                            "Serve's declarative API and Ray jobs need")
    return url if url.startswith("http") else f"http://{url}"


def local_url(host: str, port: int) -> str:
    """The URL that reaches a server bound to ``host:port`` from this machine.

    A wildcard bind address (``0.0.0.0``, ``::``) is reached on the loopback.
    """
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


class ServeApi:
    """Client of Serve's REST API at ``dashboard`` (``http://host:8265``).

    Every call carries the cluster's Ray token (``Authorization: Bearer``), `auth_token` or
    else the one `placement.cluster_auth_token` finds when the call is made; none when
    neither has one (a cluster without authentication).
    """

    def __init__(self, dashboard: str, *, timeout_s: float = 30.0, attempts: int = 3,
                 auth_token: str | None = None) -> None:
        self.base = dashboard.rstrip("/")
        if not self.base.startswith("http"):
            self.base = "http://" + self.base
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.auth_token = auth_token

    def _headers(self) -> dict[str, str]:
        try:
            token = self.auth_token or cluster_auth_token()
        except RayAuthError as exc:
            raise ServeApiError(str(exc)) from None
        return {"Content-Type": "application/json", **auth_headers(token)}

    def _call(self, method: str, body: Mapping[str, Any] | None = None) -> Any:
        """One REST call, sent again when it times out (up to `attempts` times).

        GET and the declarative PUT are idempotent; the first PUT on a cluster starts Serve's
        controller inside the dashboard's handler, which takes over 30 s on a busy machine.
        """
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(1, self.attempts + 1):
            req = urllib.request.Request(self.base + _PATH, data=data, method=method,
                                         headers=self._headers())
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    text = resp.read().decode()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace").strip().splitlines()
                reason = detail[-1] if detail else exc.reason
                if exc.code in (401, 403):      # Ray's token check (missing / not the cluster's)
                    sent = ("sent no Ray token" if exc.code == 401 else
                            "sent a Ray token that is not the cluster's")
                    raise ServeApiError(f"the Ray dashboard at {self.base} refused the "
                                        f"{method} (HTTP {exc.code}: {reason}): this process "
                                        f"{sent}; {TOKEN_FIX}") from None
                raise ServeApiError(f"Serve refused the {method} at {self.base}{_PATH}: HTTP "
                                    f"{exc.code}: {reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if isinstance(cause, TimeoutError) and attempt < self.attempts:
                    continue
                if isinstance(cause, TimeoutError):
                    raise ServeApiError(f"the Ray dashboard at {self.base} did not answer the "
                                        f"{method} within {self.timeout_s:g} s, {attempt} "
                                        "times; is the head node overloaded?") from None
                raise ServeApiError(f"cannot reach the Ray dashboard at {self.base} ({exc}); "
                                    "pass the head node's dashboard address (port 8265)"
                                    ) from None
        return json.loads(text) if text.strip() else None

    def details(self) -> dict[str, Any]:
        """The cluster's Serve state.

        ``applications`` (status, deployments, replicas, ``deployed_app_config``),
        ``http_options``, ``proxy_location``.
        """
        out = self._call("GET")
        return out if isinstance(out, dict) else {}

    def apply(self, config: Mapping[str, Any]) -> None:
        """Deploy `config` declaratively (returns once Serve accepted it)."""
        self._call("PUT", config)

    def wait(self, config: Mapping[str, Any], *, timeout_s: float = 600.0,
             poll_s: float = 0.5) -> dict[str, Any]:
        """Block until the cluster runs exactly `config`'s applications; returns the details.

        Each application RUNNING, every deployment HEALTHY at its ``num_replicas`` running
        replicas, no other application left.

        Raises:
            ServeApiError: an application failed to deploy (Serve's message), or the timeout.

        """
        want = {a["name"]: {d["name"]: d.get("num_replicas") for d in a.get("deployments", [])}
                for a in config["applications"]}
        deadline = time.monotonic() + timeout_s
        while True:
            details = self.details()
            pending = _pending(details.get("applications") or {}, want)
            if pending is None:
                return details
            if time.monotonic() > deadline:
                raise ServeApiError(f"Serve did not converge within {timeout_s:g} s: {pending}")
            time.sleep(poll_s)


def _pending(apps: Mapping[str, Any], want: Mapping[str, Mapping[str, int | None]]
             ) -> str | None:
    """What still differs between the cluster's `apps` and `want` (None when nothing)."""
    for name in apps:
        if name not in want:
            return f"application {name!r} is still being deleted"
    for name, deployments in want.items():
        app = apps.get(name)
        if app is None:
            return f"application {name!r} is not created yet"
        status = app.get("status")
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ServeApiError(f"application {name!r} is {status}: {app.get('message', '')}")
        if status != "RUNNING":
            return f"application {name!r} is {status}"
        for dep, n in deployments.items():
            d = (app.get("deployments") or {}).get(dep)
            if d is None:
                return f"deployment {name}/{dep} is not created yet"
            running = sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING")
            if d.get("status") != "HEALTHY" or (n is not None and running != n):
                return (f"deployment {name}/{dep} is {d.get('status')} with {running} running "
                        f"replica(s) of {n if n is not None else '?'}")
    return None
