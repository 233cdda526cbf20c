"""Slow and idle clients against the default limits, measured on a local deployment.

A throw-away local Ray cluster (token auth on; Serve's high-throughput mode through the
HAProxy wrapper with its default limits: headers within 60 s, 75 s of client silence, 1,024
connections per source; the router's 60 s body timeout) serves one API key over two emulated
groups. Against it, at once: ``--slow-headers`` clients sending one header line every 5 s,
``--idle`` connections sending nothing, ``--slow-bodies`` small bodies stalled after 10 of
100 bytes (HAProxy buffers and times them), ``--large-bodies`` stalled after 20 of 40 KB
(past HAProxy's 16 KiB buffer: the router times them), ``--leavers`` that close mid-body, and
legit requests (1 every 0.5 s) meanwhile. Prints a table: per kind the seconds from connect
until the server answered or closed (min, max) and how many were still open at
``--give-up-s``; the legit requests' statuses; the router's outcome counts (``/health``).
Writes JSON (benchmarks/data/slow_clients.json unless ``--no-copy``), exits 1 when a target
(`TARGETS`) is missed: every slow client cut by its limit plus 5 s, none left open, every
legit request answered 200, and the router logging the stalled large bodies as 408
(``body_timeout``) and the leavers as 499 (``abandoned``), never as a 500.

    .venv/bin/python benchmarks/slow_clients.py [--slow-headers 30 --idle 10 ...] [--no-copy]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _results import write_results
from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEY = "bk-slow-clients-benchmark"


def _open(port: int, give_up_s: float) -> tuple[socket.socket, float]:
    s = socket.create_connection(("127.0.0.1", port), timeout=give_up_s)
    return s, time.perf_counter()


def _answer(s: socket.socket, t0: float) -> float | None:
    """Seconds until the server answered or closed; None: still open at the socket timeout."""
    try:
        s.recv(65536)
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.perf_counter() - t0


def _head(length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _slow_headers(port: int, give_up_s: float) -> float | None:
    s, t0 = _open(port, give_up_s)
    with s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\n")
        s.settimeout(5.0)
        while time.perf_counter() - t0 < give_up_s:
            try:
                s.recv(65536)
                return time.perf_counter() - t0
            except TimeoutError:
                pass
            except OSError:
                return time.perf_counter() - t0
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                return time.perf_counter() - t0
    return None


def _idle(port: int, give_up_s: float) -> float | None:
    s, t0 = _open(port, give_up_s)
    with s:
        return _answer(s, t0)


def _body(port: int, give_up_s: float, length: int, sent: int) -> float | None:
    s, t0 = _open(port, give_up_s)
    with s:
        s.sendall(_head(length) + b" " * sent)
        return _answer(s, t0)


def _leaver(port: int, give_up_s: float) -> float | None:
    s, t0 = _open(port, give_up_s)
    s.sendall(_head(40_000) + b" " * 20_000)
    time.sleep(0.5)
    s.close()
    return time.perf_counter() - t0


def _legit(port: int) -> int:
    body = json.dumps({"model": "auto", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


LIMIT_S = 75.0      # the longest default limit: HAProxy's client silence (headers: 60 s)
TARGETS = {
    "cut_s_max": Target("<=", LIMIT_S + 5.0, "s", "slowest cut of a slow or idle client"),
    "still_open": Target("<=", 0, "", "slow clients still open at --give-up-s"),
    "legit_not_200": Target("<=", 0, "", "legit requests not answered 200 meanwhile"),
    "internal_errors": Target("<=", 0, "", "requests the router logged as 500"),
}


def main() -> int:
    """Run the measurement; print the table, write the JSON; 1 when a target is missed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow-headers", type=int, default=30)
    p.add_argument("--idle", type=int, default=10)
    p.add_argument("--slow-bodies", type=int, default=10)
    p.add_argument("--large-bodies", type=int, default=5)
    p.add_argument("--leavers", type=int, default=5)
    p.add_argument("--give-up-s", type=float, default=90.0)
    p.add_argument("--json", default="build/slow_clients.json")
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/slow_clients.json")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    t0 = time.perf_counter()

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        os.environ.pop(var, None)                   # the product's default: auth on
    import ray
    from ray import serve

    from app.emulated_server import EmulatedLLMServer
    from app.guard import hash_key
    from app.ingress import RouterIngress
    from placement import free_port, local_cluster

    cluster = local_cluster({}, {}, temp_dir=REPO / "build" / "ray-tmp-slow",
                            high_throughput=True)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b", "strong_share": 0.5,
                  "threshold": None, "router": "random", "seed": 0,
                  "shares": {"llama-3.1-8b": {"weak": 1.0}, "llama-3.1-70b": {"strong": 1.0}},
                  "api_keys": [{"id": "bench", "sha256": hash_key(KEY)}]}
        handles = {"weak": EmulatedLLMServer.options(name="weak").bind(
            "llama-3.1-8b", "RTX-4090", 1, 1, time_scale=0.0),
            "strong": EmulatedLLMServer.options(name="strong").bind(
            "llama-3.1-70b", "H100", 4, 1, time_scale=0.0)}
        serve.run(RouterIngress.options(user_config=config).bind(handles), name="boute",
                  route_prefix="/")
        g = args.give_up_s
        kinds: dict[str, tuple[int, Any]] = {
            "slow_headers": (args.slow_headers, lambda: _slow_headers(port, g)),
            "idle": (args.idle, lambda: _idle(port, g)),
            "slow_small_bodies": (args.slow_bodies, lambda: _body(port, g, 100, 10)),
            "slow_large_bodies": (args.large_bodies, lambda: _body(port, g, 40_000, 20_000)),
            "leavers": (args.leavers, lambda: _leaver(port, g))}
        n = sum(k for k, _ in kinds.values())
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            futures = {kind: [pool.submit(fn) for _ in range(k)]
                       for kind, (k, fn) in kinds.items()}
            legit: dict[int, int] = {}
            while not all(f.done() for fs in futures.values() for f in fs):
                status = _legit(port)
                legit[status] = legit.get(status, 0) + 1
                time.sleep(0.5)
            cut = {kind: [f.result() for f in fs] for kind, fs in futures.items()}
        out: dict[str, Any] = {"wall_s": round(time.perf_counter() - t0, 1), "kinds": {}}
        for kind, secs in cut.items():
            done = [s for s in secs if s is not None]
            out["kinds"][kind] = {"clients": len(secs), "still_open": len(secs) - len(done),
                                  "cut_s_min": round(min(done), 2) if done else None,
                                  "cut_s_max": round(max(done), 2) if done else None}
        out["legit_statuses"] = legit
        req = urllib.request.Request(f"http://127.0.0.1:{port}/health",
                                     headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out["router_outcomes"] = json.loads(r.read())["outcomes"]
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print(f"{'kind':<20}{'clients':>8}{'open':>6}{'cut s min':>11}{'cut s max':>11}")
    for kind, row in out["kinds"].items():
        print(f"{kind:<20}{row['clients']:>8}{row['still_open']:>6}"
              f"{row['cut_s_min'] if row['cut_s_min'] is not None else '-':>11}"
              f"{row['cut_s_max'] if row['cut_s_max'] is not None else '-':>11}")
    print(f"legit requests by status: {out['legit_statuses']}; router outcomes: "
          f"{out['router_outcomes']}")
    rows = out["kinds"].values()
    outcomes = out["router_outcomes"]
    measured = {"cut_s_max": max((r["cut_s_max"] for r in rows if r["cut_s_max"] is not None),
                                 default=None),
                "still_open": sum(r["still_open"] for r in rows),
                "legit_not_200": sum(n for code, n in out["legit_statuses"].items()
                                     if int(code) != 200),
                "internal_errors": outcomes.get("internal_error", 0)}
    checks = check(resolve(TARGETS, args.target), measured,
                   {"stalled large bodies logged 408 body_timeout":
                    outcomes.get("body_timeout", 0) == args.large_bodies,
                    "leavers logged 499 abandoned": outcomes.get("abandoned", 0) == args.leavers})
    print_checks(checks)
    payload = {"command": "python benchmarks/slow_clients.py " + " ".join(sys.argv[1:]),
               "measured": out, "seconds": time.perf_counter() - t0, "targets": checks}
    write_results(payload, args.json, None if args.no_copy else "slow_clients.json")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
