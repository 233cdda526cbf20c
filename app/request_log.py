"""The request log: one Parquet row per request the router answered; a killed router loses none.

This module is the facade; the code is in `app._log_writer` (`RequestLog`, `LogLimits`),
`app._log_recovery` (`recover_log`), `app._log_retention` (`apply_retention`) and
`app._log_reader` (`read_log`, `read_log_report`), over `app._log_files` (schemas, names).

Each `RequestLog` is one *writer* with a unique id ``{start_unix_ms}-{pid}``; its files in the
log folder are

* ``requests-{writer}.lock``: `fcntl.flock`-ed for the writer's whole life (the kernel drops
  the lock when the process dies, even by SIGKILL): a lock that can be taken marks a dead writer;
* ``requests-{writer}-{n:04d}.wal``: the write-ahead log, a JSON header line then one JSON array
  per record (``[seq, <SCHEMA columns>]``), appended by `record` with one `os.write` on an
  ``O_APPEND`` descriptor: no user-space buffer, so what `record` returned from is in the OS page
  cache and survives a kill of the process. JSON lines, not an Arrow IPC stream: one line costs a
  C-encoder call (Arrow needs a record batch of ~1 KiB metadata per row to write it at once), and
  a line torn by a kill is easy to find and drop;
* ``requests-{writer}-{n:04d}.parquet``: the same rows, written as row groups every ``flush_s``
  from an in-memory buffer in a thread (the event loop never waits on Parquet) and rotated after
  ``rotate_bytes`` or ``rotate_s``. Its footer metadata ``boute.first_seq``, ``boute.last_seq``
  give the ``seq`` range it holds (rows reach Parquet in ``seq`` order).

A WAL segment is deleted only once every record in it is in a closed (and fsync-ed) Parquet
file, so each record is, at every instant, in a closed Parquet file or a WAL segment, or both.
Loss bounds: a killed process loses nothing `record` returned from (at most the one record being
written, torn); a machine crash loses what `record` wrote in the last ``fsync_s`` seconds (WAL
fsync-ed by the background task; ``fsync_s=None``: no fsync, only process kills are covered).

`recover_log` (run by each new `RequestLog` and by `read_log`) turns the WAL of every dead writer
into a Parquet file (rows not already in one of its closed Parquet files), moves its torn Parquet
file (no footer) and any foreign file into ``quarantine/``, and drops (and counts) torn WAL lines.
`read_log` also reads the WAL of live writers, so it sees every record written so far, and names
on stderr what it could not read. `record` is not thread-safe: call it from one thread (the event
loop). Schema (`SCHEMA`): arrival_s (unix s), prompt_tokens, output_tokens, score (NaN when
pinned), model, group, ttft_s, latency_s, status (HTTP), stream, key_id (the API key's id, never
the key; null when none), outcome (one of `OUTCOMES`), workload (the routed request's workload;
null when pinned or refused before routing), length_class (short / long when the plan splits
requests by length; null otherwise).

**Refusals are counted, and sampled.** A refusal before routing (``group`` "", outcome in
`SAMPLED_OUTCOMES`: unauthorized, rate_limited, too_large, client_error) adds 1 to its bucket
(status, outcome, key_id) of the current ``refused_interval_s`` interval of the writer's clock;
only the first ``refused_sample`` of a bucket per interval become rows. When the interval ends
(the next refusal after it, a flush, or close) each bucket becomes one *count row*
(`REFUSED_SCHEMA`: interval_start_s, interval_s, status, outcome, key_id, count, sampled),
written through the same WAL (line ``[seq, "refused", ...]``) into
``refused-{writer}-{n:04d}.parquet`` beside ``requests-{writer}-{n:04d}.parquet`` (closed with
it). So the counts are exact and as durable as the rows, except the interval still open: a
killed writer loses the counts of its last ``refused_interval_s`` beyond the sampled rows
already in its WAL. ``shed`` (admission control's 429: the replan job reads each as demand)
and everything routed are never sampled. Bound: per bucket, at most ``refused_sample + 1``
WAL lines per interval, whatever the refusal rate. `read_log` returns request rows only
(sampled refusals included, as before); `read_log_report`'s ``refused`` has the counts.

**Retention.** At start and after each Parquet close the writer drops closed files older than
``retain_s`` (default 7 days) and then the oldest until the closed files total at most
``max_bytes`` (default 1 GiB); see `app._log_retention` for the rules and what is never
dropped. Each drop is counted in ``retention.json`` (`read_dropped`, `ReadReport.dropped`) and
in the writer's ``retention_dropped``.
"""

from __future__ import annotations

from ._log_files import (
    OUTCOMES,
    REFUSED_SCHEMA,
    SAMPLED_OUTCOMES,
    SCHEMA,
    RequestLogError,
)
from ._log_reader import ReadReport, read_log, read_log_report
from ._log_recovery import RecoveryReport, recover_log
from ._log_retention import DroppedFile, DroppedLog, apply_retention, read_dropped
from ._log_writer import LogLimits, RequestLog

__all__ = ["OUTCOMES", "REFUSED_SCHEMA", "SAMPLED_OUTCOMES", "SCHEMA", "DroppedFile",
           "DroppedLog", "LogLimits", "ReadReport", "RecoveryReport", "RequestLog",
           "RequestLogError", "apply_retention", "read_dropped", "read_log", "read_log_report",
           "recover_log"]
