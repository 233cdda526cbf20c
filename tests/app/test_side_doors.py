"""Side doors and slow clients, live, on one local deployment with Ray token auth and API keys.

The deployment is closed as cluster.yaml runs one (Serve's high-throughput mode through the
hardening wrapper, `placement._haproxy`), with the slow-client timeouts shortened to
`SLOW_S` and the per-source cap to `CAP` so the test is quick. Checked:

1. **Slow and idle clients** are cut within their timeout (+ `MARGIN_S`): slow headers, an
   idle connection and a slow small body by HAProxy (``timeout http-request``), a slow large
   body by the router (408); a client that leaves mid-body is logged 499 ``abandoned``, not
   500; legit requests meanwhile are answered; the 13th connection of one source is refused.
2. **Every listening TCP socket** of the deployment's processes (this test's descendants:
   GCS, raylet, dashboard, agents, workers, replicas, HAProxy) is accounted for: the data
   plane answers 401 without an API key; the dashboard's APIs 401 without the Ray token;
   every Ray gRPC server UNAUTHENTICATED without it; HAProxy's stats and metrics listen on
   loopback only, its admin socket is 0600 in a 0700 folder; what answers without any token
   is Ray's read-only Prometheus metrics alone, and it names no API key id.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.app import free_port

REPO = Path(__file__).resolve().parents[2]
SLOW_S = 3          # the test's HAProxy header timeout and router body timeout, seconds
MARGIN_S = 2.5      # scheduling on a loaded 2-core box, HAProxy's timer granularity
CAP = 12            # connections one source may hold at once
KEY = "bk-side-doors-test-key"
KEY_ID = "team-side-doors"
RAY_METRIC_PORTS = (44217, 44227)   # Ray's autoscaler and dashboard Prometheus endpoints


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    ip: str
    port: int

    @property
    def host(self) -> str:
        """Where to connect (a wildcard address: loopback)."""
        return "127.0.0.1" if self.ip in ("0.0.0.0", "::") else self.ip


def _listeners(since_unix_s: float) -> list[Listener]:
    """Every listening TCP socket of this process's descendants started at `since_unix_s` or
    later (the local cluster: a worker of an earlier test's cluster that has not exited yet,
    e.g. the shared Serve instance's proxy on Serve's default port 8500 on a loaded machine,
    is not this cluster's)."""
    import psutil

    out = set()
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if proc.create_time() < since_unix_s:
                continue
            name = " ".join(proc.cmdline())[:120]
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        out |= {Listener(proc.pid, name, c.laddr.ip, c.laddr.port) for c in conns
                if c.status == psutil.CONN_LISTEN}
    return sorted(out, key=lambda x: (x.port, x.ip))


def _http(host: str, port: int, method: str = "GET", path: str = "/",
          headers: dict[str, str] | None = None, body: bytes | None = None
          ) -> tuple[int, bytes] | None:
    """(status, body) of a plain HTTP/1 call without any token; None: not an HTTP/1 server."""
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError:
        return None
    with s:
        head = {"Host": "t", "Connection": "close", **(headers or {})}
        if body is not None:
            head["Content-Length"] = str(len(body))
        s.sendall(f"{method} {path} HTTP/1.1\r\n".encode() +
                  "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" +
                  (body or b""))
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if not b"HTTP/1.".startswith(data[:7]):
                    return None                     # an HTTP/2 (gRPC) server's frames
        except OSError:
            pass
    if not data.startswith(b"HTTP/1."):
        return None
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


def _grpc_methods() -> list[str]:
    """Read-only methods (Get*, List*, ...) of every gRPC service Ray ships Python stubs for,
    and the object manager's and agents' (C++ only; an empty Pull names no object).

    A server answers the ones it serves; the others are UNIMPLEMENTED (Python servers check
    the token in the methods they serve, so an unknown method says nothing).
    """
    import re

    import ray

    root = Path(ray.__file__).parent
    text = "".join(p.read_text() for d in ("core/generated", "serve/generated")
                   for p in (root / d).glob("*_pb2_grpc.py"))
    found = re.findall(r"'(/[\w.]+/(?:Get|List|Check|Healthz|NumPending)\w*)'", text)
    return [*dict.fromkeys(found), "/ray.rpc.ObjectManagerService/Pull",
            "/ray.rpc.ReporterService/HealthCheck", "/ray.serve.ASGIService/HandleRequest"]


def _grpc_code(host: str, port: int, methods: list[str]) -> str:
    """How a gRPC server answers Ray RPCs sent without a token: the first answer that is
    not UNIMPLEMENTED (UNAUTHENTICATED when it checks the token), else UNIMPLEMENTED."""
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in methods:
            call = channel.unary_unary(method, request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            try:
                call(b"", timeout=10)
                return f"OK ({method})"
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    return f"{exc.code().name} ({method})"
    return "UNIMPLEMENTED"


def _chat(port: int, key: str | None) -> tuple[int, str]:
    body = json.dumps({"model": "auto", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    reply = _http("127.0.0.1", port, "POST", "/v1/chat/completions", headers, body)
    assert reply is not None
    return reply[0], reply[1][:300].decode(errors="replace")


# -- slow clients: each returns (seconds from connect to the server's answer or close, answer)
def _open(port: int) -> tuple[socket.socket, float]:
    s = socket.create_connection(("127.0.0.1", port), timeout=SLOW_S + 15)
    return s, time.perf_counter()


def _wait_answer(s: socket.socket, t0: float) -> tuple[float, bytes]:
    """Seconds until the server answered (or closed), and its whole answer."""
    try:
        data = s.recv(65536)
    except OSError:
        data = b""
    seconds = time.perf_counter() - t0
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    return seconds, data


def _slow_headers(port: int) -> tuple[float, bytes]:
    s, t0 = _open(port)
    with s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n")
        s.settimeout(0.5)
        while time.perf_counter() - t0 < SLOW_S + 15:
            try:
                data = s.recv(65536)
                return time.perf_counter() - t0, data       # an answer (408) or a close
            except TimeoutError:
                pass
            try:
                s.sendall(b"X-Slow: 1\r\n")                   # one header line each 0.5 s
            except OSError:
                return time.perf_counter() - t0, b""
    return time.perf_counter() - t0, b"still open"


def _idle(port: int) -> tuple[float, bytes]:
    s, t0 = _open(port)
    with s:
        return _wait_answer(s, t0)


def _post_head(length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _slow_body(port: int, length: int, sent: int) -> tuple[float, bytes]:
    s, t0 = _open(port)
    with s:
        s.sendall(_post_head(length) + b" " * sent)
        return _wait_answer(s, t0)


def _leaver(port: int) -> tuple[float, bytes]:
    s, t0 = _open(port)
    s.sendall(_post_head(40_000) + b" " * 20_000)
    time.sleep(0.5)
    s.close()
    return time.perf_counter() - t0, b""


def _router_app() -> Any:
    """The router with API keys over two emulated groups; the router's body timeout SLOW_S."""
    from app.emulated_server import EmulatedLLMServer
    from app.guard import hash_key
    from app.ingress import RouterIngress

    shares = {"llama-3.1-8b": {"weak": 1.0}, "llama-3.1-70b": {"strong": 1.0}}
    config = {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b", "strong_share": 0.5,
              "threshold": None, "router": "random", "seed": 0, "shares": shares,
              "api_keys": [{"id": KEY_ID, "sha256": hash_key(KEY)}],
              "settings": {"body_timeout_s": SLOW_S}}
    handles = {"weak": EmulatedLLMServer.options(name="weak").bind(
        "llama-3.1-8b", "RTX-4090", 1, 1, time_scale=0.0),
        "strong": EmulatedLLMServer.options(name="strong").bind(
        "llama-3.1-70b", "H100", 4, 1, time_scale=0.0)}
    return RouterIngress.options(user_config=config).bind(handles)


@pytest.mark.heavy
def test_slow_clients_are_cut_and_no_side_door_answers_without_a_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray import serve

    from placement import local_cluster

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)          # the product's default: auth on
    stats_port, hap_metrics_port, dash_port = free_port(), free_port(), free_port()
    started_unix_s = time.time() - 1.0          # psutil's create_time: 10 ms ticks
    cluster = local_cluster({}, {}, temp_dir=REPO / "build" / "ray-tmp-doors",
                            dashboard_port=dash_port, high_throughput=True,
                            serve_env={"BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S": str(SLOW_S),
                                       "BOUTE_HAPROXY_MAX_CONN_PER_SOURCE": str(CAP),
                                       "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
                                       "RAY_SERVE_HAPROXY_METRICS_PORT": str(hap_metrics_port)})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(_router_app(), name="boute", route_prefix="/")
        assert _chat(port, KEY)[0] == 200, _chat(port, KEY)

        # -- 1. slow and idle clients, with legit traffic beside them ----------------------
        with ThreadPoolExecutor(8) as pool:
            futures = {
                "headers": [pool.submit(_slow_headers, port) for _ in range(3)],
                "idle": [pool.submit(_idle, port) for _ in range(2)],
                "small body": [pool.submit(_slow_body, port, 100, 10)],
                "large body": [pool.submit(_slow_body, port, 40_000, 20_000)],
                "leaver": [pool.submit(_leaver, port)]}
            legit = [_chat(port, KEY)[0] for _ in range(10)]
            cut = {kind: [f.result() for f in fs] for kind, fs in futures.items()}
        assert legit == [200] * 10
        print({kind: [round(sec, 2) for sec, _ in v] for kind, v in cut.items()})
        for kind in ("headers", "idle", "small body", "large body"):
            for seconds, answer in cut[kind]:
                assert SLOW_S - 0.5 <= seconds <= SLOW_S + MARGIN_S, (kind, seconds, answer)
                # HAProxy's own 408 (or a plain close), or the router's for the large body
                assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), (kind, answer)
        (_, answer), = cut["large body"]
        assert f"not complete within {SLOW_S} s".encode() in answer       # the router's 408
        health = _http("127.0.0.1", port, "GET", "/health",
                       {"Authorization": f"Bearer {KEY}"})
        assert health is not None and health[0] == 200
        outcomes = json.loads(health[1])["outcomes"]
        # 11 answered; the large body cut by the router; the leaver 499; nothing was a 500
        assert outcomes == {"ok": 11, "body_timeout": 1, "abandoned": 1}, outcomes

        # the per-source cap: CAP connections held, the next one refused at once
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(CAP)]
        time.sleep(0.3)
        t0 = time.perf_counter()
        try:                                           # reset during connect, or right after
            extra, t0 = _open(port)
            with extra:
                seconds, answer = _wait_answer(extra, t0)
        except ConnectionResetError:
            seconds, answer = time.perf_counter() - t0, b""
        assert answer == b"" and seconds < 1.0, (seconds, answer)
        held[0].settimeout(0.3)
        with pytest.raises(TimeoutError):              # the CAP held ones are still open
            held[0].recv(1)
        for s in held:
            s.close()

        # -- 2. every listener ------------------------------------------------------------
        nodes = ray.nodes()
        metric_ports = {n["MetricsExportPort"] for n in nodes} | set(RAY_METRIC_PORTS)
        report, methods = [], _grpc_methods()
        for li in _listeners(started_unix_s):
            where = f"{li.ip}:{li.port} ({li.name})"
            if "haproxy" in li.name:
                if li.port == port:
                    assert _chat(li.port, None)[0] == 401, where
                else:
                    assert li.port in (stats_port, hap_metrics_port), where
                    assert li.ip == "127.0.0.1", where
                report.append(f"{where}: HAProxy, checked")
                continue
            answer = _http(li.host, li.port)
            if answer is None:                                    # gRPC: Ray's RPC servers
                code = _grpc_code(li.host, li.port, methods)
                assert code.startswith("UNAUTHENTICATED"), (where, code)
                report.append(f"{where}: gRPC {code}")
            elif li.port == dash_port:
                base = f"http://{li.host}:{li.port}"
                for method, path in (("GET", "/api/jobs/"), ("POST", "/api/jobs/"),
                                     ("GET", "/api/serve/applications/"),
                                     ("PUT", "/api/serve/applications/")):
                    got = _http(li.host, li.port, method, path, body=b"{}")
                    assert got is not None and got[0] == 401, (base, method, path, got)
                report.append(f"{where}: dashboard APIs 401")
            elif "RouterIngress" in li.name or "ProxyActor" in li.name:
                assert _chat(li.port, None)[0] == 401, where         # the data plane
                report.append(f"{where}: data plane 401")
            elif answer[0] in (401, 403):
                report.append(f"{where}: {answer[0]}")
            else:       # answers without a token: Ray's read-only Prometheus metrics alone
                assert li.port in metric_ports, (where, answer[0])
                report.append(f"{where}: Ray metrics (read-only, node port)")
        print("\n".join(report))
        assert any("gRPC" in r for r in report) and any("dashboard" in r for r in report)

        # HAProxy's admin socket: this user only
        import psutil

        hap = max(li.pid for li in _listeners(started_unix_s) if "haproxy" in li.name)
        args = psutil.Process(hap).cmdline()
        config = Path(args[args.index("-f") + 1]).read_text()
        sock = Path(next(line.split()[2] for line in config.splitlines()
                         if line.strip().startswith("stats socket ")))
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700

        # the metrics name no key id (not opted in): the refusals are one aggregate series
        text, deadline = "", time.time() + 40
        while time.time() < deadline and not ('outcome="body_timeout"' in text and
                                               'outcome="unauthorized"' in text):
            time.sleep(2)
            text = ""
            for p in {n["MetricsExportPort"] for n in nodes}:
                reply = _http("127.0.0.1", p, "GET", "/metrics")
                text += reply[1].decode() if reply else ""
        refused = [line for line in text.splitlines()
                   if line.startswith("ray_boute_refused_total{")]
        assert any('outcome="body_timeout"' in line and 'key="*"' in line for line in refused)
        assert KEY_ID not in text
        assert sum('outcome="unauthorized"' in line for line in refused) == 1
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
