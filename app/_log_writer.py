"""The request-log writer (`RequestLog`): WAL + Parquet, refusal sampling, retention."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ._log_files import (
    FIRST,
    LAST,
    OUTCOMES,
    REFUSED_SCHEMA,
    REFUSED_TAG,
    SAMPLED_OUTCOMES,
    SCHEMA,
    WAL_COLUMNS,
    RequestLogError,
    encode,
    flock,
    fsync_path,
    is_refused_row,
    to_refused_table,
    to_table,
)
from ._log_recovery import RecoveryReport, recover_log
from ._log_retention import DroppedFile, apply_retention

_ids = threading.Lock()
_last_ms = 0
_DAY_S = 86_400.0
_RefusedKey = tuple[int, str, str | None]        # (status, outcome, key_id)


@dataclass(frozen=True)
class LogLimits:
    """How much a request log keeps.

    Attributes:
        refused_sample: refusals before routing (`SAMPLED_OUTCOMES`, group ``""``) written as
            full rows per (status, outcome, key_id) per interval; the rest are only counted
            (None: every refusal is a full row, as before sampling existed).
        refused_interval_s: the interval of `refused_sample` and of the count rows.
        retain_s: closed Parquet files older than this are dropped (None: kept forever).
            Default 7 days.
        max_bytes: bound on the closed Parquet files' total size; the oldest go first
            (None: no bound). Default 1 GiB.

    """

    refused_sample: int | None = 100
    refused_interval_s: float = 1.0
    retain_s: float | None = 7 * _DAY_S
    max_bytes: int | None = 1 << 30

    def __post_init__(self) -> None:
        bounds: tuple[tuple[str, float | None, str], ...] = (
            ("refused_sample", self.refused_sample, "an integer >= 0 (0: count only) or None "
             "(every refusal a row)"),
            ("refused_interval_s", self.refused_interval_s, "a number > 0"),
            ("retain_s", self.retain_s, "a number > 0 or None (no age bound)"),
            ("max_bytes", self.max_bytes, "an integer > 0 or None (no size bound)"))
        for name, value, rule in bounds:
            if value is None and name != "refused_interval_s":
                continue
            ok = value is not None and math.isfinite(value) and (
                value >= 0 if name == "refused_sample" else value > 0)
            if not ok:
                raise RequestLogError(f"LogLimits: {name}={value!r} must be {rule}")


class RequestLog:
    """A request-log writer with a write-ahead log (see `app.request_log`).

    Args:
        folder: the log folder (created); several writers may share it.
        flush_s: period of the Parquet flush of `run`.
        max_buffer: rows held in memory before `record` writes them synchronously.
        rotate_bytes: Parquet file size that starts a new file.
        rotate_s: Parquet file age that starts a new file (bounds how long WAL segments stay).
        wal: write the WAL (False: Parquet only, a kill loses the unflushed rows).
        fsync_s: WAL fsync period of `run` (None: never; a machine crash may lose the page cache).
        recover: run `recover_log` on the folder (dead writers' files) at start.
        limits: refusal sampling and retention (`LogLimits`).
        clock: wall clock (unix s) of the sampling intervals and of retention (tests inject it).

    Raises:
        RequestLogError: a setting is out of range.

    """

    def __init__(self, folder: str | Path, *, flush_s: float = 1.0, max_buffer: int = 20_000,
                 rotate_bytes: int = 64 << 20, rotate_s: float = 300.0, wal: bool = True,
                 fsync_s: float | None = 0.1, recover: bool = True,
                 limits: LogLimits | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        for name, value in (("flush_s", flush_s), ("max_buffer", max_buffer),
                            ("rotate_bytes", rotate_bytes), ("rotate_s", rotate_s),
                            ("fsync_s", 1.0 if fsync_s is None else fsync_s)):
            if not value > 0:
                raise RequestLogError(f"RequestLog: {name}={value!r} must be > 0")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_s, self.max_buffer, self.fsync_s = flush_s, max_buffer, fsync_s
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.limits = limits if limits is not None else LogLimits()
        self.clock = clock
        self.writer_id = _new_writer_id()
        self.recovery = recover_log(self.folder) if recover else RecoveryReport()
        self._lock_path = self.folder / f"requests-{self.writer_id}.lock"
        lock_fd = flock(self._lock_path, wait=True)     # held until close or death
        assert lock_fd is not None
        self._lock_fd = lock_fd
        self._rows: list[tuple[Any, ...]] = []
        self._pending: collections.deque[list[tuple[Any, ...]]] = collections.deque()
        self._lock = threading.Lock()       # Parquet writes, in `_pending` (= seq) order
        self._wal_lock = threading.Lock()   # the WAL descriptor vs the fsync thread
        self._writer: pq.ParquetWriter | None = None
        self._counts_writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._opened, self._seq, self._file_last = 0.0, 0, -1
        self._next, self._durable, self._synced = 0, 0, 0   # seq: next, all below in Parquet
        self._closes = self._seg_closes = 0
        self._wal_fd, self._wal_n, self._seg_first = -1, 0, 0
        self._wal_path = self.folder / "-"
        self._segments: list[tuple[Path, int]] = []         # closed segments, last seq
        self._closed = False
        self.written = 0
        self.dropped = 0            # rows of the wrong types (annotations not followed)
        self.files: list[Path] = []
        # Refusals (exact, since start): (status, outcome, key_id) -> count; of which sampled.
        self.refused: collections.Counter[_RefusedKey] = collections.Counter()
        self.refused_sampled = 0
        self.counts_written = 0     # count rows (REFUSED_SCHEMA) in Parquet
        self._interval = math.nan   # start of the current sampling interval (unix s)
        self._bucket: dict[_RefusedKey, list[int]] = {}     # key -> [count, sampled]
        self.retention_dropped: list[DroppedFile] = []
        if wal:
            self._open_segment()
        self._retain()

    def __len__(self) -> int:
        """Rows waiting in memory."""
        return len(self._rows)

    def record(self, arrival_s: float, prompt_tokens: int, output_tokens: int, score: float,
               model: str, group: str, ttft_s: float, latency_s: float, status: int,
               stream: bool, *, key_id: str | None = None, outcome: str = "ok",
               workload: str | None = None, length_class: str | None = None) -> None:
        """Append one request's row to the WAL and the buffer (see `app.request_log`).

        A refusal before routing (``group`` "", ``outcome`` in `SAMPLED_OUTCOMES`) is counted
        in the current interval's bucket (status, outcome, key_id); only the first
        ``limits.refused_sample`` of a bucket are written as rows.

        Raises:
            RequestLogError: `outcome` is not one of `OUTCOMES`, the log is closed, or the WAL
                cannot be written (disk full).

        """
        if outcome not in OUTCOMES or self._closed:
            raise RequestLogError(f"RequestLog.record: the log at {self.folder} is closed"
                                  if self._closed else f"RequestLog.record: {outcome=} must be "
                                  f"one of {sorted(OUTCOMES)}")
        sample = self.limits.refused_sample
        if sample is not None and not group and outcome in SAMPLED_OUTCOMES:
            now = self.clock()
            if not now < self._interval + self.limits.refused_interval_s:
                self._emit_counts()
                step = self.limits.refused_interval_s
                self._interval = math.floor(now / step) * step
            key = (int(status), outcome, key_id)
            self.refused[key] += 1
            bucket = self._bucket.setdefault(key, [0, 0])
            bucket[0] += 1
            if bucket[1] >= sample:
                return                                  # counted, not written
            bucket[1] += 1
            self.refused_sampled += 1
        seq = self._next
        row = (seq, arrival_s, prompt_tokens, output_tokens, score, model, group, ttft_s,
               latency_s, status, stream, key_id, outcome, workload, length_class)
        if self._wal_fd >= 0:
            try:
                line = (encode(row) + "\n").encode()
            except TypeError:                       # numpy scalars: plain Python values
                row = (seq, float(arrival_s), int(prompt_tokens), int(output_tokens),
                       float(score), str(model), str(group), float(ttft_s), float(latency_s),
                       int(status), bool(stream), key_id, outcome, workload, length_class)
                line = (encode(row) + "\n").encode()
            self._append_wal(line)
        self._next = seq + 1
        self._rows.append(row)
        if len(self._rows) >= self.max_buffer:
            self._take()
            self._drain()

    def _append_wal(self, line: bytes) -> None:
        try:
            while line:
                line = line[os.write(self._wal_fd, line):]
        except OSError as exc:
            raise RequestLogError(f"request log: cannot append to {self._wal_path}: {exc}; "
                                  "free disk space in the log folder") from exc

    def _emit_counts(self) -> None:
        """Append the current interval's count rows (one per bucket) to the WAL and buffer."""
        for (status, outcome, key_id), (count, sampled) in self._bucket.items():
            row = (self._next, REFUSED_TAG, self._interval, self.limits.refused_interval_s,
                   status, outcome, key_id, count, sampled)
            if self._wal_fd >= 0:
                self._append_wal((encode(row) + "\n").encode())
            self._next += 1
            self._rows.append(row)
        self._bucket = {}

    def _take(self) -> None:
        if self._rows:
            self._pending.append(self._rows)
            self._rows = []

    def _drain(self, check_age: bool = False) -> None:
        with self._lock:
            while self._pending:
                self._write(self._pending.popleft())
            if check_age and self._writer is not None and time.time() - self._opened \
                    >= self.rotate_s:
                self._close_file()

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        now = time.time()
        if self._writer is not None and self._path is not None and (
                self._path.stat().st_size >= self.rotate_bytes
                or now - self._opened >= self.rotate_s):
            self._close_file()
        if self._writer is None:
            self._path = self.folder / f"requests-{self.writer_id}-{self._seq:04d}.parquet"
            self._seq += 1
            self._writer = pq.ParquetWriter(self._path, SCHEMA.with_metadata(
                {FIRST: str(rows[0][0]).encode()}))
            self._opened = now
        requests = [r for r in rows if not is_refused_row(r)]
        counts = [r for r in rows if is_refused_row(r)] if len(requests) < len(rows) else []
        table, bad = to_table(requests)         # rows of the wrong types: dropped, counted
        self.dropped += bad
        self.written += len(requests) - bad
        if table is not None:
            self._writer.write_table(table)
        if counts:
            counted, bad = to_refused_table(counts)
            self.dropped += bad
            if counted is not None:
                if self._counts_writer is None:
                    assert self._path is not None
                    self._counts_writer = pq.ParquetWriter(
                        _counts_path(self._path), REFUSED_SCHEMA.with_metadata(
                            {FIRST: str(counts[0][0]).encode()}))
                self._counts_writer.write_table(counted)
                self.counts_written += counted.num_rows
        self._file_last = rows[-1][0]

    def _close_file(self) -> None:
        if self._writer is not None and self._path is not None:
            last = {LAST: str(self._file_last).encode()}
            paths = [self._path]
            if self._counts_writer is not None:     # first: a kill between the two closes
                with contextlib.suppress(AttributeError):   # re-counts nothing (recovery)
                    self._counts_writer.add_key_value_metadata(last)
                self._counts_writer.close()
                paths.insert(0, _counts_path(self._path))
                self._counts_writer = None
            with contextlib.suppress(AttributeError):   # pyarrow < 14: first_seq + num_rows
                self._writer.add_key_value_metadata(last)
            self._writer.close()
            if self.fsync_s is not None:        # durable before its WAL segments go
                for p in paths:
                    fsync_path(p)
                fsync_path(self.folder)
            self.files.append(self._path)
            self._writer, self._path = None, None
            self._durable = self._file_last + 1
            self._closes += 1
            self._retain()

    def _retain(self) -> None:
        """Apply retention (`app._log_retention`) to the folder; remember what it dropped."""
        self.retention_dropped += apply_retention(
            self.folder, retain_s=self.limits.retain_s, max_bytes=self.limits.max_bytes,
            now_s=self.clock())

    def _open_segment(self) -> None:
        self._wal_path = self.folder / f"requests-{self.writer_id}-{self._wal_n:04d}.wal"
        self._wal_n += 1
        fd = os.open(self._wal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        os.write(fd, (json.dumps({"boute_wal": 1, "writer": self.writer_id,
                                  "columns": WAL_COLUMNS}) + "\n").encode())
        self._wal_fd, self._seg_first, self._seg_closes = fd, self._next, self._closes

    def _maintain_wal(self) -> None:
        """Start a new segment after a Parquet close; delete segments now all in Parquet."""
        if self._wal_fd >= 0 and self._seg_closes != self._closes \
                and self._next > self._seg_first:
            with self._wal_lock:
                os.close(self._wal_fd)
                self._segments.append((self._wal_path, self._next - 1))
                self._open_segment()
        while self._segments and self._segments[0][1] < self._durable:
            self._segments.pop(0)[0].unlink(missing_ok=True)

    def _sync(self) -> None:
        with self._wal_lock:
            if self._wal_fd >= 0:
                os.fsync(self._wal_fd)
                fsync_path(self.folder)             # the segment's directory entry

    async def flush(self) -> None:
        """Write the waiting rows to Parquet (in a thread; the event loop keeps serving).

        The refusal counts of an interval that has ended are emitted first.
        """
        if self._bucket and self.clock() >= self._interval + self.limits.refused_interval_s:
            self._emit_counts()
        self._take()
        await asyncio.to_thread(self._drain, True)
        self._maintain_wal()

    async def run(self) -> None:
        """Flush every ``flush_s`` and fsync the WAL every ``fsync_s`` (a background task)."""
        tick = self.flush_s if self.fsync_s is None else min(self.flush_s, self.fsync_s)
        due = time.monotonic() + self.flush_s
        while True:
            await asyncio.sleep(tick)
            if self.fsync_s is not None and self._synced != self._next:
                self._synced = self._next
                await asyncio.to_thread(self._sync)
            if time.monotonic() >= due:
                due = time.monotonic() + self.flush_s
                await self.flush()

    def close(self) -> None:
        """Write everything waiting, close the Parquet file, delete the WAL (idempotent)."""
        if self._closed:
            return
        self._emit_counts()
        self._take()
        self._drain()
        with self._lock:
            self._close_file()
        with self._wal_lock:
            if self._wal_fd >= 0:
                os.close(self._wal_fd)
                self._segments.append((self._wal_path, self._next - 1))
                self._wal_fd = -1
        self._durable = self._next              # every row is in a closed Parquet file
        self._maintain_wal()
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._closed = True


def _counts_path(path: Path) -> Path:
    """``refused-{writer}-{n}.parquet`` beside ``requests-{writer}-{n}.parquet``."""
    return path.with_name("refused-" + path.name.removeprefix("requests-"))


def _new_writer_id() -> str:
    global _last_ms
    with _ids:
        _last_ms = max(_last_ms + 1, int(time.time() * 1000))
        return f"{_last_ms}-{os.getpid()}"
