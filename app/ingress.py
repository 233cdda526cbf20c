"""The router's HTTP side: the stack's OpenAI-compatible ingress, closed by default.

`RouterIngress` is the Serve deployment (named ``RouterIngress``: replanning and the follower
find it by that name) in front of every replica group. A request goes through, in order
(each refusal is an OpenAI error body, logged and counted):

1. **API key** (`app.guard.ApiKeys`, when the config carries ``api_keys``): 401 without a
   valid ``Authorization: Bearer`` key or with an expired one; 429 + ``Retry-After`` when
   its key has no token left (one is taken before the body is read).
2. **Body limits** (`app.guard`): 413 above ``max_body_bytes`` (checked on
   ``Content-Length`` and while reading, before anything is parsed or forwarded); 408 when
   the body has not arrived within ``body_timeout_s`` (a slow client holds no slot past it;
   HAProxy cuts slow headers itself, `placement._haproxy`); 400 for JSON nested too deep,
   wrong field types, non-text content parts, sampling fields out of vLLM's ranges
   (`app.sampling`). Then the request takes the rest of its units from its key's bucket, one
   per sequence it asks for (``prompts x n``): 429 when they are not there.
3. **Routing, admission, failover** (`app.dispatch.Dispatcher`): which model (scored, or
   pinned by name), which group (by the plan's shares, within its in-flight bound: 429
   when all are full), and where a failed call goes next.
4. **Answer**: JSON, or a server-sent-event stream passed on as the engine writes it. A
   client that disconnects (while sending its body, waiting, or reading the stream) cancels
   its engine request, if one started (the engine frees its sequence), and is logged as
   ``abandoned`` with status 499 (nginx's "client closed request"), never as a 500.

Serve's replica counts are polled every second (`LIVENESS_POLL_S`) and every group is pinged
every second (`app.dispatch.Dispatcher.watch`): a group that loses replicas, or stops
answering its probes, has the calls still waiting on it aborted and retried elsewhere.
``/health`` (the load balancer's check) answers 200 while any request can be served, with
each model and group ``serving`` / ``degraded`` / ``down`` and the overall status ``ok`` /
``degraded`` / ``unavailable``; 503 only when nothing can be served (`app.health`).
Each group's entry also carries its live ``prediction`` (`app.drift`: the perf DB's
prediction at the group's observed rate against what it served in the sliding window, the
error and the drift verdict), and ``boute_prediction_error{group, quantity}`` is set every
`app.drift.EXPORT_S` seconds; read-only, it never fails a request.
``/health/ready`` (operators) answers 200 only when every group of the plan serves, else 503
naming what is missing; it needs a key when keys are on. Routing changes and key rotations arrive
as ``user_config`` (`RouterIngress.reconfigure`, an `app.router_config.RouterConfig`): live,
nothing restarts.

(No ``from __future__ import annotations`` here: FastAPI reads the route signatures' types at
runtime.)
"""

import asyncio
import logging
import math
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from .affinity import SESSION_HEADER
from .calls import Call, Pending, PendingStream, Reply, StreamReply
from .dispatch import ROUTED_MODELS, STATUS_ABANDONED, WORKLOAD_HEADER, Dispatcher
from .drift import EXPORT_S
from .guard import ApiKeys, KeyEntry, check_body, parse_body
from .observability import Observer
from .openai_api import ApiError
from .request_log import LogLimits
from .router_config import RouterConfig
from .sampling import request_units

__all__ = ["RouterIngress", "ServeEngines"]

# Requests a replica takes at once: Serve's own bound would queue or reject before the
# router's admission control, which is sized from the plan.
MAX_ONGOING_REQUESTS = 4096
# A router replica's graceful stop runs `__del__`, which flushes the request log; Serve
# force-kills it after `graceful_shutdown_timeout_s` (default 20 s). In Serve's
# high-throughput mode the ingress replica first stays open for the direct-ingress draining
# period (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, 30 s by default), so the router gets
# that plus time to drain and flush; an idle stop is not slower for it.
ROUTER_SHUTDOWN_TIMEOUT_S = 60.0
LIVENESS_POLL_S = 1.0
_LOG = logging.getLogger("ray.serve")     # the replica's log file (a 500 is a bug: traced)


class ServeEngines:
    """`app.calls.EngineClient` over Serve deployment handles (group name -> handle).

    The method handles (``handle.openai``, ``handle.options(stream=True).openai``) are made
    once per group and handle, not per request: each is a new `DeploymentHandle` (sharing
    the group's Serve router), tens of microseconds of the hop. A handle replaced in `handles` (a
    reconfigure) gets new ones.
    """

    def __init__(self, handles: dict[str, DeploymentHandle[Any]]) -> None:
        self.handles = handles
        self._methods: dict[tuple[str, str, bool], tuple[Any, Any]] = {}

    def _method(self, group: str, name: str, stream: bool = False) -> Any:
        """The group's handle to `name` (streamed or not), made once per handle."""
        handle = self.handles[group]
        cached = self._methods.get((group, name, stream))
        if cached is not None and cached[0] is handle:
            return cached[1]
        method = (handle.options(method_name=name, stream=True) if stream
                  else handle.options(method_name=name))
        self._methods[(group, name, stream)] = (handle, method)
        return method

    def call(self, group: str, kind: str, body: dict[str, Any]) -> Pending:
        """``openai(kind, body)`` on the group's deployment."""
        return self._method(group, "openai").remote(kind, body)  # type: ignore[no-any-return]

    def stream(self, group: str, kind: str, body: dict[str, Any]) -> PendingStream:
        """``openai(kind, body)`` streamed (``options(stream=True)``)."""
        return self._method(group, "openai", True).remote(  # type: ignore[no-any-return]
            kind, body)

    def ping(self, group: str) -> Pending:
        """``ping()`` on one replica of the group (the liveness probe)."""
        return self._method(group, "ping").remote()  # type: ignore[no-any-return]


def _running_replicas() -> dict[tuple[str, str], int]:
    """Serve's count of RUNNING replicas per (application, deployment).

    The counts `serve.status` reports (``replica_states["RUNNING"]``), read from the
    controller's details as they come (plain JSON-ready dicts): `serve.status` rebuilds them
    as pydantic models, which cloudpickles every deployment's request router class, ~30 ms of
    CPU per call on the 2-core box, holding the GIL while the router's requests wait (7-13%
    of a loaded router replica's CPU, polled every second); this takes ~1.5 ms. Falls back to
    `serve.status` if Serve's client moved.
    """
    try:
        from ray.serve.context import _get_global_client
    except ImportError:                                             # pragma: no cover
        status: Any = serve.status()
        return {(app, dep): int((d.replica_states or {}).get("RUNNING", 0))
                for app, a in status.applications.items() for dep, d in a.deployments.items()}
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:                      # Serve not started: nothing runs
        return {}
    apps = client.get_serve_details().get("applications") or {}
    return {(app, dep): sum(1 for r in d.get("replicas") or () if r.get("state") == "RUNNING")
            for app, a in apps.items() for dep, d in (a.get("deployments") or {}).items()}


# (Defined before the ingress class: `serve.ingress` snapshots the module's globals.)
async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, within `limit` bytes and `timeout_s` seconds.

    413 past `limit` (on Content-Length, then as it comes); 408 when it is not complete
    `timeout_s` seconds after the router starts reading.

    Raises:
        ApiError: 413 or 408 (the limit named, and how to fix it).
        ClientDisconnect: the client left before its body was complete.

    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(f"Request body of {declared} bytes exceeds the limit of {limit} bytes",
                       413)
    raw = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for part in request.stream():
                raw += part
                if len(raw) > limit:
                    raise ApiError(f"Request body exceeds the limit of {limit} bytes", 413)
    except TimeoutError:
        raise ApiError(f"Request body not complete within {timeout_s:g} s ({len(raw)} bytes "
                       "arrived); send the whole body at once", 408) from None
    return bytes(raw)


def _response(reply: Reply | StreamReply) -> Response:
    """A dispatcher's `Reply` or `StreamReply` as an HTTP response."""
    if isinstance(reply, Reply):
        return JSONResponse(reply.body, reply.status, reply.headers)
    return StreamingResponse(reply.events, media_type="text/event-stream",
                             headers=reply.headers)


api = FastAPI(title="BOute router", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  graceful_shutdown_timeout_s=ROUTER_SHUTDOWN_TIMEOUT_S)
@serve.ingress(api)
class RouterIngress:
    """OpenAI-compatible entry; see the module docstring.

    ``groups``: deployment name -> handle (the one-application layout; the stack layout
    passes none and names each group's application in the config's ``apps``);
    ``user_config``: an `app.router_config.RouterConfig` as JSON.
    """

    def __init__(self, groups: dict[str, DeploymentHandle[Any]],
                 log_dir: str | None = None, log_rotate_s: float = 60.0,
                 log_limits: LogLimits | None = None) -> None:
        # Handles bound by `serve run`'s process carry that process's transport defaults;
        # taken again here, they use the cluster's (gRPC in Serve's high-throughput mode).
        self.handles = {name: serve.get_deployment_handle(h.deployment_name, h.app_name)
                        for name, h in groups.items()}
        self.obs = Observer(log_dir, log_rotate_s, log_limits)
        self.dispatcher = Dispatcher(ServeEngines(self.handles), self.obs)
        self.keys: ApiKeys | None = None
        self.limits = self.dispatcher.settings.limits
        self.body_timeout_s = self.dispatcher.settings.body_timeout_s
        self._watcher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None

    # -- configuration ---------------------------------------------------------------------
    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a config live (Serve calls this on every ``user_config`` change).

        Raises:
            RouterError: the config breaks a rule (named with its value and fix), names a
                group without a deployment, or its scorer cannot be built; the router keeps
                the config it had.

        """
        cfg = RouterConfig.parse(config)
        keys = None if cfg.api_keys is None else ApiKeys(list(cfg.api_keys))
        for group, app_name in cfg.apps.items():   # the stack layout
            if group not in self.handles:
                # Not checked for existence: the group applications deploy beside the router
                # and a vLLM one can take minutes to build (importing vLLM on a busy node);
                # the handle resolves once it exists (the deploy waits for every app).
                self.handles[group] = serve.get_deployment_handle(group, app_name,
                                                                  _check_exists=False)
        self.dispatcher.reconfigure(cfg, self.handles)
        if keys is not None and self.keys is not None:
            keys.carry_buckets(self.keys)
        self.keys, self.limits = keys, cfg.settings.limits
        self.body_timeout_s = cfg.settings.body_timeout_s
        self.obs.key_label = cfg.settings.metrics_key_label

    # -- liveness ------------------------------------------------------------------------
    def _start(self) -> None:
        self.obs.start()
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.done():
            self._watcher = loop.create_task(self._watch())
        if self._prober is None or self._prober.done():
            self._prober = loop.create_task(self.dispatcher.watch())

    async def _watch(self) -> None:
        """Poll Serve's replica states; the dispatcher aborts calls on a group that lost some.

        Also sets the prediction-error gauges every `app.drift.EXPORT_S` seconds.
        """
        exported = -math.inf
        while True:
            try:
                self.dispatcher.export_routing()
                if time.monotonic() - exported >= EXPORT_S:
                    exported = time.monotonic()
                    self.dispatcher.export_prediction()
                self._liveness(await asyncio.to_thread(_running_replicas))
            except asyncio.CancelledError:
                raise
            except Exception:       # the controller is restarting: keep the last view
                pass
            await asyncio.sleep(LIVENESS_POLL_S)

    def _liveness(self, running: dict[tuple[str, str], int]) -> None:
        """Hand Serve's count of running replicas of every group to the dispatcher.

        `running`: (application, deployment) -> RUNNING replicas (`_running_replicas`).
        """
        for group, handle in self.handles.items():
            self.dispatcher.set_replicas(
                group, running.get((handle.app_name, handle.deployment_name), 0))

    # -- the request path ------------------------------------------------------------------
    async def _forward(self, kind: str, request: Request) -> Response:
        self._start()
        call = Call(kind, time.time(), time.perf_counter())
        try:
            body = await self._admit(call, request)
            return _response(await self.dispatcher.dispatch(call, body))
        except ApiError as exc:
            return _response(self.dispatcher.refuse(call, exc))
        except ClientDisconnect:            # gone while sending its body: nobody reads this
            self.dispatcher.done(call, STATUS_ABANDONED, "abandoned")
            return Response(status_code=STATUS_ABANDONED)
        except asyncio.CancelledError:
            self.dispatcher.done(call, STATUS_ABANDONED, "abandoned")
            raise
        except Exception as exc:            # a bug: still an OpenAI body, logged
            _LOG.exception("router failed a %s request (answered 500)", kind)
            return _response(self.dispatcher.failed(call, exc))

    async def _admit(self, call: Call, request: Request) -> dict[str, Any]:
        """The request's body once its key, rate and limits pass (steps 1 and 2).

        Raises:
            ApiError: 401, 429, 413, 408 or 400 (the reason named).
            ClientDisconnect: the client left while sending its body.

        """
        entry: KeyEntry | None = None
        if self.keys is not None:
            entry = self.keys.authenticate(request.headers.get("authorization"))
            call.key_id = entry.id
            self.keys.admit(entry)          # one token before the body is read
        raw = await _read_body(request, self.limits.max_body_bytes, self.body_timeout_s)
        body = parse_body(raw, self.limits)
        check_body(call.kind, body, self.limits)
        if self.keys is not None and entry is not None:     # the rest: prompts x n in all
            self.keys.admit(entry, request_units(call.kind, body), taken=1)
        call.workload_asked = request.headers.get(WORKLOAD_HEADER)
        session = request.headers.get(SESSION_HEADER)
        if session and not body.get("user"):    # the groups' affinity router reads `user`
            body["user"] = session
        call.stream = bool(body.get("stream"))
        return body

    def __del__(self) -> None:
        """Serve calls this on a graceful shutdown: flush the request log."""
        self.obs.close()

    # -- routes --------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        """OpenAI chat completions (streaming and not)."""
        return await self._forward("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        """OpenAI completions (streaming and not)."""
        return await self._forward("completions", request)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Any:
        """``auto`` (routed), ``auto:NAME`` per ladder workload, and the served models."""
        if self.keys is not None:
            try:
                self.keys.authenticate(request.headers.get("authorization"))
            except ApiError as exc:
                return JSONResponse(exc.body(), exc.status, {"www-authenticate": "Bearer"})
        aliases = [f"auto:{w}" for w in self.dispatcher.cascades]
        return {"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "boute"}
            for m in (ROUTED_MODELS[0], *aliases, *self.dispatcher.models)]}

    @api.get("/health")
    async def health(self, request: Request) -> Any:
        """Model and group states, the routing state; 503 only when nothing can be served.

        (`app.health`.)

        Without a valid key (when keys are on) only ``status`` and ``config_id`` are shown.
        """
        self._start()
        code, report = self.dispatcher.health(time.monotonic())
        if self.keys is not None:
            try:
                self.keys.authenticate(request.headers.get("authorization"))
            except ApiError:
                return JSONResponse({"status": report["status"],
                                     "config_id": report["config_id"]}, code)
        keys = {} if self.keys is None else {"api_keys": self.keys.report()}
        return JSONResponse({**report, "auth": self.keys is not None, **keys}, code)

    @api.get("/health/ready")
    async def ready(self, request: Request) -> Any:
        """200 when every group of the plan serves, else 503 naming what is missing.

        For operators: with keys on, a request without a valid key gets 401 (as
        ``/v1/models``), since the report names every group.
        """
        self._start()
        if self.keys is not None:
            try:
                self.keys.authenticate(request.headers.get("authorization"))
            except ApiError as exc:
                return JSONResponse(exc.body(), exc.status, {"www-authenticate": "Bearer"})
        code, report = self.dispatcher.readiness(time.monotonic())
        return JSONResponse(report, code)
