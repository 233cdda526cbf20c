"""The router's metrics (Ray Serve custom metrics, on the Ray dashboard) and request log.

Metric names as Prometheus shows them (Ray prefixes ``ray_``), tags in braces:

* ``boute_requests_total{model, group, status}``: requests answered, by HTTP status;
* ``boute_tokens_total{model, group, kind}``: prompt / output tokens (``kind``);
* ``boute_errors_total{group, kind}``: ``engine`` failures (5xx) and ``client`` errors (4xx);
* ``boute_ttft_seconds{model, group}``, ``boute_latency_seconds{model, group}``: histograms
  of time to first token and end-to-end latency, measured at the router;
* ``boute_strong_share_routed``, ``boute_strong_share_target``, ``boute_threshold``: the live
  routing state (gauges);
* ``boute_refused_total{model, outcome, key}``: requests refused before an engine saw them
  (``unauthorized``, ``rate_limited``, ``too_large``, ``body_timeout``, ``shed``,
  ``unavailable``, ``client_error``) and requests ``abandoned`` by their client (499);
* ``boute_retries_total{group}``: engine calls retried elsewhere after ``group`` failed;
* ``boute_degraded_total{model}``: requests for ``model`` served by the other one (``model``
  had no healthy group);
* ``boute_group_up{group}``: 1 when the group takes traffic, 0 when ejected or down;
* ``boute_threshold_fast_total{workload, clamped}``: recalibrations that wanted to move a
  threshold faster than its bound (`app.isolation`), ``clamped`` 1 when the move was cut
  (two or more API keys in the window), 0 when it was only reported (one tenant); alert on
  its rate;
* ``boute_threshold_move{workload}``: the last such move, as the share of the window's
  scores the threshold crossed (signed: + sends more to the strong model);
* ``boute_prediction_error{group, quantity}``: the group's live prediction error over the
  router's sliding window, ``predicted / observed - 1`` of its P95 (``quantity="p95"``) or
  median TPOT (``"tpot"``) at its observed per-replica rate (`app.drift`; negative: slower
  than predicted; NaN: no prediction or no requests); every `app.drift.EXPORT_S` seconds.

``key`` is ``*`` (every key, aggregated) unless the operator opted in to per-key series
(``RouterSettings.metrics_key_label``, then the API key's id; never the key): Ray's metrics
endpoint listens on every node's port, and key ids name tenants.

`Observer.observe` is called once per request when its response is complete; it updates the
metrics and appends the request to the Parquet log (`app.request_log`) when one is kept
(refusals before routing: counted, and sampled, by the log's `LogLimits`).

The per-request series (``boute_requests``, ``boute_tokens``, ``boute_ttft_seconds``,
``boute_latency_seconds``) are buffered, as Serve buffers its own request metrics
(``RAY_SERVE_METRICS_EXPORT_INTERVAL_MS``, 100 ms): `observe` adds to a count per tag set
and queues the two latencies; `Observer.flush_metrics` hands them to Ray every
`METRICS_EXPORT_S` (the background task `Observer.start` starts), when `MAX_PENDING`
latencies wait, and on `Observer.close`. The same increments and observations, in the same
series, up to `METRICS_EXPORT_S` later (Ray exports to Prometheus every few seconds anyway);
the response no longer waits on five Ray metric records (~15 us each on the 2-core box), and
the counters take one record per tag set and interval instead of one per request. The rare
series (refusals, errors, retries, gauges) are recorded at once. An export that fails is
logged and loses that interval's records; the next one runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from typing import Any

from .request_log import LogLimits, RequestLog

__all__ = ["AGGREGATE_KEY", "LATENCY_BOUNDARIES_S", "MAX_PENDING", "METRICS", "METRICS_EXPORT_S",
           "Observer"]

_LOG = logging.getLogger("ray.serve")     # the replica's log file

AGGREGATE_KEY = "*"
"""The ``key`` tag of every refused request unless per-key series are opted in."""

# Every metric the router exports (as Prometheus shows them, without Ray's ``ray_`` prefix
# and the ``_total`` / ``_bucket`` suffixes); docs/grafana-boute.json plots them.
METRICS = ("boute_requests", "boute_tokens", "boute_errors", "boute_ttft_seconds",
           "boute_latency_seconds", "boute_strong_share_routed", "boute_strong_share_target",
           "boute_threshold", "boute_refused", "boute_retries", "boute_degraded",
           "boute_group_up", "boute_threshold_fast", "boute_threshold_move",
           "boute_prediction_error")

METRICS_EXPORT_S = 0.1
"""Seconds between two exports of the buffered series (Serve's own interval for its metrics)."""
MAX_PENDING = 4096
"""Buffered latencies that make `Observer.observe` export at once (bounds the buffer)."""

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0,
                        60.0, 120.0]


class Observer:
    """Metrics + request log of one router replica."""

    def __init__(self, log_dir: str | None = None, log_rotate_s: float = 60.0,
                 log_limits: LogLimits | None = None) -> None:
        from ray.serve import metrics as serve_metrics

        # (Ray annotates tag_keys as a 1-tuple; any number of tags is accepted.)
        metrics: Any = serve_metrics
        tags = ("model", "group")
        self.requests = metrics.Counter("boute_requests", "Requests answered by the router",
                                        tag_keys=(*tags, "status"))
        self.tokens = metrics.Counter("boute_tokens", "Prompt and output tokens",
                                      tag_keys=(*tags, "kind"))
        self.errors = metrics.Counter("boute_errors", "Engine (5xx) and client (4xx) errors",
                                      tag_keys=("group", "kind"))
        self.ttft = metrics.Histogram("boute_ttft_seconds", "Time to first token at the "
                                      "router", boundaries=LATENCY_BOUNDARIES_S, tag_keys=tags)
        self.latency = metrics.Histogram("boute_latency_seconds", "End-to-end latency at the "
                                         "router", boundaries=LATENCY_BOUNDARIES_S,
                                         tag_keys=tags)
        self.share_routed = metrics.Gauge("boute_strong_share_routed",
                                          "Share of routed requests sent to the strong model")
        self.share_target = metrics.Gauge("boute_strong_share_target",
                                          "The plan's strong share")
        self.threshold = metrics.Gauge("boute_threshold", "The router's live threshold")
        self.refused = metrics.Counter("boute_refused", "Requests refused before an engine "
                                       "saw them, or abandoned by their client",
                                       tag_keys=("model", "outcome", "key"))
        self.retries = metrics.Counter("boute_retries", "Engine calls retried elsewhere after "
                                       "this group failed", tag_keys=("group",))
        self.degraded_total = metrics.Counter("boute_degraded", "Requests for this model "
                                              "served by the other one", tag_keys=("model",))
        self.group_up = metrics.Gauge("boute_group_up", "1: the group takes traffic; 0: "
                                      "ejected or down", tag_keys=("group",))
        self.threshold_fast = metrics.Counter(
            "boute_threshold_fast", "Recalibrations that wanted to move a threshold faster "
            "than its bound (clamped=1: cut)", tag_keys=("workload", "clamped"))
        self.threshold_move = metrics.Gauge(
            "boute_threshold_move", "The last fast threshold move, share of the window "
            "crossed", tag_keys=("workload",))
        self.prediction = metrics.Gauge(
            "boute_prediction_error", "The group's live prediction error, predicted / "
            "observed - 1 (quantity: p95 or tpot)", tag_keys=("group", "quantity"))
        self.log = (RequestLog(log_dir, rotate_s=log_rotate_s, limits=log_limits)
                    if log_dir else None)
        self.key_label = False          # RouterSettings.metrics_key_label (set on reconfigure)
        self._task: Any = None
        self._export_task: Any = None
        # The buffered series (module docstring): pending increments per tag values, the
        # latencies (model, group, ttft_s, latency_s) in arrival order, and the tag dicts.
        self._requests: Counter[tuple[str, str, int]] = Counter()
        self._tokens: Counter[tuple[str, str, str]] = Counter()
        self._latencies: list[tuple[str, str, float, float]] = []
        self._tags: dict[tuple[str, ...], dict[str, str]] = {}

    def start(self) -> None:
        """Start the background tasks: the log's flush, the metrics' export (on the loop)."""
        import asyncio

        if self._task is None and self.log is not None:
            self._task = asyncio.get_running_loop().create_task(self.log.run())
        if self._export_task is None:
            self._export_task = asyncio.get_running_loop().create_task(self._export())

    async def _export(self) -> None:
        """Hand the buffered series to Ray every `METRICS_EXPORT_S`, forever."""
        import asyncio

        while True:
            await asyncio.sleep(METRICS_EXPORT_S)
            try:
                self.flush_metrics()
            except Exception:       # observability only: the next interval exports again
                _LOG.exception("router metrics export failed")

    def _tag_dict(self, names: tuple[str, ...], values: tuple[str, ...]) -> dict[str, str]:
        """The tags ``dict(zip(names, values))``, made once per tag set.

        (Serve's metric wrappers may add their context tags to it in place: always the same
        values within one replica.)
        """
        key = names + values
        tags = self._tags.get(key)
        if tags is None:
            tags = self._tags[key] = dict(zip(names, values, strict=True))
        return tags

    def flush_metrics(self) -> None:
        """Record the buffered increments and latencies with Ray (module docstring)."""
        requests, tokens, latencies = self._requests, self._tokens, self._latencies
        self._requests, self._tokens, self._latencies = Counter(), Counter(), []
        for (model, group, status), n in requests.items():
            self.requests.inc(n, self._tag_dict(("model", "group", "status"),
                                                (model, group, str(status))))
        for (model, group, kind), n in tokens.items():
            self.tokens.inc(n, self._tag_dict(("model", "group", "kind"), (model, group, kind)))
        for model, group, ttft_s, latency_s in latencies:
            tags = self._tag_dict(("model", "group"), (model, group))
            self.ttft.observe(ttft_s, tags)
            self.latency.observe(latency_s, tags)

    def observe(self, *, arrival_s: float, model: str, group: str, score: float | None,
                status: int, ttft_s: float, latency_s: float, prompt_tokens: int,
                output_tokens: int, stream: bool, key_id: str | None = None,
                outcome: str = "ok", workload: str | None = None,
                length_class: str | None = None) -> None:
        """Record one request, answered, refused or abandoned (``outcome``).

        The per-request series are buffered until the next `flush_metrics` (module docstring).
        """
        self._requests[(model, group, status)] += 1
        if not group or outcome == "abandoned":
            key = (key_id or "") if self.key_label else AGGREGATE_KEY
            self.refused.inc(1, {"model": model, "outcome": outcome, "key": key})
        if status >= 400 and group:
            self.errors.inc(1, {"group": group, "kind": "engine" if status >= 500
                                else "client"})
        else:
            if prompt_tokens > 0:          # (Ray's counters refuse an increment of 0)
                self._tokens[(model, group, "prompt")] += prompt_tokens
            if output_tokens > 0:
                self._tokens[(model, group, "output")] += output_tokens
            self._latencies.append((model, group, ttft_s, latency_s))
            if len(self._latencies) >= MAX_PENDING:
                self.flush_metrics()
        if self.log is not None:
            self.log.record(arrival_s, prompt_tokens, output_tokens,
                            math.nan if score is None else score, model, group, ttft_s,
                            latency_s, status, stream, key_id=key_id, outcome=outcome,
                            workload=workload, length_class=length_class)

    def retry(self, group: str) -> None:
        """An engine call to `group` failed and is retried elsewhere."""
        self.retries.inc(1, {"group": group})

    def degraded(self, model: str) -> None:
        """A request for `model` goes to the other model."""
        self.degraded_total.inc(1, {"model": model})

    def group_state(self, group: str, state: str) -> None:
        """The group's state as the router sees it."""
        self.group_up.set(1.0 if state == "healthy" else 0.0, {"group": group})

    def routing_state(self, routed_share: float | None, target: float, threshold: float) -> None:
        """Update the routing gauges."""
        if routed_share is not None:
            self.share_routed.set(routed_share)
        self.share_target.set(target)
        if math.isfinite(threshold):
            self.threshold.set(threshold)

    def threshold_guard(self, workload: str | None, wanted: float, moved: float) -> None:
        """A fast threshold move (clamped when `moved` is less than `wanted`)."""
        tags = {"workload": workload or ""}
        self.threshold_fast.inc(1, {**tags, "clamped": "1" if abs(moved) < abs(wanted)
                                    else "0"})
        self.threshold_move.set(moved, tags)

    def prediction_error(self, group: str, quantity: str, value: float) -> None:
        """Set ``boute_prediction_error{group, quantity}`` (NaN: no value now)."""
        self.prediction.set(value, {"group": group, "quantity": quantity})

    def close(self) -> None:
        """Export the buffered metrics, flush and close the log (a clean shutdown loses none)."""
        for task in (self._task, self._export_task):
            if task is not None:
                task.cancel()
        # Ray's metrics may be gone already (interpreter exit): the log still closes.
        with contextlib.suppress(Exception):
            self.flush_metrics()
        if self.log is not None:
            self.log.close()
